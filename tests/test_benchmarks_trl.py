"""benchmarks/trl_nash_md.py without TRL: one line saying how to install it, then exit 0 (or 2)."""

import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "trl_nash_md.py"
# Runs the script with `import trl` failing, whether or not TRL is installed.
BLOCKED = (
    "import runpy, sys; sys.modules['trl'] = None; sys.argv = [sys.argv[1], *sys.argv[2:]]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize("flags, code", [([], 0), (["--require-trl"], 2)])
def test_skips_without_trl(flags, code, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(SCRIPT), "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "TRL is not installed" in lines[0], proc.stdout
    assert "pip install -e '.[trl]'" in lines[0]
    assert not out.exists()
