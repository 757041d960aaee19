"""Every benchmark under benchmarks/ run once, as small as its options allow (`make benchmarks-smoke`): the
guard that none of them rots (an API they call changed, a crash), not a measurement. A benchmark that runs
to the end passes here whether or not it met its targets (small runs on a busy machine mean little); one
that raises fails.

    python scripts/smoke_benchmarks.py            # every benchmark; exit 1 if any crashed
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = {  # the options that make each one quick; the defaults otherwise
    "accumulation": ["--repeats", "1"],
    "capstone": ["--steps", "2", "--repeats", "1"],
    "checkpointing": ["--repeats", "1", "--inner", "1"],
    "distributed": ["--rounds", "1"],
    "lora": ["--repeats", "1", "--inner", "1"],
    "loss_scaling": ["--repeats", "1", "--inner", "1"],
    "meter": ["--repeats", "1"],
    "qlora": ["--repeats", "1"],
}
# Runs the benchmark as __main__; its own exit status (0: targets met, 1: a target missed) counts as
# finished, anything it raises as a crash (exit 3).
RUNNER = """
import runpy, sys, traceback
path = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(path, run_name="__main__")
except SystemExit as end:
    sys.exit(0 if end.code in (None, 0, 1) else 3)
except BaseException:
    traceback.print_exc()
    sys.exit(3)
"""


def main() -> int:
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    unknown = [p.stem for p in scripts if p.stem not in SMALLEST]
    if unknown:  # a new benchmark must say how to run it small
        print(f"smoke: no small options for {unknown}: add them to SMALLEST in {Path(__file__).name}")
        return 1
    crashed = []
    for path in scripts:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(path), *SMALLEST[path.stem]], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        verdict = "ran" if proc.returncode == 0 else "CRASHED"
        print(f"smoke: {path.name:<18} {verdict} in {seconds:5.1f} s")
        if proc.returncode != 0:
            crashed.append(path.name)
            print((proc.stdout + proc.stderr)[-3000:])
    print(f"smoke: {len(scripts) - len(crashed)} of {len(scripts)} benchmarks ran to the end")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
