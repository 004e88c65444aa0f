"""One writer per run directory: an exclusive lock on RUN/.hwsim.lock, held by the process that writes the
run (train, pinn, --resume, compare) and released by the kernel when that process ends, however it ends
(a SIGKILL leaves no stale lock). The file holds the holder's PID, which a refused process names."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hwsim.config import ConfigError

LOCK_NAME = ".hwsim.lock"


class RunDirBusy(ConfigError):
    """Another live process holds the run directory; nothing of it may be touched."""


class RunLock:
    """``acquire(run_dir)`` once the directory exists; ``release()`` when done (also safe unacquired)."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, run_dir: Path) -> None:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(f"--out {run_dir}: in use by another hwsim process (PID {holder}); wait for it to "
                             f"end or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd                        # held from here on: release() frees it whatever follows
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
