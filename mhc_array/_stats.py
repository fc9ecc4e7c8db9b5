"""Per-function, per-backend call statistics (SPEC 2.5 ``stats()``).

The design notes promise zero-copy for 99%+ of calls; this is where it is
measured. A call appends one tuple to a deque (atomic, no lock), and a call
served by a cached plan (always zero-copy) only its seconds to the deque of
its (function, backend): the per-call cost stays well under 0.1 us. Pending
records are folded under a lock into a flat table keyed by (function,
backend) when ``stats()`` is read or when many have piled up.
"""

import collections
import itertools
import threading

__all__ = ["stats", "reset_stats", "record", "zero_copy_queue"]

_FIELDS = ("calls", "zero_copy_calls", "copies", "bytes_copied", "seconds")
_lock = threading.Lock()
_table = {}  # (function, backend) -> [calls, zero_copy_calls, copies, bytes_copied, seconds]


_pending = collections.deque()  # (function, backend, copies, bytes_copied, seconds)
_FOLD_AT = 4096


def record(function, backend, copies, bytes_copied, seconds):
    """Count one call of ``function`` on ``backend``."""
    _pending.append((function, backend, copies, bytes_copied, seconds))
    if len(_pending) > _FOLD_AT:
        with _lock:
            _fold()


# Zero-copy calls of the pipeline's cached plans: one deque of seconds per
# (function, backend), appended to without a lock and drained in C.
_queues = {}


def zero_copy_queue(function, backend):
    """The deque a cached plan appends its calls' seconds to (one per key)."""
    with _lock:
        return _queues.setdefault((function, backend), collections.deque())


def fold():
    """Fold everything pending into the table (``stats()`` does it too)."""
    with _lock:
        _fold()


def _entry(key):
    e = _table.get(key)
    if e is None:
        e = _table[key] = [0, 0, 0, 0, 0.0]
    return e


def _fold():
    """Move the pending records into the table (the caller holds ``_lock``)."""
    for key, q in _queues.items():
        n = len(q)
        if n:
            seconds = sum(itertools.starmap(q.popleft, itertools.repeat((), n)))
            e = _entry(key)
            e[0] += n
            e[1] += n
            e[4] += seconds
    pop = _pending.popleft
    while True:
        try:
            function, backend, copies, bytes_copied, seconds = pop()
        except IndexError:
            return
        e = _entry((function, backend))
        e[0] += 1
        e[1] += copies == 0
        e[2] += copies
        e[3] += bytes_copied
        e[4] += seconds


def stats():
    """A snapshot: ``stats()[function][backend]`` -> dict of calls, zero_copy_calls,
    copies, bytes_copied and seconds (time spent from the call to its result).

    >>> mx.reset_stats()
    >>> d = mx.euclidean_distance(np.ones((2, 3), np.float32), np.zeros(3, np.float32))
    >>> table = mx.stats()["euclidean_distance"]     # {backend: counters}
    >>> sum(s["calls"] for s in table.values()), sum(s["copies"] for s in table.values())
    (1, 0)
    """
    out = {}
    with _lock:
        _fold()
        for (function, backend), e in _table.items():
            out.setdefault(function, {})[backend] = dict(zip(_FIELDS, e))
    return out


def reset_stats():
    """Forget every counter.

    >>> mx.reset_stats(); mx.stats()
    {}
    """
    with _lock:
        _pending.clear()
        for q in _queues.values():
            q.clear()
        _table.clear()
