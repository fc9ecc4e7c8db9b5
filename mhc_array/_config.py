"""Configuration: backend, instruction-set level and thread count.

``set_*`` change the process-wide default (what every thread sees unless it
overrides it); ``use_*`` override it for a ``with`` block, in the current
context only (a ``contextvars.ContextVar``: another thread or asyncio task
never sees it). Defaults are seeded from the environment variables
``MHC_ARRAY_BACKEND``, ``MHC_ARRAY_ISA`` and ``MHC_ARRAY_NUM_THREADS``.
Values are validated when they are set, not when they are used.
"""

import contextlib
import contextvars
import os

from ._options import choice, positive_int

BACKENDS = ("auto", "native", "cupy", "array_api")
ISA_LEVELS = ("auto", "avx512", "avx2", "sse", "portable")

__all__ = [
    "set_backend", "get_backend", "use_backend",
    "set_isa", "get_isa", "use_isa",
    "set_num_threads", "get_num_threads", "use_num_threads",
]


_check_backend = choice(*BACKENDS)
_check_isa = choice(*ISA_LEVELS)


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _from_env(var, check, default):
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return check(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"environment variable {var}: {exc}") from None


_defaults = {
    "backend": _from_env("MHC_ARRAY_BACKEND",
                         lambda v: _check_backend("MHC_ARRAY_BACKEND", v.strip().lower()),
                         "auto"),
    "isa": _from_env("MHC_ARRAY_ISA",
                     lambda v: _check_isa("MHC_ARRAY_ISA", v.strip().lower()),
                     "auto"),
    "num_threads": _from_env("MHC_ARRAY_NUM_THREADS",
                             lambda v: positive_int("MHC_ARRAY_NUM_THREADS", int(v)),
                             _available_cores()),
}

_KEYS = ("backend", "isa", "num_threads")
_default = tuple(_defaults[k] for k in _KEYS)  # the process defaults, as one tuple

# This context's overrides: None (none at all, the common case), or
# (overrides, defaults, merged): the overrides a tuple with one entry per key,
# None where that key is not overridden (the process default, which a later
# set_* still changes, shows through), and the merged tuple as of the
# defaults tuple they were merged with (current() returns that very object
# while the defaults are unchanged: the pipeline's plan cache compares by
# identity).
_overrides = contextvars.ContextVar("mhc_array_overrides", default=None)


def _merge(overrides):
    return tuple(d if v is None else v for d, v in zip(_default, overrides))


def current():
    """(backend, isa, num_threads) in force in this context, in one call (the
    pipeline reads it on every call, as the key of its cached plans)."""
    o = _overrides.get()
    if o is None:
        return _default
    if o[1] is _default:
        return o[2]
    return _merge(o[0])


def _get(key):
    return current()[_KEYS.index(key)]


def _set_default(key, value):
    global _default
    _defaults[key] = value
    _default = tuple(_defaults[k] for k in _KEYS)


@contextlib.contextmanager
def _use(key, value):
    o = list((_overrides.get() or ((None,) * len(_KEYS),))[0])
    o[_KEYS.index(key)] = value
    token = _overrides.set((tuple(o), _default, _merge(o)))
    try:
        yield value
    finally:
        _overrides.reset(token)


def set_backend(name):
    """Set the default backend: "auto", "native", "cupy" or "array_api".

    >>> mx.set_backend("array_api"); mx.get_backend()
    'array_api'
    >>> mx.set_backend("auto")
    """
    _set_default("backend", _check_backend("backend", name))


def get_backend():
    """The backend in force in this context.

    >>> mx.get_backend()      # the default, unless MHC_ARRAY_BACKEND says otherwise
    'auto'
    """
    return _get("backend")


def use_backend(name):
    """``with use_backend("native"):`` -- override the backend in this context only.

    >>> with mx.use_backend("array_api"):
    ...     print(mx.get_backend())
    array_api
    >>> mx.get_backend()
    'auto'
    """
    return _use("backend", _check_backend("backend", name))


def set_isa(level):
    """Set the default instruction-set level: "auto", "avx512", "avx2", "sse", "portable".

    A level the CPU lacks falls back to the best one it has, with a warning.

    >>> mx.set_isa("portable"); mx.get_isa()
    'portable'
    >>> mx.set_isa("auto")
    """
    _set_default("isa", _check_isa("isa", level))


def get_isa():
    """The instruction-set level requested in this context (see ``config()`` for the one used).

    >>> mx.get_isa()
    'auto'
    """
    return _get("isa")


def use_isa(level):
    """``with use_isa("avx2"):`` -- override the ISA level in this context only.

    >>> with mx.use_isa("sse"):
    ...     d = mx.euclidean_distance(np.ones((4, 3)), np.zeros(3))   # SSE kernels
    >>> d.round(4)
    array([1.7321, 1.7321, 1.7321, 1.7321])
    """
    return _use("isa", _check_isa("isa", level))


def set_num_threads(n):
    """Set how many threads a native call may use (default: the cores this process may use).

    >>> before = mx.get_num_threads()
    >>> mx.set_num_threads(1); mx.get_num_threads()
    1
    >>> mx.set_num_threads(before)
    """
    _set_default("num_threads", positive_int("n", n))


def get_num_threads():
    """The thread count in force in this context.

    >>> mx.get_num_threads() >= 1
    True
    """
    return _get("num_threads")


def use_num_threads(n):
    """``with use_num_threads(1):`` -- override the thread count in this context only.

    >>> with mx.use_num_threads(1):
    ...     print(mx.get_num_threads())
    1
    """
    return _use("num_threads", positive_int("n", n))
