"""Large allocations go back to the system when they are freed.

glibc's malloc serves a large request with its own mapping and unmaps it on
free, up to a threshold that it raises by itself each time such a block is
freed (up to 32 MiB). After the first large message, a block of 20 MB is
taken from an arena's heap instead, and a freed heap block is kept for
reuse by that arena only. serve handles one message on three threads (the
listener, the journal's writer, the processing stage), each with an arena
of its own, so every copy a message ever had stayed resident: a message of
20 MB grew serve by 4-5x its size where 2x of it was alive at once.

Setting the threshold (which also stops its adjustment) makes every block
of 1 MiB or more a mapping of its own, unmapped on free. Elsewhere than on
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter
THRESHOLD_BYTES = 1024 * 1024


def return_large_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """Ask glibc to map every block of `threshold` bytes or more on its own;
    True if it took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
