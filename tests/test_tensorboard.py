"""The TensorBoard event files nlhf_jax.tensorboard writes, read back with the protocol buffers
of another implementation (tensorboardX's copies of TensorFlow's event.proto and summary.proto)
and a CRC-32C checked against the standard's test vector."""

import os
import struct

import numpy as np
import pytest

from nlhf_jax.tensorboard import EventWriter, crc32c, masked_crc32c

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _records(path):
    """Each record's payload, after checking both masked checksums of the framing."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
        payload = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc32c(
            payload
        )
        out.append(payload)
        i += 16 + length
    return out


def test_crc32c_is_castagnolis():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C (iSCSI)
    assert crc32c(b"") == 0


def test_scalars_and_text_read_back(tmp_path):
    writer = EventWriter(str(tmp_path / "train"))
    writer.add_scalar("loss", 0.25, 3)
    writer.add_scalar("objective/kl", -1.5e-3, 2**40)
    writer.add_text("samples", "**prompt:** hi  \n**response:** ünïcode", 7)
    writer.close()
    (name,) = os.listdir(tmp_path / "train")
    assert name.startswith("events.out.tfevents.")
    events = [event_pb2.Event.FromString(r) for r in _records(tmp_path / "train" / name)]
    assert events[0].file_version == "brain.Event:2"
    assert all(e.wall_time > 1e9 for e in events)
    loss, kl, text = events[1:]
    assert (loss.step, loss.summary.value[0].tag) == (3, "loss")
    assert loss.summary.value[0].simple_value == 0.25
    assert (kl.step, kl.summary.value[0].tag) == (2**40, "objective/kl")
    assert kl.summary.value[0].simple_value == np.float32(-1.5e-3)
    value = text.summary.value[0]
    assert (text.step, value.tag, value.metadata.plugin_data.plugin_name) == (7, "samples", "text")
    assert value.tensor.dtype == 7 and not value.tensor.tensor_shape.dim  # a scalar DT_STRING
    assert value.tensor.string_val[0].decode() == "**prompt:** hi  \n**response:** ünïcode"
