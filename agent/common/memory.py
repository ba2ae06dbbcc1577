"""glibc malloc settings that keep the agent's resident memory flat on a small box.

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


_LIBC = _libc()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc gives threads that allocate their own malloc arenas (up to 8 per core) and keeps
    what they freed: with the store, uplink and executor threads that was ~2-4 MB of RSS at
    10 000 points. Call before any thread starts."""
    with contextlib.suppress(AttributeError):
        if _LIBC is not None:
            _LIBC.mallopt(M_ARENA_MAX, arenas)


def trim_malloc() -> None:
    """Hand freed heap memory back to the system (message and chunk buffers of a busy minute
    would otherwise stay resident)."""
    with contextlib.suppress(AttributeError):
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
