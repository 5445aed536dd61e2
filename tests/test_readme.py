"""README's result tables equal what ``python -m nlhf_jax.readme`` renders from ``results/``."""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest

from nlhf_jax import provenance, readme, tables
from nlhf_jax.errors import exit_on_user_error


def test_readme_tables_are_rendered_from_the_committed_results():
    assert readme.diff(readme.README, readme.RESULTS) == "", (
        "README's tables differ from results/: run `python -m nlhf_jax.readme` (make readme)"
    )
    with open(readme.README) as f:
        text = f.read()
    for name in readme.RENDERERS:
        assert f"<!-- results:{name} -->" in text


def test_a_number_edited_by_hand_fails_the_check(tmp_path, capsys):
    with open(readme.README) as f:
        text = f.read()
    start = text.index("<!-- results:demo -->")
    number = re.compile(r"\d\.\d{3}").search(text, start)
    edited = number.group(0)[:-1] + str((int(number.group(0)[-1]) + 1) % 10)
    path = tmp_path / "README.md"
    path.write_text(text[: number.start()] + edited + text[number.end() :])

    assert readme.diff(str(path), readme.RESULTS) != ""
    assert readme.main(["--check", "--readme", str(path)]) == 1
    assert f"-{text[text.rindex(chr(10), 0, number.start()) + 1 : number.start()]}{edited}" in (
        capsys.readouterr().out
    )
    assert readme.main(["--readme", str(path)]) == 0  # rewrites the block from results/
    assert path.read_text() == text
    assert readme.main(["--check", "--readme", str(path)]) == 0


def test_a_missing_results_file_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text("# x\n\n<!-- results:demo -->\nold table\n<!-- /results:demo -->\n")
    empty = tmp_path / "results"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: readme.main(["--readme", str(path), "--results", str(empty)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert os.path.join(str(empty), "demo.json") in err
    assert "old table" in path.read_text()  # nothing written


def test_demo_table_takes_any_methods_and_drops_nash_md_columns_without_it():
    def results(methods):
        m = len(methods)
        return {
            "methods": methods,
            "reference_name": methods[0],
            "win_rate": np.full((m, m), 0.5).tolist(),
            "win_rate_regularized": np.full((m, m), 0.5).tolist(),
            "duality_gap": [0.2] + [0.1] * (m - 1),
            "kl_to_reference": [0.0] + [0.3] * (m - 1),
            "config": {"tau": 0.1},
        }

    with_rlp = tables.render_demo(results(["sft", "nash_md", "rlp_a", "rlp_b"]))
    assert "| rlp_b | 0.100 | 0.300 | 0.500 | 0.500 | 0.500 |" in with_rlp
    without = tables.render_demo(results(["sft", "rlhf"]))
    assert "vs nash_md" not in without and "| rlhf | **0.100** | 0.300 | 0.500 |" in without


def test_environment_records_versions_and_machine():
    env = provenance.environment(seed=3)
    assert env["versions"]["jax"] == jax.__version__
    assert env["versions"]["numpy"] == np.__version__
    assert env["machine"]["cpu_count"] == os.cpu_count() >= 1
    assert env["machine"]["device_count"] == jax.device_count()
    assert env["seed"] == 3 and env["date"].endswith("+00:00")
    assert "seed" not in provenance.environment()
