"""Every notebook in colabs/ runs top to bottom with small settings (NLHF_COLAB_SMALL=1) and
shows a figure (tests/conftest.py `executed_notebook`). A notebook that is a pipeline's
end-to-end run runs in that pipeline's tests, which also read what it wrote; the rest run here."""

import os

import pytest

COLABS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs")
NAMES = sorted(n for n in os.listdir(COLABS) if n.endswith(".ipynb"))
ELSEWHERE = {
    "03_nash_md_end_to_end.ipynb": "tests/train/test_demo.py",
    "04_text_pipeline.ipynb": "tests/test_text_pipeline.py",
}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ELSEWHERE])
def test_colab_runs(name, executed_notebook):
    assert os.path.exists(os.path.join(executed_notebook(name), name))


def test_every_other_notebook_runs_in_its_pipelines_tests():
    root = os.path.dirname(COLABS)
    for name, module in ELSEWHERE.items():
        assert name in NAMES
        with open(os.path.join(root, module)) as f:
            assert f'executed_notebook("{name}"' in f.read(), module
