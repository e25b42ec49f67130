"""CPU allocator tuning for inference on large activations.

glibc serves each activation of tens of MB with a fresh ``mmap`` and returns it to the kernel on free, so every
transformer layer pays page faults and kernel zeroing for memory it just released. Raising the mmap threshold to
its maximum (32 MiB, which the chunked window forward stays under) and the trim threshold keeps that memory in the
heap for reuse. Measured here on the WinCLIP forward: ~10-15 % less CPU time, same results bit for bit. It is a
process-wide setting, applied once when a CPU backbone is built; ``VLMAD_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Apply the glibc settings once; returns whether they are in effect (False off glibc or when disabled)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("VLMAD_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
