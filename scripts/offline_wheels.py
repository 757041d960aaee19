"""Wheels for a CUDA machine without a package index: what the course's notebooks need beyond its image.

    .venv/bin/python scripts/offline_wheels.py [--dest .whl] [--python-version 3.12]

Meant for the project's lent GPU machine (one H200): its image has Python 3.12 with torch (CUDA), numpy,
matplotlib, tqdm, safetensors, pytest, pytest-timeout, pytest-xdist, accelerate and other versions of peft and
transformers, but no Jupyter kernel, no nbval, no ipywidgets, and it reaches no package index. This
downloads here, with the interpreter of the course's environment, the wheels of exactly what the image
lacks, each at the version this environment runs (the versions the course is tested with), for the
machine's Python and platform; `--no-deps`, so one version of each. scripts/gpu_check.py's docstring has
the command that installs them there (pip --no-index --target) and runs the GPU check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: What nbval, an IPython kernel and the notebooks' widgets need that the image does not have (resolved with
#: pip download for nbval, ipykernel, ipywidgets and nbformat, less the packages the image lists).
NOTEBOOK_STACK = [
    "nbval", "nbformat", "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "jupyter-client", "jupyter-core", "platformdirs", "ipykernel", "ipython", "ipython-pygments-lexers", "traitlets",
    "tornado", "pyzmq", "comm", "debugpy", "matplotlib-inline", "nest-asyncio2", "jedi", "parso", "pexpect",
    "ptyprocess", "prompt-toolkit", "wcwidth", "stack-data", "asttokens", "executing", "pure-eval", "ipywidgets",
    "widgetsnbextension", "jupyterlab-widgets",
]
#: The reference libraries at the course's pins (the image has other versions; torchao is the QLoRA chapter's
#: reference, pure Python beside any torch); regex, which transformers wants newer than some images have.
PINNED = ["peft", "transformers", "regex", "torchao"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def requirements(names: list[str]) -> list[str]:
    """name==version for each, at the version installed here; an error naming what is missing."""
    pins, missing = [], []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"not installed in {sys.executable}: {missing}. Run this with the course's environment "
                         "(make setup, then .venv/bin/python scripts/offline_wheels.py).")
    return pins


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="folder for the wheels (default .whl)")
    parser.add_argument("--python-version", default="3.12", help="the machine's Python (default 3.12)")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each: two would stop the whole install there
        old.unlink()
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", *platforms, "-d", str(args.dest),
               *requirements(NOTEBOOK_STACK + PINNED)]
    subprocess.run(command, check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB, in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
