"""Exclusive folder locks: one process at a time writes a model_dir or an export.

A lock is an `fcntl.flock` on `<folder>/.lock`, whose content names the
holder (pid, host, command). The kernel releases a flock when its process
ends, however it ends (kill -9 included), so a dead holder's lock is taken
over without a stale-lock check; the file's content is then rewritten by the
new holder. flock is per host: folders shared between machines over NFS need
one writer per folder by arrangement.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_FILE = ".lock"


class LockError(RuntimeError):
    """Another live process holds the folder."""


@contextlib.contextmanager
def exclusive(folder: str, *, what: str = "folder"):
    """Holds the lock of `folder` for the `with` block.

    Raises:
      LockError: naming the holder's pid, host and command, and the fix.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _holder(fd)
            raise LockError(
                f"{what} {folder} is in use by pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} ({holder.get('command', '?')}). Wait for it to "
                f"finish, or give this run another {what}."
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv)[:300],
                }
            ).encode(),
        )
        yield
    finally:
        os.close(fd)  # releases the flock


def process_alive(pid) -> bool:
    """Whether a process with this pid runs on this host (False for no pid)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    return True


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
