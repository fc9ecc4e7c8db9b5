"""Per-function, per-backend call statistics (SPEC 2.5 ``stats()``).

The design notes promise zero-copy for 99%+ of calls; this is where it is
measured. Counters are updated under a lock (calls from many threads); the
table is flat, keyed by (function, backend), to keep the per-call cost low.
"""

import threading

__all__ = ["stats", "reset_stats", "record"]

_FIELDS = ("calls", "zero_copy_calls", "copies", "bytes_copied", "seconds")
_lock = threading.Lock()
_table = {}  # (function, backend) -> [calls, zero_copy_calls, copies, bytes_copied, seconds]


def record(function, backend, copies, bytes_copied, seconds):
    """Count one call of ``function`` on ``backend``."""
    key = (function, backend)
    with _lock:
        e = _table.get(key)
        if e is None:
            e = _table[key] = [0, 0, 0, 0, 0.0]
        e[0] += 1
        e[1] += copies == 0
        e[2] += copies
        e[3] += bytes_copied
        e[4] += seconds


def stats():
    """A snapshot: ``stats()[function][backend]`` -> dict of calls, zero_copy_calls,
    copies, bytes_copied and seconds (time spent from the call to its result)."""
    out = {}
    with _lock:
        for (function, backend), e in _table.items():
            out.setdefault(function, {})[backend] = dict(zip(_FIELDS, e))
    return out


def reset_stats():
    """Forget every counter."""
    with _lock:
        _table.clear()
