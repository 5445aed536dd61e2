"""Test set-up: 8 fake CPU devices, and CPU collectives that fail fast instead of hanging.

XLA reads XLA_FLAGS when the backend starts, so this runs before any test imports jax's backend.
ENVIRONMENT.md: sharded steps with collectives dispatched back to back on fake CPU devices can
deadlock in an all-reduce rendezvous; the timeout turns a hang into a failure in seconds.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
    _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=10"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
