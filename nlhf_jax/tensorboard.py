"""TensorBoard event files, written directly: scalars and markdown text, nothing else.

A run's metrics go to ``WORKDIR/tensorboard/{train,eval}`` (``tensorboard --logdir
WORKDIR/tensorboard``). The format is TensorFlow's record file of ``Event`` protocol buffers:
each record is its length (uint64, little-endian), the masked CRC-32C of those 8 bytes, the
serialized ``Event`` and its masked CRC-32C. The few messages needed are encoded here by hand
(``Event``: wall_time 1, step 2, file_version 3, summary 5; ``Summary``: value 1;
``Summary.Value``: tag 1, simple_value 2, tensor 8, metadata 9; a text value is a scalar
``DT_STRING`` tensor with the ``text`` plugin's metadata), so that logging needs neither
TensorFlow nor a writer library that imports PyTorch when it is installed (tensorboardX does,
which added seconds to every run's start).
"""

from __future__ import annotations

import os
import socket
import struct
import time

# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), by table.
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The record format's checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: a negative value is its two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One protobuf field: its key, then (length-delimited fields) the length, then the bytes."""
    key = _varint(number << 3 | wire_type)
    return key + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _event(step: int | None = None, summary: bytes | None = None, version: str = "") -> bytes:
    out = _field(1, 1, struct.pack("<d", time.time()))  # wall_time, a double
    if step is not None:
        out += _field(2, 0, _varint(step))
    if version:
        out += _field(3, 2, version.encode())
    if summary is not None:
        out += _field(5, 2, summary)
    return out


def scalar_summary(tag: str, value: float) -> bytes:
    return _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))


def text_summary(tag: str, text: str) -> bytes:
    tensor = _field(1, 0, _varint(7)) + _field(2, 2, b"") + _field(8, 2, text.encode())
    metadata = _field(1, 2, _field(1, 2, b"text"))  # plugin_data { plugin_name: "text" }
    value = _field(1, 2, tag.encode()) + _field(8, 2, tensor) + _field(9, 2, metadata)
    return _field(1, 2, value)


class EventWriter:
    """Appends events to a new ``events.out.tfevents.*`` file in ``directory``."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(directory, name)
        self._file = open(self.path, "ab")
        self._write(_event(version="brain.Event:2"))
        self.flush()

    def _write(self, event: bytes) -> None:
        length = struct.pack("<Q", len(event))
        self._file.write(length + struct.pack("<I", masked_crc32c(length)))
        self._file.write(event + struct.pack("<I", masked_crc32c(event)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(_event(step, scalar_summary(tag, float(value))))

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Markdown, shown in TensorBoard's text tab."""
        self._write(_event(step, text_summary(tag, text)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
