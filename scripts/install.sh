#!/usr/bin/env bash
# Create the course's virtual environment and install everything the notebooks and tests need.
#   scripts/install.sh [VENV_DIR]          (default .venv; `make setup` calls this)
# torch: with an NVIDIA GPU (nvidia-smi works) a CUDA build from PyPI; without one the pinned build in
# constraints-cpu.txt. Override with EFFTRAIN_TORCH=cuda|cpu, or give your own pip arguments for torch
# in EFFTRAIN_TORCH_PIP_ARGS (e.g. an --index-url of CPU-only wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip

route="${EFFTRAIN_TORCH:-}"
if [ -z "$route" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then route=cuda; else route=cpu; fi
fi
case "$route" in
  cuda) echo "torch: CUDA build (GPU found)"; torch_spec=("torch>=2.3") ;;
  cpu)  echo "torch: CPU route ($(grep -v '^#' constraints-cpu.txt))"; torch_spec=(-c constraints-cpu.txt torch) ;;
  *) echo "EFFTRAIN_TORCH must be 'cuda' or 'cpu', got '$route'" >&2; exit 2 ;;
esac
# torch first, so the package's own range (torch>=2.3) is already satisfied and nothing larger is pulled.
"${pip[@]}" install --quiet ${EFFTRAIN_TORCH_PIP_ARGS:-} "${torch_spec[@]}"
"${pip[@]}" install --quiet -c constraints.txt -e ".[reference,lab,test]"
"$venv/bin/python" -c "import torch, peft, efftrain_lib; print(f'installed: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), peft {peft.__version__}')"
touch "$venv/.installed"
