"""Pretrain the course's tiny transformer on the sonnets and save it into the package.

    python scripts/pretrain_tiny.py            # writes efftrain_lib/data/tiny_pretrained.*
    python scripts/pretrain_tiny.py --check    # retrains and checks it equals the shipped file

The notebooks fine-tune from this checkpoint so they need not pretrain (about ten seconds on
2 CPU cores, but every second counts in a notebook that CI executes). On CPU with the same torch version the result is bit-for-bit the same.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from safetensors.torch import load_file, save_file

from efftrain_lib import data
from efftrain_lib.devices import seed_everything
from efftrain_lib.models import PRETRAINED_CHECKPOINT as CHECKPOINT
from efftrain_lib.models import TinyConfig, TinyTransformer
from efftrain_lib.training import evaluate, train

# 200 steps with dropout: longer runs memorise the 6.8 kB of sonnets (validation loss climbs after ~200).
RECIPE = dict(seed=0, steps=200, batch_size=32, seq_len=64, lr=2e-3, weight_decay=0.1, dropout=0.2)


def pretrain(progress: bool = True) -> tuple[TinyTransformer, dict]:
    torch.set_num_threads(2)
    seed_everything(RECIPE["seed"])
    config = TinyConfig(vocab_size=data.VOCAB_SIZE, dropout=RECIPE["dropout"])
    model = TinyTransformer(config)
    train_tokens, val_tokens = data.split_tokens(data.encode(data.load_text("sonnets")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    get_batch = data.batch_sampler(train_tokens, RECIPE["batch_size"], RECIPE["seq_len"], seed=RECIPE["seed"])
    log = train(model, get_batch, steps=RECIPE["steps"], optimizer=optimizer, progress=progress, desc="pretrain")
    val_loss = evaluate(model, data.fixed_batches(val_tokens, 4, 8, RECIPE["seq_len"]))
    meta = {"config": config.to_dict(), "recipe": RECIPE, "final_train_loss": log.losses[-1],
            "val_loss": val_loss, "torch": torch.__version__}
    return model, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="retrain and compare with the shipped checkpoint")
    args = parser.parse_args()
    model, meta = pretrain()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if args.check:
        shipped = load_file(CHECKPOINT)
        diff = max((state[k] - shipped[k]).abs().max().item() for k in shipped)
        print(f"max |diff| vs shipped checkpoint: {diff:.3g}")
        return 0 if diff == 0.0 else 1
    save_file(state, CHECKPOINT)
    CHECKPOINT.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {CHECKPOINT} (train loss {meta['final_train_loss']:.3f}, val loss {meta['val_loss']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
