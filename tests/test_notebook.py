import pytest
"""The results notebook executes headless on real (smoke-sized) run JSONs, so it never rots."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB = Path(__file__).resolve().parent.parent / "notebooks" / "results.ipynb"


@pytest.mark.slow
def test_results_notebook_executes(train_run, results_dir, monkeypatch):
    for loss in ("ce", "focal"):
        for seed in (0, 1):
            train_run(f"loss={loss}", f"seed={seed}")
    monkeypatch.setenv("LOSSLAB_RESULTS", str(results_dir))
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "4 runs" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
