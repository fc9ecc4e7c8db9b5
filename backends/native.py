"""The native backend: C kernels compiled by cffi (``mhc_array._native``), one
variant per ISA level, for arrays on the CPU.

Arrays arrive from the caller's library zero-copy through DLPack
(``np.from_dlpack``); C-contiguous and row-strided layouts are passed to C as
they are (pointer + strides in elements), other layouts are copied once and
counted in ``stats()``. The result is allocated once with NumPy and handed back
with ``xp.from_dlpack`` (no copy). cffi releases the GIL during every call.
"""

import math
import os
import threading
import time
import warnings

import numpy as np

from .. import _config, _stats
from .._dispatch import domain_error
from ..errors import NativeError, ShapeError
from . import array_api as _reference_checks

NAME = "native"

ISA_CODES = {"portable": 0, "sse": 1, "avx2": 2, "avx512": 3}
ISA_NAMES = {v: k for k, v in ISA_CODES.items()}
_MANIFOLD = {"euclidean": 0, "poincare": 1, "spherical": 2}
_DOMAIN_MODE = {"raise": 0, "nan": 1, "clip": 2}
_STATUS = {1: "out of memory", 2: "invalid dimension", 3: "null pointer",
           4: "computation error", 5: "domain error", 6: "misaligned pointer"}


def _load():
    """(ffi, lib, None) or (None, None, why the native module cannot be used)."""
    if os.environ.get("MHC_ARRAY_DISABLE_NATIVE", "") not in ("", "0"):
        return None, None, "disabled by the environment variable MHC_ARRAY_DISABLE_NATIVE"
    try:
        from .._native import ffi, lib
    except ImportError as exc:
        return None, None, f"the compiled module mhc_array._native cannot be loaded ({exc})"
    from .. import __version__
    built = ffi.string(lib.mhc_version()).decode()
    if built != __version__:
        return None, None, (f"mhc_array._native was built for version {built}, not "
                            f"{__version__}; reinstall the package")
    return ffi, lib, None


ffi, lib, UNAVAILABLE = _load()

if lib is not None:
    BEST_ISA = ISA_NAMES[lib.mhc_best_isa()]
    _KERNELS = {
        "f": ((ffi.typeof("float[]"), ffi.typeof("float *")), lib.mhc_sinkhorn_f32,
              lib.mhc_distance_f32, lib.mhc_pairwise_f32, lib.mhc_hc_pre_f32,
              lib.mhc_hc_post_f32),
        "d": ((ffi.typeof("double[]"), ffi.typeof("double *")), lib.mhc_sinkhorn_f64,
              lib.mhc_distance_f64, lib.mhc_pairwise_f64, lib.mhc_hc_pre_f64,
              lib.mhc_hc_post_f64),
    }
else:
    BEST_ISA = None

_warned_isa = set()
_warn_lock = threading.Lock()


MAX_STREAMS = 16  # MHC_HC_MAX_N of the C kernels


def cannot_serve(x, library, kernel):
    """None if this backend can compute ``kernel`` on ``x``, else the reason."""
    if UNAVAILABLE is not None:
        return UNAVAILABLE
    if kernel == "mhc" and x.ndim >= 2 and x.shape[-2] > MAX_STREAMS:
        return f"its mHC kernels take at most {MAX_STREAMS} streams; x has {x.shape[-2]}"
    if getattr(x, "requires_grad", False):
        return ("the tensor requires grad: the native kernels have no autograd here "
                "(use mhc_array.torch, or detach())")
    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else None
    if dev != 1:
        return f"it computes on the CPU, and this {library} array is not on the CPU"
    return None


def silent_reason(why):
    """Reasons that are a choice of the caller, not a missing fast backend."""
    return why.startswith("the tensor requires grad")


def resolve_isa(level):
    """The ISA code to run for the requested level name (a level this CPU lacks falls
    back to the best one it has, with one warning per level)."""
    best = ISA_CODES[BEST_ISA]
    if level == "auto":
        return best
    code = ISA_CODES[level]
    if code > best:
        with _warn_lock:
            first = level not in _warned_isa
            _warned_isa.add(level)
        if first:
            warnings.warn(f"mhc_array: this CPU (or OS) does not support {level}; "
                          f"using {BEST_ISA}", RuntimeWarning, stacklevel=5)
        return best
    return code


# ---------------------------------------------------------------- layout

def _to_numpy(a):
    return a if type(a) is np.ndarray else np.from_dlpack(a)


def _back(xp, like, res):
    return res if type(like) is np.ndarray else xp.from_dlpack(res)


def _flat_stride(shape, strides, itemsize):
    """The single element stride that walks the batch axes ``shape``/``strides`` in C
    order, or None if there is none."""
    kept = [(s, t) for s, t in zip(shape, strides) if s != 1]
    if not kept or all(t == 0 for _, t in kept):
        return 0
    for (s0, t0), (s1, t1) in zip(kept, kept[1:]):
        if t0 != t1 * s1:
            return None
    t = kept[-1][1]
    if t < 0 or t % itemsize:
        return None
    return t // itemsize


def _layout(a, inner, call, batch=None):
    """(array, batch stride, row stride) for ``a`` whose last ``inner`` axes (1 or 2)
    are a vector or a matrix, walked over ``batch`` (default: a's own batch shape;
    a's batch axes broadcast to it). The same memory when the elements are aligned
    to their size, the last axis is contiguous and the batch walks with one
    non-negative stride, else a counted C-contiguous copy."""
    item = a.itemsize
    shape, strides = a.shape, a.strides
    own = shape[:-inner]
    if batch is not None and own != batch:
        if all(s == 1 for s in own):
            own, bstrides = (), ()  # one vector/matrix repeated: batch stride 0
        else:
            a = np.broadcast_to(a, batch + shape[-inner:])
            shape, strides, own = a.shape, a.strides, batch
            bstrides = strides[:-inner]
    else:
        bstrides = strides[:-inner]
    ok = a.flags.aligned and (shape[-1] <= 1 or strides[-1] == item)  # C needs aligned T*
    row = 0
    if ok and inner == 2:
        row = strides[-2] // item if shape[-2] > 1 else shape[-1]
        ok = strides[-2] >= 0 and strides[-2] % item == 0
    bstride = _flat_stride(own, bstrides, item) if ok else None
    if bstride is None:
        a = np.array(a, order="C", copy=True)  # contiguous and aligned
        call.copied(a.nbytes)
        row = shape[-1] if inner == 2 else 0
        bstride = _flat_stride(a.shape[:-inner], a.strides[:-inner], item)
    return a, bstride, row


def _ptr(a, ctype):
    """A C pointer to the first element of ``a`` (no copy); ``ctype`` is a pair of
    cffi types (array, pointer), parsed once."""
    if a.flags.c_contiguous:
        return ffi.from_buffer(ctype[0], a)
    return ffi.cast(ctype[1], a.ctypes.data)


def _check(status, err):
    if status == 0:
        return
    if status == 2:
        raise ShapeError("native kernel refused the sizes (invalid dimension)")
    raise NativeError(f"native kernel failed: {_STATUS.get(status, status)} (status {status})")


# ---------------------------------------------------------------- kernels

def sinkhorn(xp, x, *, iterations, tau, logits, cols_first, row_sums, col_sums, out, call):
    a = _to_numpy(x)
    shape = a.shape
    n, m = shape[-2], shape[-1]
    batch = shape[:-2]
    count = math.prod(batch)
    ctype, fn = _KERNELS[a.dtype.char][0], _KERNELS[a.dtype.char][1]
    if count == 0 or n == 0 or m == 0:
        res = np.empty(shape, a.dtype)
        return _finish(xp, x, out, res, call)
    src, xb, xr = _layout(a, 2, call)
    dst = _writable_out(out, a)
    if dst is None:
        dst = np.empty(shape, a.dtype)
    _, ob, orow = _layout(dst, 2, call)
    targets, keep = [], []  # keep: arrays whose addresses are passed, alive until the call
    for t, k in ((row_sums, n), (col_sums, m)):
        if t is None:
            targets += [ffi.NULL, 0]
            continue
        tb, tstride, _ = _layout(_to_numpy(t), 1, call, batch)
        targets += [_ptr(tb, ctype), tstride]
        keep.append(tb)
    err = ffi.new("int64_t *", -1)
    flags = (1 if logits else 0) | (2 if cols_first else 0)
    status = fn(_ptr(src, ctype), xb, xr, _ptr(dst, ctype), ob, orow, count, n, m,
                *targets, iterations, tau, flags,
                resolve_isa(_config.get_isa()), _config.get_num_threads(), err)
    if status == 5:
        raise domain_error("x", shape, err[0], "is negative; sinkhorn_knopp needs x >= 0 "
                                               "(or logits=True)")
    _check(status, err)
    return _finish(xp, x, out, dst, call)


def _writable_out(out, a):
    """``out`` as a NumPy array the kernel may write directly, or None."""
    if out is None:
        return None
    o = _to_numpy(out)
    if not o.flags.writeable:
        return None
    if o.ctypes.data != a.ctypes.data and np.may_share_memory(o, a):
        return None  # a partial overlap: compute into a temporary
    if o.ctypes.data == a.ctypes.data and o.strides != a.strides:
        return None
    return o


def _finish(xp, like, out, res, call):
    if out is None:
        return _back(xp, like, res)
    o = _to_numpy(out)
    if o.ctypes.data != res.ctypes.data:
        out[...] = _back(xp, like, res)
    return out


def distance(xp, manifold, x, c, *, curvature, on_domain_error, call):
    a, b = _to_numpy(x), _to_numpy(c)
    d = a.shape[-1]
    sa, sb = a.shape[:-1], b.shape[:-1]
    batch = sa if (sa == sb or not sb) else np.broadcast_shapes(sa, sb)
    rows = math.prod(batch)
    if rows == 0 or d == 0:
        return _reference_checks.distance(xp, manifold, x, c, curvature=curvature,
                                          on_domain_error=on_domain_error, call=call)
    ctype, fn = _KERNELS[a.dtype.char][0], _KERNELS[a.dtype.char][2]
    pa, ar, _ = _layout(a, 1, call, batch)
    pb, br, _ = _layout(b, 1, call, batch)
    res = np.empty(batch, a.dtype)
    err = ffi.new("int64_t *", -1)
    status = fn(_MANIFOLD[manifold], _ptr(pa, ctype), ar, _ptr(pb, ctype), br, _ptr(res, ctype),
                rows, d, curvature, _DOMAIN_MODE[on_domain_error],
                resolve_isa(_config.get_isa()), _config.get_num_threads(), err)
    if status:
        if status == 5:
            _raise_domain(manifold, (("x", a), ("c", b)), curvature)
        _check(status, err)
    return _back(xp, x, res)


def pairwise(xp, manifold, x, y, *, curvature, on_domain_error, call):
    a, b = _to_numpy(x), _to_numpy(y)
    (N, d), M = a.shape, b.shape[0]
    if N == 0 or M == 0 or d == 0:
        return _reference_checks.pairwise(xp, manifold, x, y, curvature=curvature,
                                          on_domain_error=on_domain_error, call=call)
    ctype, fn = _KERNELS[a.dtype.char][0], _KERNELS[a.dtype.char][3]
    pa, ar, _ = _layout(a, 1, call)
    pb, br, _ = _layout(b, 1, call)
    res = np.empty((N, M), a.dtype)
    err = ffi.new("int64_t *", -1)
    status = fn(_MANIFOLD[manifold], _ptr(pa, ctype), N, ar, _ptr(pb, ctype), M, br, d,
                _ptr(res, ctype), curvature, _DOMAIN_MODE[on_domain_error],
                resolve_isa(_config.get_isa()), _config.get_num_threads(), err)
    if status == 5:
        _raise_domain(manifold, (("x", a), ("y", b)), curvature)
    _check(status, err)
    return _back(xp, x, res)


# ---------------------------------------------------------------- the mHC connection

# float lanes per vector at each ISA level (double: half): phi's columns are padded
# to a multiple, so that the projection loads whole vectors
_LANES_F32 = {"portable": 1, "sse": 4, "avx2": 8, "avx512": 16}


def _tokens(a, inner, call):
    """``a (..., *inner)`` as a C-contiguous (tokens, prod(inner)) view (a counted copy
    if needed) and its token count."""
    size = math.prod(inner)
    tokens = math.prod(a.shape[:a.ndim - len(inner)])
    if not a.flags.c_contiguous or not a.flags.aligned:
        a = np.ascontiguousarray(a)
        call.copied(a.nbytes)
    return a.reshape(tokens, size), tokens


def new_workspace():
    """A native workspace for the mHC kernels (freed when the returned object is
    garbage-collected), or None without the native module."""
    if UNAVAILABLE is not None:
        return None
    ws = lib.mhc_hc_ws_create()
    return None if ws == ffi.NULL else ffi.gc(ws, lib.mhc_hc_ws_destroy)


def mhc_pre(xp, x, phi, bias, alpha, *, iterations, norm_eps, variant, hc_eps, call,
            workspace=None):
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    dt = a.dtype
    w, b, al = _to_numpy(phi), _to_numpy(bias), _to_numpy(alpha)
    K = (2 + n) * n
    isa = _config.get_isa()
    code = resolve_isa(isa)
    lanes = max(1, _LANES_F32[ISA_NAMES[code]] // (2 if dt == np.float64 else 1))
    Kp = -(-K // lanes) * lanes
    if variant == "paper" and Kp == K and w.flags.c_contiguous and w.flags.aligned:
        wp = w
    else:  # padded columns, and V4's fn (K, nC) transposed to (nC, K): phi's size, once
        wp = np.zeros((n * C, Kp), dt)
        wp[:, :K] = w if variant == "paper" else w.T
    b = np.require(b, dt, ["C", "A"])     # contiguous and aligned (C refuses misaligned)
    al = np.require(al, dt, ["C", "A"])
    xt, tokens = _tokens(a, (n, C), call)
    h_in = np.empty(batch + (C,), dt)
    h_pre = np.empty(batch + (n,), dt)
    h_post = np.empty(batch + (n,), dt)
    h_res = np.empty(batch + (n, n), dt)
    ctype, fn = _KERNELS[dt.char][0], _KERNELS[dt.char][4]
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, wp, b, al, h_in, h_pre, h_post, h_res)]
        status = fn(p[0], n * C, tokens, n, C, p[1], Kp, p[2], p[3],
                    0 if variant == "paper" else 1, iterations, norm_eps, hc_eps,
                    p[4], p[5], p[6], p[7], ffi.NULL if workspace is None else workspace,
                    code, _config.get_num_threads())
        _check(status, None)
    return tuple(_back(xp, x, r) for r in (h_in, h_pre, h_post, h_res))


def mhc_post(xp, x, f_out, h_post, h_res, *, out, call):
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    dt = a.dtype
    xt, tokens = _tokens(a, (n, C), call)
    parts = []
    for t, inner in ((_to_numpy(f_out), (C,)), (_to_numpy(h_post), (n,)),
                     (_to_numpy(h_res), (n, n))):
        if t.shape[:t.ndim - len(inner)] != batch:
            t = np.broadcast_to(t, batch + inner)
        parts.append(t)
    f = parts[0]
    fstride = C
    if math.prod(f.shape[:-1]) > 1 and all(s == 0 for s in f.strides[:-1]) \
            and f.strides[-1] == f.itemsize and f.flags.aligned:
        fstride, f = 0, f.reshape(-1, C)[:1]          # one f_out for every token: not copied
    else:
        f, _ = _tokens(f, (C,), call)
    hp, _ = _tokens(parts[1], (n,), call)
    hr, _ = _tokens(parts[2], (n, n), call)
    res, direct = None, False
    if out is not None:   # written directly when it is x itself or does not overlap it
        o = _to_numpy(out)
        if (o.flags.c_contiguous and o.flags.aligned and o.flags.writeable and o.dtype == dt
                and (o.ctypes.data == xt.ctypes.data or not np.may_share_memory(o, xt))):
            res, direct = o, True
    if res is None:
        res = np.empty(a.shape, dt)
    ctype, fn = _KERNELS[dt.char][0], _KERNELS[dt.char][5]
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, f, hp, hr, res)]
        status = fn(p[0], n * C, p[1], fstride, p[2], p[3], p[4], n * C, tokens, n, C,
                    resolve_isa(_config.get_isa()), _config.get_num_threads())
        _check(status, None)
    return out if direct else _back(xp, x, res)


def fast_distance(function, manifold, x, c, curvature, on_domain_error):
    """The whole call for the common case -- NumPy float32/float64 ``x (N, d)`` or
    ``(d,)`` and ``c (d,)``, C-contiguous, native backend in force -- or None to take
    the general path (which also raises every error). Keeps the frontend's cost per
    call near that of the bare cffi call (W2 latency): every check here is a
    single attribute test, and the configuration is read in one call."""
    dt = x.dtype
    if (UNAVAILABLE is not None or dt is not c.dtype or dt not in _FAST_DTYPES or c.ndim != 1
            or not 1 <= x.ndim <= 2 or type(curvature) is not float
            or not 0 < curvature < math.inf):
        return None
    d = c.shape[0]
    mode = _DOMAIN_MODE.get(on_domain_error)
    backend, isa, threads = _config.current()
    if (x.shape[-1] != d or not d or mode is None
            or (backend != "auto" and backend != "native")):
        return None
    code = _ISA_FAST.get(isa)
    if code is None:
        code = resolve_isa(isa)  # a level this CPU lacks: falls back, warns once
    t0 = time.perf_counter()
    ctype, fn = _FAST_DTYPES[dt][0], _FAST_DTYPES[dt][2]
    res = np.empty(x.shape[:-1], dt)
    try:  # from_buffer refuses a NumPy array that is not C-contiguous
        px, pc = ffi.from_buffer(ctype[0], x), ffi.from_buffer(ctype[0], c)
    except ValueError:
        return None
    # a misaligned pointer is refused by C (MHC_ERR_MISALIGNED): the general path copies
    status = fn(_MANIFOLD[manifold], px, d, pc, 0, ffi.from_buffer(ctype[0], res),
                x.shape[0] if x.ndim == 2 else 1, d, curvature, mode, code, threads, ffi.NULL)
    if status:
        return None  # the general path reports it with names and indices
    _stats.record(function, NAME, 0, 0, time.perf_counter() - t0)
    return res


def fast_sinkhorn(x, iterations, tau, logits, order):
    """The whole call for the common case -- a C-contiguous NumPy float32/float64
    ``x (..., n, m)``, default targets, no ``out``, native backend in force, options
    of exactly the default types -- or None to take the general path (which also
    validates every option and raises every error)."""
    dt = x.dtype
    if (UNAVAILABLE is not None or dt not in _FAST_DTYPES or x.ndim < 2
            or type(iterations) is not int or not 0 <= iterations <= 2**31 - 1
            or type(tau) is not float or not 0 <= tau < math.inf
            or type(logits) is not bool):
        return None
    if order == "rows-first":
        flags = 1 if logits else 0
    elif order == "cols-first":
        flags = 3 if logits else 2
    else:
        return None
    backend, isa, threads = _config.current()
    if backend != "auto" and backend != "native":
        return None
    shape = x.shape
    n, m = shape[-2], shape[-1]
    count = math.prod(shape[:-2])
    if not (count and n and m):
        return None
    code = _ISA_FAST.get(isa)
    if code is None:
        code = resolve_isa(isa)
    t0 = time.perf_counter()
    ctype, fn = _FAST_DTYPES[dt][0], _FAST_DTYPES[dt][1]
    try:  # from_buffer refuses a NumPy array that is not C-contiguous
        px = ffi.from_buffer(ctype[0], x)
    except ValueError:
        return None
    res = np.empty(shape, dt)
    nm = n * m
    if fn(px, nm, m, ffi.from_buffer(ctype[0], res), nm, m, count, n, m, ffi.NULL, 0, ffi.NULL,
          0, iterations, tau, flags, code, threads, ffi.NULL):
        return None  # the general path reports it with names and indices
    _stats.record("sinkhorn_knopp", NAME, 0, 0, time.perf_counter() - t0)
    return res


# Native-byte-order float32/float64 (dtype objects compared by identity: a
# byte-swapped or otherwise unusual dtype takes the general path).
_FAST_DTYPES = {np.dtype(np.float32): _KERNELS["f"], np.dtype(np.float64): _KERNELS["d"]} \
    if lib is not None else {}

# The ISA levels this CPU runs as they are (no fallback warning to give): name -> code.
_ISA_FAST = {}


def _isa_fast_init():
    if BEST_ISA is None:
        return
    best = ISA_CODES[BEST_ISA]
    for name, code in ISA_CODES.items():
        if code <= best:
            _ISA_FAST[name] = code
    _ISA_FAST["auto"] = best


_isa_fast_init()


def _raise_domain(manifold, named, curvature):
    """The C kernel found a point outside the domain: name the argument and index with
    the same message as the array_api backend."""
    import array_api_compat.numpy as npx
    for name, arr in named:
        _reference_checks.raise_on_domain(npx, manifold, arr, name, curvature)
    raise NativeError("native kernel reported a domain error that the check cannot find")
