"""Build the course notebooks from their sources in notebooks/src/ (percent format), and execute them.

    python scripts/build_notebooks.py 01_lora            # build and execute notebooks/01_lora.ipynb
    python scripts/build_notebooks.py --all --no-execute  # rebuild every notebook without running it

A source is plain Python: `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines
start with "# ". Sources diff and review like code; the executed .ipynb keeps the outputs that nbval
checks (cells marked `# NBVAL_CHECK_OUTPUT`). tests/test_notebooks_in_step.py fails when a notebook
and its source drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks" / "src"
MARKER = re.compile(r"^# %%(?P<markdown>\s*\[markdown\])?\s*$")


def parse_source(text: str) -> list[tuple[str, str]]:
    """Percent-format text -> [(cell_type, source)]."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = MARKER.match(line)
        if match:
            cells.append(("markdown" if match["markdown"] else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' marker: {line!r}")
    result = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", ln) for ln in lines]
        result.append((kind, "\n".join(lines).strip("\n")))
    return result


def build(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for kind, source in parse_source((SOURCES / f"{name}.py").read_text()):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        notebook.cells.append(make(source))
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"{name}-{i:03d}"  # stable ids: rebuilding does not churn the diff
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()


TQDM_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # "| 60/60 [00:02<00:00, ..." in a progress bar's text


def drop_transient_outputs(notebook: nbformat.NotebookNode) -> None:
    """Remove what only made sense while the notebook ran: finished progress bars and widget state.

    A closed tqdm bar is saved as a widget view whose text reads "0%| | 0/60"; a learner opening the
    notebook would see frozen bars. The widget state (hundreds of kB) is not loaded by JupyterLab.
    """
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [
            output for output in cell.outputs
            if not ("application/vnd.jupyter.widget-view+json" in output.get("data", {})
                    and TQDM_BAR.search(output["data"].get("text/plain", "")))
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook names without extension, e.g. 01_lora")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--no-execute", action="store_true")
    args = parser.parse_args()
    names = sorted(p.stem for p in SOURCES.glob("*.py")) if args.all else args.names
    if not names:
        parser.error("name a notebook or pass --all")
    for name in names:
        notebook = build(name)
        if not args.no_execute:
            execute(notebook)
            drop_transient_outputs(notebook)
        nbformat.write(notebook, ROOT / "notebooks" / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb ({len(notebook.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
