"""The suite runs with 8 fake CPU devices (tests/conftest.py)."""

import os

import jax


def test_eight_fake_cpu_devices():
    assert jax.device_count() == 8
    assert all(d.platform == "cpu" for d in jax.devices())
    assert "xla_cpu_collective_call_terminate_timeout_seconds" in os.environ["XLA_FLAGS"]
