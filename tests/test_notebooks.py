"""Every notebook executes headless (nbclient) on a quick demo; the demo itself runs on a tiny random pair (the
reference pair's demo is `lch demo`; here the notebook's code and the demo's plumbing are what is checked)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`run_demo(quick=True)` on a tiny softmax / SSMax pair: the folder of runs the notebook reads."""
    from harness.cli.demo import run_demo
    from tests.tiny import save_checkpoint

    root = tmp_path_factory.mktemp("demo")
    pair = {"softmax": str(save_checkpoint(root / "softmax", training_length=128)),
            "ssmax": str(save_checkpoint(root / "ssmax", ssmax=True, training_length=128))}
    report = run_demo(root, quick=True, progress=False, **pair)
    assert report == root / "demo-quick" / "compare" / "report.html" and report.is_file()
    return report.parent.parent  # what the notebook's own fallback computes from run_demo's answer


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, quick_demo, monkeypatch):
    monkeypatch.setenv("LCH_DEMO_DIR", str(quick_demo))  # never reuse results lying around
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
    assert images >= 4, f"{path.name} drew {images} figures"
