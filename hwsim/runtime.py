"""Process-wide settings that make the simulation faster and change no number.

The simulated chips stream large intermediate tensors (a photonic core pass of a chunk of queries is tens
of MiB), made and freed many times a step. glibc serves allocations above its mmap threshold (at most
32 MiB, adapted at run time) with fresh pages and returns them on free, so every such tensor pays a
first-touch page fault per 4 KiB page, which costs more than the memory-bound arithmetic that fills it
(benchmarks/bench_backend_step.py: about 30 % of a photonic step). :func:`keep_freed_memory` keeps large
blocks on the heap and freed memory in the process for the next tensor (glibc's ``mallopt``; PyTorch's
CPU performance guide makes the same point with other allocators). The price: the process's resident
memory stays at its peak. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc malloc.h
KEEP_BYTES = 1 << 30                              # blocks below this come from the heap; free space kept up to it


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES; True when it took effect (Linux, glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):                 # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
