"""Where a result was measured: the machine, the library versions, the commit, the date, the seed.

Every ``results.json`` (the evaluation, the tabular lab, the sampling benchmark) carries
``environment(seed=...)`` under ``"environment"``, and the README's tables, rendered from those
files (``python -m nlhf_jax.readme``), name it beside each table.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess

# Distribution names (as pip spells them) whose versions are recorded; missing ones are skipped.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "tensorflow-datasets",
    "grain",
    "transformers",
)


def environment(seed: int | None = None) -> dict:
    """The machine, versions, git commit (when in a checkout), UTC date and ``seed`` (if given).

    Returns:
      ``{"date": ISO 8601 UTC, "machine": {...}, "versions": {...}}``, plus ``"git"``
      (``commit``, ``dirty``) when the package lives in a git checkout and ``git`` is installed,
      and ``"seed"`` when one is given.
    """
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
    }
    git = _git()
    if git is not None:
        env["git"] = git
    if seed is not None:
        env["seed"] = seed
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    import jax

    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
        # Other processes on the machine slow a timing down: 1, 5 and 15-minute load averages.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _git() -> dict | None:
    """The checkout's commit and whether tracked files differ from it; None outside a checkout
    of this repository (an installed package, no git)."""
    if shutil.which("git") is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.strip()

    try:
        # Only the checkout the package itself sits at the top of, not an enclosing repository.
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}
