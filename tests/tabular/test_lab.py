"""The lab runner and ``python -m nlhf_jax.tabular``."""

import json

import numpy as np
import pytest

from nlhf_jax.tabular import __main__ as cli
from nlhf_jax.tabular.lab import LabConfig, checkpoints, make_games

pytestmark = pytest.mark.usefixtures("x64")


def test_cli_prints_table_and_writes_outputs(tmp_path, capsys):
    """One game (random contexts) through the whole lab: every game's own properties are in
    test_games.py and test_sampled.py, and the lab runs the same code on each."""
    args = ["--game", "random", "--steps", "40", "--contexts", "2", "--n", "4"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in [
        "nash_md",
        "nash_mp",
        "egpo",
        "inpo",
        "online_ipo",
        "ipo_md",
        "sppo",
        "nash_md_pg",
        "bt_rlhf",
    ]:
        assert f"\n{name} " in out
    assert "8/(tau^2 (T+1))" in out and "(1+2 beta)^-T" in out
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "results.json").read_text())
    kl = np.asarray(res["algorithms"]["nash_mp"]["kl"])
    assert kl.shape == (41,) and kl[-1] < kl[0]
    assert res["residual"] <= 1e-12


def test_checkpoints():
    assert checkpoints(1000) == [0, 1, 10, 100, 1000]
    assert checkpoints(250) == [0, 1, 10, 100, 250]


def test_unknown_game_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown game 'chess'"):
        make_games(LabConfig(game="chess"))
    with pytest.raises(SystemExit):
        cli.main(["--game", "chess"])
