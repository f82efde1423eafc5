"""Every notebook executes headless (nbclient); the comparison notebook runs a small demo first."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from harness.reference.shipped import REFERENCE_DIR

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.skipif(not (REFERENCE_DIR / "ssmax" / "config.json").is_file(), reason="reference pair not built")
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LCH_DEMO_DIR", str(tmp_path / "demo"))  # never reuse results lying around
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
    assert images >= 4, f"{path.name} drew {images} figures"
