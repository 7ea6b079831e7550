"""The walkthrough notebook runs top to bottom (nbclient, a real kernel) in a tiny project and is
committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from tiny_project import write_tiny_params

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_walkthrough_executes_in_a_tiny_project(
    tmp_path: Path,
    shapes_small: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
) -> None:
    """A fresh project: the shapes corpus but no curated pairs, no trained model, no MLflow
    store — the notebook's fallbacks (ground-truth pairs, a quick model) must carry it."""
    from nbclient import NotebookClient

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes").symlink_to(shapes_small, target_is_directory=True)
    write_tiny_params(tmp_path / "params.yaml", tmp_path / "data", models_cache)
    workdir = tmp_path / "notebooks"  # where Jupyter starts when opened from the repo
    workdir.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # pairs, similarity, segmentation overlay, query contact sheet
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert f"project: {tmp_path}" in text
    assert "ground-truth region pairs of the shapes corpus" in text
    assert "trained a quick model" in text and "SAM segments" in text
    assert "index: " in text and "no MLflow store yet" in text
    assert "norms 1.0000..1.0000" in text or "norms 0.9999..1.0000" in text
