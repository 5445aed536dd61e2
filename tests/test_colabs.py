"""Every notebook in colabs/ runs top to bottom (with NLHF_COLAB_SMALL=1: small settings)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLABS = sorted((pathlib.Path(__file__).parent.parent / "colabs").glob("*.ipynb"))


@pytest.mark.parametrize("path", COLABS, ids=[p.name for p in COLABS])
def test_colab_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NLHF_COLAB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # One device is enough for the notebooks; the suite's 8 fake devices would only slow them.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors, errors[0]
    figures = [
        o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert figures, "the notebook showed no figure"
