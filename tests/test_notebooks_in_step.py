"""Each notebook's cells equal its source in notebooks/src/ (scripts/build_notebooks.py builds one from the other)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)

SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_notebook_matches_its_source(source):
    built = build_notebooks.build(source.stem)
    saved = nbformat.read(ROOT / "notebooks" / f"{source.stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in saved.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"notebooks/{source.stem}.ipynb differs from its source: run "
        f"`python scripts/build_notebooks.py {source.stem}`"
    )


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_saved_notebook_has_no_errors_and_no_stderr(source):
    saved = nbformat.read(ROOT / "notebooks" / f"{source.stem}.ipynb", as_version=4)
    for cell in saved.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"cell {cell.id} was saved with an error"
            assert output.get("name") != "stderr", f"cell {cell.id} writes to stderr: {output.get('text', '')[:200]}"


def test_percent_format_parsing():
    cells = build_notebooks.parse_source("# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n")
    assert cells == [("markdown", "# Title\ntext"), ("code", "x = 1")]
