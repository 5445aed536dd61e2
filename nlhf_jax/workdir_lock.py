"""One writer per workdir: an exclusive ``flock`` on ``WORKDIR/.lock``.

The kernel releases a ``flock`` when its holder's file is closed, which includes the process
dying by any signal, SIGKILL too: a killed run leaves no stale lock, and the next run starts at
once. While the lock is held, ``.lock`` names the holder (pid, host, start time), so a second
process on the same workdir is refused with a message naming it. Multi-process runs take it on
the primary process only (the others write nothing to the workdir). ``flock`` is advisory and
local to one host's kernel: on a network file system shared by several hosts it may not exclude
a writer on another host (NFS emulates it with byte-range locks; some file systems ignore it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from nlhf_jax.errors import UserError

LOCK_FILE = ".lock"


class WorkdirInUse(UserError):
    """Another live process holds the workdir."""


class WorkdirLock:
    """Holds ``WORKDIR/.lock`` from construction until ``release()`` (or the process ends).

    Raises:
      WorkdirInUse: another process holds it; the message names its pid and host.
    """

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            raise WorkdirInUse(
                f"{os.path.dirname(self.path)} is in use by another run: pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')} (since "
                f"{holder.get('started', '?')}); wait for it, stop it, or use another --workdir"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
