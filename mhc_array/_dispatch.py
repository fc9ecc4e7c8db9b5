"""From the caller's arrays to a backend, and back.

One place decides, for every call:

- the array namespace of the arguments (array-api-compat, cached per array
  type, importing no framework the caller has not imported) and that they all
  come from one library and one device (else ``TypeError`` naming both);
- the compute dtype (SPEC 2.6): float32/float64 as they are, float16/bfloat16
  in float32 and returned in their own dtype, integers and bools in float64,
  complex refused;
- the backend (SPEC 2.5): the configured one, or for "auto" the fastest that
  can serve the device, falling back to ``array_api`` with one warning per cause.

Backends are modules with the same functions (``backends/``); this module
only chooses among them. The pipeline that strings these steps together is ``_pipeline.py``.
"""

import importlib
import math
import threading
import time

import array_api_compat
import numpy as np

from . import _stats
from .errors import BackendUnavailableError, ShapeError, UnsupportedDTypeError, warn_at_caller

# DLPack device types (dlpack.h): the CPU and CUDA families.
_DL_CPU = 1
_DL_CUDA = (2, 3, 13)  # CUDA, CUDA host (pinned), CUDA managed

_ns_cache = {}  # array type -> (namespace, library name)


def namespace_of(x, name):
    """(namespace, library) of array ``x``, cached per type; TypeError if not an array."""
    cls = type(x)
    hit = _ns_cache.get(cls)
    if hit is not None:
        return hit
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        raise not_an_array(name, x) from None
    lib = cls.__module__.split(".")[0]
    lib = {"jaxlib": "jax"}.get(lib, lib)
    if lib == "torch":  # torch.compile over the plain functions: a graph break here
        from . import _dynamo
        _dynamo.register()
    _ns_cache[cls] = (xp, lib)
    return xp, lib


def not_an_array(name, value):
    """The TypeError for argument ``name`` given ``value``, which is not an array."""
    what = "None" if value is None else f"{type(value).__module__}.{type(value).__qualname__}"
    return TypeError(f"{name} must be an array (NumPy, PyTorch, CuPy, JAX, Dask or any "
                     f"array-API array); got {what}")


def is_array_like(v):
    """A Python scalar, a NumPy scalar or a (nested) list or tuple of them: what
    ``np.asarray`` takes as numbers (SPEC 2: array-likes are taken as NumPy would)."""
    if isinstance(v, (list, tuple)):
        return all(map(is_array_like, v))
    return isinstance(v, (bool, int, float, complex, np.generic))


def from_array_likes(arrays):
    """``arrays`` with every array-like (``is_array_like``) made an array as NumPy
    makes it, then put in the library and on the device of the first real array of
    the call (NumPy when there is none, or when that array is a dask array)."""
    like = next((a for a in arrays if a is not None and not is_array_like(a)), None)
    out = []
    for a in arrays:
        if a is None or not is_array_like(a):
            out.append(a)
            continue
        a = np.asarray(a)
        if like is not None and not isinstance(like, np.ndarray):
            xp, lib = namespace_of(like, "")
            if lib != "dask":
                try:
                    a = xp.asarray(a, device=device_of(like))
                except TypeError:  # a namespace without device=
                    a = xp.asarray(a)
        out.append(a)
    return out


def device_type(x):
    """The DLPack device type of ``x`` (1 = CPU), or None if it does not speak DLPack."""
    try:
        return x.__dlpack_device__()[0]
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return None


def common_namespace(args):
    """Check that every (name, array) in ``args`` (None skipped) shares one library and
    device; return (xp, library) of the first. Dask arrays may come with NumPy ones
    (a reference point, parameters: broadcast to every block); the call is then lazy."""
    first = None
    for name, arr in args:
        if arr is None:
            continue
        xp, lib = namespace_of(arr, name)
        if first is None:
            first = (name, arr, xp, lib)
            continue
        fname, farr, fxp, flib = first
        if {lib, flib} == {"dask", "numpy"}:
            if lib == "dask":
                first = (name, arr, xp, lib)
            continue
        if lib != flib:
            raise TypeError(f"{fname} is a {flib} array but {name} is a {lib} array; "
                            "pass arrays of one library")
        if lib != "numpy" and _device(arr) != _device(farr):
            raise TypeError(f"{fname} is on device {_device(farr)!r} but {name} is on "
                            f"device {_device(arr)!r}; pass arrays on one device")
    return first[2], first[3]


def device_of(x):
    """The device of ``x`` in its own library's terms (for ``device=`` arguments)."""
    return array_api_compat.device(x)


def _device(x):
    dev = getattr(x, "device", None)   # torch, CuPy, JAX, NumPy 2, array_api_strict:
    if dev is not None and not callable(dev):   # an attribute, read directly (fast)
        return str(dev)
    try:
        return str(array_api_compat.device(x))
    except Exception:  # noqa: BLE001 - a library without a device notion
        return "cpu"


# ---------------------------------------------------------------- dtypes

def compute_dtype(xp, x, name):
    """(compute dtype, result dtype) for argument ``x`` (SPEC 2.6)."""
    dt = x.dtype
    if dt == xp.float32 or dt == xp.float64:
        return dt, dt
    if getattr(dt, "byteorder", "=") not in "=|":  # byte-swapped NumPy data: computed and
        dt = dt.newbyteorder("=")                  # returned in native order, as ufuncs do
        if dt == xp.float32 or dt == xp.float64:
            return dt, dt
    if xp.isdtype(dt, "real floating"):  # float16, bfloat16
        return xp.float32, dt
    if xp.isdtype(dt, ("integral", "bool")):
        return xp.float64, xp.float64
    if xp.isdtype(dt, "complex floating"):
        raise UnsupportedDTypeError(
            f"{name} must be a real floating, integer or bool array; got complex dtype {dt}")
    raise UnsupportedDTypeError(f"{name} must be a real floating array; got dtype {dt}")


class Call:
    """One public call on its way through the pipeline: what the backend needs to
    know besides arrays and options (the ISA level requested, the thread count,
    a caller-owned ``state`` dict for persistent resources such as a layer's
    native workspace), and the copies it reports (``copied``), counted in
    ``stats()`` by the pipeline when the call is done."""

    __slots__ = ("function", "copies", "bytes_copied", "backend", "t0", "isa", "threads",
                 "state")

    def __init__(self, function, isa, threads, state=None):
        self.function = function
        self.copies = 0
        self.bytes_copied = 0
        self.backend = None
        self.isa = isa
        self.threads = threads
        self.state = state
        self.t0 = time.perf_counter()

    def copied(self, nbytes):
        self.copies += 1
        self.bytes_copied += int(nbytes)

    def cast(self, xp, x, dtype):
        """``x`` in ``dtype`` (a counted copy when it changes)."""
        if x.dtype == dtype:
            return x
        y = xp.astype(x, dtype)
        self.copied(_nbytes(y))
        return y

    def done(self):
        _stats.record(self.function, self.backend, self.copies, self.bytes_copied,
                      time.perf_counter() - self.t0)


def _nbytes(x):
    try:
        return x.nbytes
    except AttributeError:
        size = 1
        for s in x.shape:
            size *= s
        return size * getattr(x.dtype, "itemsize", 8)


# ---------------------------------------------------------------- backends

_backends = {}
_warned = set()
_warn_lock = threading.Lock()


def backend(name):
    """The backend module ``name`` ("native", "cupy", "array_api"), imported on first use."""
    mod = _backends.get(name)
    if mod is None:
        mod = _backends[name] = importlib.import_module(f"{__package__}.backends.{name}")
    return mod


def warn_once(cause, message):
    with _warn_lock:
        if cause in _warned:
            return
        _warned.add(cause)
    warn_at_caller(message, RuntimeWarning)


def select_backend(x, lib, kernel, requested):
    """The backend module that serves array ``x`` for ``kernel`` when ``requested``
    ("auto" or a backend name) is configured."""
    if requested == "array_api":
        return backend("array_api")
    if requested == "auto":
        dev = device_type(x)
        name = "native" if dev == _DL_CPU else "cupy" if dev in _DL_CUDA else None
        if name is not None:
            mod = backend(name)
            why = mod.cannot_serve(x, lib, kernel)
            if why is None:
                return mod
            if not mod.silent_reason(why):
                warn_once((name, why), f"mhc_array: {name} backend unavailable ({why}); "
                                       "using the array_api backend")
        return backend("array_api")
    mod = backend(requested)
    why = mod.cannot_serve(x, lib, kernel)
    if why is not None:
        raise BackendUnavailableError(f"backend {requested!r} cannot serve this call: {why}")
    return mod


# ---------------------------------------------------------------- shapes

MAX_ELEMENTS = 2**62


def checked_size(shape, name):
    """Element count of ``shape``; ShapeError if it overflows a 63-bit count."""
    size = math.prod(shape)  # Python ints: exact, no overflow
    if size <= MAX_ELEMENTS:
        return size
    size = 1
    for s in shape:
        size *= int(s)
        if size > MAX_ELEMENTS:
            raise ShapeError(f"{name}: the element count of shape {tuple(shape)} overflows")
    return size


def broadcast_batch(shape_a, shape_b, name_a, name_b):
    """np.broadcast_shapes for batch shapes, with a ShapeError naming both arguments."""
    if shape_a == shape_b or not shape_b:
        return shape_a
    if not shape_a:
        return shape_b
    out = []
    la, lb = len(shape_a), len(shape_b)
    for k in range(max(la, lb)):
        a = shape_a[la - 1 - k] if k < la else 1
        b = shape_b[lb - 1 - k] if k < lb else 1
        if a != b and a != 1 and b != 1:
            raise ShapeError(f"{name_a} with batch shape {tuple(shape_a)} and {name_b} with "
                             f"batch shape {tuple(shape_b)} cannot be broadcast together")
        out.append(a if b == 1 else b)
    return tuple(reversed(out))
