"""Keep freed heap memory for reuse on CPU: a training step's big buffers are not page-faulted in anew each step.

glibc's malloc serves every request above 32 MB with a fresh ``mmap`` and hands it back with ``munmap`` when it is
freed. A CPU training step allocates some such buffers anew every step — the word-embedding gradient of a BERT
vocabulary is 30,522 × 384 fp32 = 47 MB, zeroed by ``embedding_dense_backward`` — so each step the kernel
faults and zeroes those pages again: ``torch.zeros(30522, 384)`` costs 14.8 ms that way and 1.2 ms from memory
kept by the allocator (AMD EPYC, 2 threads); kept, a MiniLM bf16 step is 1.13x faster
(reports/benchmarks/keep_memory_epyc.txt). Torch's CPU allocator is plain ``posix_memalign`` (its caching
allocator is CUDA-only) and the usual remedy, an ``LD_PRELOAD`` of jemalloc or tcmalloc, must be set before the
process starts; glibc's own ``mallopt`` does the same job in-process, so this module calls it: no ``mmap`` for
allocations (``M_MMAP_MAX`` 0) and no trimming of the heap top below 1 GiB (``M_TRIM_THRESHOLD``). The cost is
that the process does not return freed memory to the system before it exits (its peak is unchanged).

``FINLIGHT_KEEP_FREED_MEMORY=0`` turns it off; other C libraries (macOS, musl) are left alone. The same is available
to any process without finlight: ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

ENV = "FINLIGHT_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
TRIM_THRESHOLD = 1 << 30
_applied = False


def wanted(environ=None) -> bool:
    """False when ``FINLIGHT_KEEP_FREED_MEMORY`` is ``0``/``false``/``no``/``off``."""
    value = (os.environ if environ is None else environ).get(ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def glibc() -> Optional[ctypes.CDLL]:
    """The running glibc (None under another C library)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def active() -> bool:
    """Whether :func:`keep_freed_memory` has applied the settings in this process."""
    return _applied


def keep_freed_memory(libc=None, environ=None) -> Optional[str]:
    """Apply the settings (once per process); returns a one-line description when it applied them now, None when
    already applied, turned off, not glibc, or ``mallopt`` refused."""
    global _applied
    if _applied or not wanted(environ):
        return None
    libc = libc if libc is not None else glibc()
    if libc is None:
        return None
    if not (libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
        return None
    _applied = True
    return (f"glibc malloc keeps freed memory for reuse (no mmap per allocation, trim above {TRIM_THRESHOLD >> 30} "
            f"GiB): big per-step buffers are not page-faulted anew; {ENV}=0 turns it off")
