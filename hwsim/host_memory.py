"""Fail fast, before allocating: the largest tensors a run will create, checked against this machine's
memory, so that an absurd size (10^9 queries, 10^9 collocation points, a 10^12-wide layer) is one
ConfigError naming its key instead of an allocator traceback or the kernel's OOM killer."""
from __future__ import annotations

import os

from hwsim.errors import ConfigError


def physical_bytes() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require(key: str, nbytes: int, what: str) -> None:
    """Refuse ``key``'s value when the tensors it implies (``what``, ``nbytes`` in all) exceed memory."""
    total = physical_bytes()
    if nbytes > total:
        raise ConfigError(f"{key}: {what} need {_size(nbytes)}, more than this machine's {_size(total)} "
                          f"of memory; use a smaller value")


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if unit == "PiB":
            return f"{nbytes:,.1f} PiB" if nbytes < 1e6 else f"{nbytes:.1e} PiB"
        if nbytes < 1024:
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
