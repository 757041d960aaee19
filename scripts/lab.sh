#!/usr/bin/env bash
# Open JupyterLab on the course's notebooks (`make lab` calls this after `make setup`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
extra=()
# JupyterLab refuses to run as root without this flag; a learner's laptop does not need it.
if [ "$(id -u)" = "0" ]; then extra+=(--allow-root); fi
# Rooted at the checkout (so exercises/ sits beside the notebooks in the file browser), opened on notebooks/.
exec "$venv/bin/jupyter" lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks "${extra[@]}" ${EFFTRAIN_LAB_ARGS:-}
