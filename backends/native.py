"""The native backend: C kernels compiled by cffi (``mhc_array._native``), one
variant per ISA level, for arrays on the CPU.

A pure adapter: it receives validated arrays (already in the compute dtype)
and plain scalars from the pipeline, passes them to C and gives the results
back; it records no statistics and never chooses another backend. Arrays
arrive zero-copy through DLPack (``np.from_dlpack``); C-contiguous and
row-strided layouts are passed to C as they are (pointer + strides in
elements), other layouts are copied once and reported (``call.copied``). The
result is allocated once with NumPy and handed back with ``xp.from_dlpack``
(no copy), on the caller's device. cffi releases the GIL during every call.

Every fact of the C ABI -- status codes, ISA levels, manifold and mode codes,
flags, limits, CPU feature bits -- is read from the compiled module, whose
declarations are generated from ``native/include/mhc_native.h``.
"""

import math
import os
import sys
import threading
import types
import weakref

import numpy as np

from ..errors import DomainError, NativeError, ShapeError, warn_at_caller

NAME = "native"


def _load():
    """(ffi, lib, None) or (None, None, why the native module cannot be used)."""
    if os.environ.get("MHC_ARRAY_DISABLE_NATIVE", "") not in ("", "0"):
        return None, None, "disabled by the environment variable MHC_ARRAY_DISABLE_NATIVE"
    try:
        from .._native import ffi, lib
    except ImportError as exc:
        return None, None, f"the compiled module mhc_array._native cannot be loaded ({exc})"
    from .. import __version__  # the package version only: compared with the compiled one
    built = ffi.string(lib.mhc_version()).decode()
    if built != __version__:
        return None, None, (f"mhc_array._native was built for version {built}, not "
                            f"{__version__}; reinstall the package")
    return ffi, lib, None


ffi, lib, UNAVAILABLE = _load()


def _constants(prefix):
    """{suffix: value} of the integer constants ``prefix*`` of the compiled module."""
    return {k[len(prefix):]: getattr(lib, k) for k in dir(lib) if k.startswith(prefix)}


if lib is not None:
    ISA_CODES = {k.lower(): v for k, v in _constants("MHC_ISA_").items()}
    ISA_NAMES = {v: k for k, v in ISA_CODES.items()}
    BEST_ISA = ISA_NAMES[lib.mhc_best_isa()]
    MAX_STREAMS = lib.MHC_HC_MAX_STREAMS
    _STATUS = {v: k.lower().replace("_", " ") for k, v in _constants("MHC_ERR_").items()}
    _MANIFOLD = {"euclidean": lib.MHC_EUCLIDEAN, "poincare": lib.MHC_POINCARE,
                 "spherical": lib.MHC_SPHERICAL}
    _DOMAIN_MODE = {"raise": lib.MHC_DOM_RAISE, "nan": lib.MHC_DOM_NAN, "clip": lib.MHC_DOM_CLIP}
    _ORDER_FLAG = {"rows-first": 0, "cols-first": lib.MHC_SK_COLS_FIRST}
    _VARIANT = {"paper": lib.MHC_HC_PAPER, "deepseek-v4": lib.MHC_HC_DEEPSEEK_V4}

    def _dtype_kernels(c_type, sfx):
        """The kernels of one dtype by name (``lib.mhc_<name>_<sfx>``) and ``ctype``,
        its cffi (array, pointer) types, parsed once."""
        return types.SimpleNamespace(
            ctype=(ffi.typeof(c_type + "[]"), ffi.typeof(c_type + " *")),
            **{name: getattr(lib, f"mhc_{name}_{sfx}") for name in (
                "sinkhorn", "sinkhorn_backward", "distance", "pairwise", "hc_pre", "hc_post",
                "hc_post_pre", "hc_pre_backward", "hc_post_backward")})

    _KERNELS = {np.dtype(np.float32): _dtype_kernels("float", "f32"),
                np.dtype(np.float64): _dtype_kernels("double", "f64")}
else:
    ISA_CODES, ISA_NAMES, BEST_ISA, MAX_STREAMS, _KERNELS = {}, {}, None, 0, {}

_warned_isa = set()
_warn_lock = threading.Lock()


class _OutputPool:
    """Large outputs on buffers reused once every array viewing them is gone.

    An output of ``MIN_BYTES`` or more lies beyond glibc's largest mmap threshold:
    each ``np.empty`` of it is a fresh mapping whose pages the kernel faults and
    zeroes inside the call (a 64 MB ``h_in``: 10.1 ms to allocate and fill against
    3.0 ms to fill a reused buffer, on an AMD EPYC). The pool keeps the last
    ``MAX_BUFFERS`` such buffers (at most ``MAX_BYTES`` in all) and hands one out
    again only when its reference count says that nothing else holds it -- no array,
    view, tensor or DLPack capsule of an earlier result -- so a result is never
    shared; the caller sees an ordinary array. Oldest first out of the pool."""

    MIN_BYTES = 32 << 20
    MAX_BUFFERS = 4
    MAX_BYTES = 512 << 20

    def __init__(self):
        self._lock = threading.Lock()
        self._bufs = []       # uint8 arrays, oldest first
        # the count getrefcount gives for an array held by a list alone, measured the
        # way take() measures (an interpreter may or may not count its argument)
        probe = [np.empty(1, np.uint8)]
        self._FREE_REFS = sys.getrefcount(probe[0])

    def take(self, shape, dtype):
        """An array of ``shape`` and ``dtype`` (a NumPy dtype) from the pool."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES or nbytes > self.MAX_BYTES:
            return np.empty(shape, dtype)
        getrefcount, free = sys.getrefcount, self._FREE_REFS
        with self._lock:
            bufs = self._bufs
            for i in range(len(bufs)):
                # referenced by the list alone (as counted for a lone probe): free
                if bufs[i].nbytes == nbytes and getrefcount(bufs[i]) == free:
                    buf = bufs.pop(i)
                    break
            else:
                buf = np.empty(nbytes, np.uint8)
            bufs.append(buf)
            while len(bufs) > self.MAX_BUFFERS or sum(b.nbytes for b in bufs) > self.MAX_BYTES:
                bufs.pop(0)
            return buf.view(dtype).reshape(shape)

    def clear(self):
        """Forget every pooled buffer (those still in use live on with their arrays)."""
        with self._lock:
            self._bufs.clear()


_outputs = _OutputPool()


def _empty(shape, dtype, _prod=math.prod, _np_empty=np.empty, _pool=_outputs):
    """``np.empty(shape, dtype)`` for an output, from the pool when it is a large one
    (``dtype`` a NumPy dtype; the small case costs ~0.1 us more than ``np.empty``)."""
    if _prod(shape) * dtype.itemsize < _pool.MIN_BYTES:
        return _np_empty(shape, dtype)
    return _pool.take(shape, dtype)


def cannot_serve(x, library, kernel):
    """None if this backend can compute ``kernel`` on ``x``, else the reason."""
    if UNAVAILABLE is not None:
        return UNAVAILABLE
    if kernel.startswith("mhc") and x.ndim >= 2 and x.shape[-2] > MAX_STREAMS:
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
        return -1   # the best level, with this CPU's per-kernel rules (mhc_auto_rules)
    code = ISA_CODES[level]
    if code > best:
        with _warn_lock:
            first = level not in _warned_isa
            _warned_isa.add(level)
        if first:
            warn_at_caller(f"mhc_array: this CPU (or OS) does not support {level}; "
                           f"using {BEST_ISA}", RuntimeWarning)
        return best
    return code


def describe():
    """What ``config()`` reports of the native part: best ISA, build, CPU features."""
    if lib is None:
        return {"isa_best": None, "build": None, "cpu_features": {}}
    bits = lib.mhc_cpu_feature_bits()
    names = {k: k.lower().replace("sse41", "sse4_1") for k in _constants("MHC_CPU_")}
    features = {names[k]: bool(bits & v) for k, v in
                sorted(_constants("MHC_CPU_").items(), key=lambda kv: kv[1])}
    rules = lib.mhc_auto_rules()   # what each rule of `auto` is (native/src/dispatch.c)
    auto = [text for bit, text in (
        (lib.MHC_RULE_SK_LARGE_AVX2, "Sinkhorn of large matrices at avx2 (AVX-512 runs on "
                                     "256-bit units here, and AVX2's kernel is faster)"),
        (lib.MHC_RULE_HC_ROWS_AVX2, "mHC projection with phi in rows, float32, at avx2 "
                                    "(AVX2's tile is faster on these 256-bit units)"))
        if rules & bit]
    return {"isa_best": BEST_ISA, "build": ffi.string(lib.mhc_build_info()).decode(),
            "cpu_features": features, "auto_rules": auto}


def level_in_use(level):
    """The name of the level a requested level name runs at ("auto": the best)."""
    return ISA_NAMES[lib.mhc_resolve_isa(resolve_isa(level))]


# ---------------------------------------------------------------- layout

def _to_numpy(a):
    return a if type(a) is np.ndarray else np.from_dlpack(a)


def _back(xp, like, res):
    """``res`` (NumPy) as an array of the caller's library, on ``like``'s device."""
    if type(like) is np.ndarray:
        return res
    out = xp.from_dlpack(res)
    dev = getattr(like, "device", None)
    if dev is not None and getattr(out, "device", dev) != dev:
        out = xp.asarray(out, device=dev)  # e.g. a CPU array on a library's other CPU device
    return out


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
    non-negative stride, else a reported C-contiguous copy."""
    item = a.itemsize
    shape, strides = a.shape, a.strides
    own = shape[:-inner]
    if batch is not None and own != batch:
        if all(s == 1 for s in own):
            own, batch_strides = (), ()  # one vector/matrix repeated: batch stride 0
        else:
            a = np.broadcast_to(a, batch + shape[-inner:])
            shape, strides, own = a.shape, a.strides, batch
            batch_strides = strides[:-inner]
    else:
        batch_strides = strides[:-inner]
    ok = a.flags.aligned and (shape[-1] <= 1 or strides[-1] == item)  # C needs aligned T*
    row = 0
    if ok and inner == 2:
        row = strides[-2] // item if shape[-2] > 1 else shape[-1]
        ok = strides[-2] >= 0 and strides[-2] % item == 0
    batch_stride = _flat_stride(own, batch_strides, item) if ok else None
    if batch_stride is None:
        a = np.array(a, order="C", copy=True)  # contiguous and aligned
        call.copied(a.nbytes)
        row = shape[-1] if inner == 2 else 0
        batch_stride = _flat_stride(a.shape[:-inner], a.strides[:-inner], item)
    return a, batch_stride, row


def _ptr(a, ctype):
    """A C pointer to the first element of ``a`` (no copy); ``ctype`` is a pair of
    cffi types (array, pointer), parsed once."""
    if a.flags.c_contiguous:
        return ffi.from_buffer(ctype[0], a)
    return ffi.cast(ctype[1], a.ctypes.data)


def _check(status):
    if status == lib.MHC_OK:
        return
    if status == lib.MHC_ERR_INVALID_DIMENSION:
        raise ShapeError("native kernel refused the sizes (invalid dimension)")
    raise NativeError(f"native kernel failed: {_STATUS.get(status, status)} (status {status})")


def _tokens(a, inner, call):
    """``a (..., *inner)`` as a C-contiguous (tokens, prod(inner)) view (a reported
    copy if needed) and its token count."""
    size = math.prod(inner)
    tokens = math.prod(a.shape[:a.ndim - len(inner)])
    if not a.flags.c_contiguous or not a.flags.aligned:
        a = np.ascontiguousarray(a)
        call.copied(a.nbytes)
    return a.reshape(tokens, size), tokens


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


def _finish(xp, like, out, res):
    if out is None:
        return _back(xp, like, res)
    if _to_numpy(out).ctypes.data != res.ctypes.data:
        out[...] = _back(xp, like, res)
    return out


# ---------------------------------------------------------------- Sinkhorn

def sinkhorn(xp, x, row_sums, col_sums, *, iterations, tau, logits, order, out, call):
    a = _to_numpy(x)
    shape = a.shape
    n, m = shape[-2], shape[-1]
    batch = shape[:-2]
    count = math.prod(batch)
    ctype, kernel = _KERNELS[a.dtype].ctype, _KERNELS[a.dtype].sinkhorn
    if count == 0 or n == 0 or m == 0:
        return _finish(xp, x, out, np.empty(shape, a.dtype))
    src, x_bstride, x_rstride = _layout(a, 2, call)
    dst = _writable_out(out, a)
    if dst is None:
        dst = _empty(shape, a.dtype)
    _, out_bstride, out_rstride = _layout(dst, 2, call)
    targets, keep = _targets(row_sums, col_sums, batch, ctype, call)
    err = ffi.new("int64_t *", -1)
    flags = (lib.MHC_SK_LOGITS if logits else 0) | _ORDER_FLAG[order]
    status = kernel(_ptr(src, ctype), x_bstride, x_rstride, _ptr(dst, ctype), out_bstride,
                    out_rstride, count, n, m, *targets, iterations, tau, flags,
                    resolve_isa(call.isa), call.threads, err)
    if status == lib.MHC_ERR_DOMAIN:
        raise DomainError.at("x", shape, err[0], "is negative; sinkhorn_knopp needs x >= 0 "
                                                 "(or logits=True)")
    _check(status)
    return _finish(xp, x, out, dst)


def _targets(row_sums, col_sums, batch, ctype, call):
    """([pointer, batch stride] * 2 of the targets (NULL, 0 for None), the arrays
    behind the pointers, to keep alive until the call)."""
    targets, keep = [], []
    for t in (row_sums, col_sums):
        if t is None:
            targets += [ffi.NULL, 0]
            continue
        tb, t_bstride, _ = _layout(_to_numpy(t), 1, call, batch)
        targets += [_ptr(tb, ctype), t_bstride]
        keep.append(tb)
    return targets, keep


def sinkhorn_backward(xp, x, row_sums, col_sums, grad, *, iterations, tau, logits, order, call):
    """The gradient of ``sum(grad * sinkhorn(x))`` w.r.t. ``x`` (targets held fixed)."""
    a = _to_numpy(x)
    shape = a.shape
    n, m = shape[-2], shape[-1]
    batch = shape[:-2]
    count = math.prod(batch)
    res = _empty(shape, a.dtype)
    if count == 0 or n == 0 or m == 0:
        return _back(xp, x, res)
    ctype, kernel = _KERNELS[a.dtype].ctype, _KERNELS[a.dtype].sinkhorn_backward
    src, x_bstride, x_rstride = _layout(a, 2, call)
    g, g_bstride, g_rstride = _layout(_to_numpy(grad), 2, call, batch)
    targets, keep = _targets(row_sums, col_sums, batch, ctype, call)
    err = ffi.new("int64_t *", -1)
    flags = (lib.MHC_SK_LOGITS if logits else 0) | _ORDER_FLAG[order]
    status = kernel(_ptr(src, ctype), x_bstride, x_rstride, _ptr(g, ctype), g_bstride,
                    g_rstride, _ptr(res, ctype), n * m, m, count, n, m, *targets, iterations,
                    tau, flags, resolve_isa(call.isa), call.threads, err)
    if status == lib.MHC_ERR_DOMAIN:
        raise DomainError.at("x", shape, err[0], "is negative; sinkhorn_knopp needs x >= 0 "
                                                 "(or logits=True)")
    _check(status)
    return _back(xp, x, res)


# ---------------------------------------------------------------- distances

def distance(xp, x, c, *, manifold, curvature, on_domain_error, call):
    a, b = _to_numpy(x), _to_numpy(c)
    d = a.shape[-1]
    sa, sb = a.shape[:-1], b.shape[:-1]
    batch = sa if (sa == sb or not sb) else np.broadcast_shapes(sa, sb)
    res = np.empty(batch, a.dtype)
    rows = math.prod(batch)
    if rows:
        ctype, kernel = _KERNELS[a.dtype].ctype, _KERNELS[a.dtype].distance
        pa, a_rstride, _ = _layout(a, 1, call, batch)
        pb, b_rstride, _ = _layout(b, 1, call, batch)
        status = kernel(_MANIFOLD[manifold], _ptr(pa, ctype), a_rstride, _ptr(pb, ctype),
                        b_rstride, _ptr(res, ctype), rows, d, curvature,
                        _DOMAIN_MODE[on_domain_error], resolve_isa(call.isa), call.threads,
                        ffi.NULL)
        if status == lib.MHC_ERR_DOMAIN:
            _raise_domain(manifold, (("x", a), ("c", b)), curvature)
        _check(status)
    return _back(xp, x, res)


def pairwise(xp, x, y, *, manifold, curvature, on_domain_error, call):
    a, b = _to_numpy(x), _to_numpy(y)
    (N, d), M = a.shape, b.shape[0]
    res = _empty((N, M), a.dtype)
    if N and M:
        ctype, kernel = _KERNELS[a.dtype].ctype, _KERNELS[a.dtype].pairwise
        pa, a_rstride, _ = _layout(a, 1, call)
        pb, b_rstride, _ = _layout(b, 1, call)
        status = kernel(_MANIFOLD[manifold], _ptr(pa, ctype), N, a_rstride, _ptr(pb, ctype), M,
                        b_rstride, d, _ptr(res, ctype), curvature, _DOMAIN_MODE[on_domain_error],
                        resolve_isa(call.isa), call.threads, ffi.NULL)
        if status == lib.MHC_ERR_DOMAIN:
            _raise_domain(manifold, (("x", a), ("y", b)), curvature)
        _check(status)
    return _back(xp, x, res)


def _raise_domain(manifold, named, curvature):
    """The C kernel found a point outside the domain: the DomainError naming the
    first such point, the argument checked first (as the array_api backend does)."""
    for name, p in named:
        if manifold == "poincare":
            bad = curvature * np.sum(np.square(p, dtype=np.float64), axis=-1) >= 1
        else:  # spherical: a zero vector (every entry 0)
            bad = np.all(p == 0, axis=-1)
        if bad.any():
            raise DomainError.at(name, p.shape[:-1], int(np.argmax(bad.ravel())),
                                 DomainError.OUTSIDE[manifold])
    raise NativeError("native kernel reported a domain error that the check cannot find")


# ---------------------------------------------------------------- the mHC connection

def _workspace(state):
    """The caller's native workspace (a layer's, kept in its ``state`` dict: a call's
    ``call.state``), created on first use and freed when the state is; NULL for a
    call without state."""
    if state is None:
        return ffi.NULL
    ws = state.get(NAME)
    if ws is None:
        ws = lib.mhc_hc_ws_create()
        if ws == ffi.NULL:
            return ffi.NULL  # no memory for it: the kernel allocates per call
        ws = state[NAME] = ffi.gc(ws, lib.mhc_hc_ws_destroy)
    return ws


def _projection(w, dt, call):
    """The projection (``phi (n*C, K)`` or V4's ``fn (K, n*C)``) as the C kernels read
    it, in the caller's layout: (array, row stride in elements). The caller's memory
    when its rows are contiguous, aligned and walk forward (any row stride), else a
    reported C-contiguous copy."""
    w = _to_numpy(w)
    item = w.itemsize
    if (w.dtype == dt and w.flags.aligned and (w.shape[1] <= 1 or w.strides[1] == item)
            and w.strides[0] % item == 0 and w.strides[0] // item >= w.shape[1]):
        return w, (w.strides[0] // item if w.shape[0] > 1 else w.shape[1])
    w = np.array(w, dtype=dt, order="C", copy=True)
    call.copied(w.nbytes)
    return w, w.shape[1]


def mhc_pre(xp, x, phi, bias, alpha, *, iterations, norm_eps, variant, hc_eps, call):
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    dt = a.dtype
    code = resolve_isa(call.isa)
    wp, ldp = _projection(phi, dt, call)
    b = np.require(_to_numpy(bias), dt, ["C", "A"])   # contiguous and aligned (C refuses
    al = np.require(_to_numpy(alpha), dt, ["C", "A"])  # misaligned)
    xt, tokens = _tokens(a, (n, C), call)
    h_in = _empty(batch + (C,), dt)
    h_pre = np.empty(batch + (n,), dt)
    h_post = np.empty(batch + (n,), dt)
    h_res = np.empty(batch + (n, n), dt)
    ctype, kernel = _KERNELS[dt].ctype, _KERNELS[dt].hc_pre
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, b, al, h_in, h_pre, h_post, h_res)]
        p.insert(1, _ptr(wp, ctype))
        _check(kernel(p[0], n * C, tokens, n, C, p[1], ldp, p[2], p[3],
                      _VARIANT[variant], iterations, norm_eps, hc_eps,
                      p[4], p[5], p[6], p[7], _workspace(call.state), code, call.threads))
    return tuple(_back(xp, x, r) for r in (h_in, h_pre, h_post, h_res))


def mhc_pre_backward(xp, x, phi, bias, alpha, g_in, g_pre, g_post, g_res, *, iterations,
                     norm_eps, variant, hc_eps, call):
    """The gradients of ``mhc_pre`` (upstream gradients None: zero): ``(g_x, gz, y,
    gp, gw)`` -- the streams' gradient and, per token ``(..., K)``, the gradient of the
    pre-activations, the normalised projection and the gradient of the raw
    projection (the frontend reduces them to the bias' and alpha's gradients), and
    the projection's gradient ``sum_t gp_t^T v_t`` as ``(K, n*C)`` rows, summed by the
    kernel while each block of tokens is in cache."""
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    dt = a.dtype
    K = (2 + n) * n
    code = resolve_isa(call.isa)
    wp, ldp = _projection(phi, dt, call)
    wt = np.require(wp.T if variant == "paper" else wp, dt, ["C", "A"])   # (K, n*C) rows
    b = np.require(_to_numpy(bias), dt, ["C", "A"])
    al = np.require(_to_numpy(alpha), dt, ["C", "A"])
    xt, tokens = _tokens(a, (n, C), call)
    grads = [None if g is None else _tokens(_to_numpy(g), inner, call)[0]
             for g, inner in ((g_in, (C,)), (g_pre, (n,)), (g_post, (n,)), (g_res, (n, n)))]
    g_x = _empty(a.shape, dt)
    gz, y, gp = (np.empty(batch + (K,), dt) for _ in range(3))
    gw = (np.empty if tokens else np.zeros)((K, n * C), dt)   # (the kernel zeroes it)
    ctype, kernel = _KERNELS[dt].ctype, _KERNELS[dt].hc_pre_backward
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, b, al, g_x, gz, y, gp, gw)]
        p[1:1] = [_ptr(wp, ctype), _ptr(wt, ctype)]
        g = [ffi.NULL if v is None else ffi.from_buffer(ctype[0], v) for v in grads]
        _check(kernel(p[0], n * C, tokens, n, C, p[1], ldp, p[2], p[3], p[4],
                      _VARIANT[variant], iterations, norm_eps, hc_eps,
                      g[0], g[1], g[2], g[3], p[5], n * C, p[6], p[7], p[8], p[9],
                      code, call.threads))
    return tuple(_back(xp, x, r) for r in (g_x, gz, y, gp, gw))


def _post_operands(a, f_out, h_post, h_res, call):
    """x's tokens and the post step's other operands broadcast to x's batch, as the C
    kernels take them: (xt, tokens, f, f_tstride, h_post, h_res). One f_out for
    every token is passed with token stride 0 (not copied)."""
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    xt, tokens = _tokens(a, (n, C), call)
    parts = []
    for t, inner in ((_to_numpy(f_out), (C,)), (_to_numpy(h_post), (n,)),
                     (_to_numpy(h_res), (n, n))):
        if t.shape[:t.ndim - len(inner)] != batch:
            t = np.broadcast_to(t, batch + inner)
        parts.append(t)
    f = parts[0]
    f_tstride = C
    if math.prod(f.shape[:-1]) > 1 and all(s == 0 for s in f.strides[:-1]) \
            and f.strides[-1] == f.itemsize and f.flags.aligned:
        f_tstride, f = 0, f.reshape(-1, C)[:1]      # one f_out for every token: not copied
    else:
        f, _ = _tokens(f, (C,), call)
    hp, _ = _tokens(parts[1], (n,), call)
    hr, _ = _tokens(parts[2], (n, n), call)
    return xt, tokens, f, f_tstride, hp, hr


def mhc_post(xp, x, f_out, h_post, h_res, *, out, call):
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    dt = a.dtype
    xt, tokens, f, f_tstride, hp, hr = _post_operands(a, f_out, h_post, h_res, call)
    res = _post_out(out, xt, dt)   # written directly when it is x itself or apart from it
    direct = res is not None
    if res is None:
        res = _empty(a.shape, dt)
    ctype, kernel = _KERNELS[dt].ctype, _KERNELS[dt].hc_post
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, f, hp, hr, res)]
        _check(kernel(p[0], n * C, p[1], f_tstride, p[2], p[3], p[4], n * C, tokens, n, C,
                      resolve_isa(call.isa), call.threads))
    return out if direct else _back(xp, x, res)


def _post_out(out, xt, dt):
    """``out`` as an array the post kernels may write directly (x itself, or memory
    apart from x), or None."""
    if out is None:
        return None
    o = _to_numpy(out)
    if (o.flags.c_contiguous and o.flags.aligned and o.flags.writeable and o.dtype == dt
            and (o.ctypes.data == xt.ctypes.data or not np.may_share_memory(o, xt))):
        return o
    return None


def mhc_post_pre(xp, x, f_out, h_post, h_res, phi, bias, alpha, *, iterations, norm_eps,
                 variant, hc_eps, out, call):
    """The layer boundary in one pass (``mhc_hc_post_pre``): per block of tokens the
    next streams are written (into ``out`` when it may be written directly, x itself
    included) and projected from the cache -> ``(x_next, h_in, h_pre, h_post,
    h_res)``."""
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch, dt = a.shape[:-2], a.dtype
    code = resolve_isa(call.isa)
    xt, tokens, f, f_tstride, hp, hr = _post_operands(a, f_out, h_post, h_res, call)
    wp, ldp = _projection(phi, dt, call)
    b = np.require(_to_numpy(bias), dt, ["C", "A"])
    al = np.require(_to_numpy(alpha), dt, ["C", "A"])
    direct = _post_out(out, xt, dt)
    nxt = direct if direct is not None else _empty(a.shape, dt)
    h_in = _empty(batch + (C,), dt)
    h_pre, h_post2 = np.empty(batch + (n,), dt), np.empty(batch + (n,), dt)
    h_res2 = np.empty(batch + (n, n), dt)
    ctype, kernel = _KERNELS[dt].ctype, _KERNELS[dt].hc_post_pre
    if tokens:
        p = [ffi.from_buffer(ctype[0], v)
             for v in (xt, f, hp, hr, nxt, b, al, h_in, h_pre, h_post2, h_res2)]
        _check(kernel(p[0], n * C, p[1], f_tstride, p[2], p[3], p[4], n * C, tokens, n, C,
                      _ptr(wp, ctype), ldp, p[5], p[6], _VARIANT[variant], iterations,
                      norm_eps, hc_eps, p[7], p[8], p[9], p[10], _workspace(call.state), code,
                      call.threads))
    first = out if direct is not None else _back(xp, x, nxt)
    return (first, *(_back(xp, x, r) for r in (h_in, h_pre, h_post2, h_res2)))


def mhc_post_backward(xp, x, f_out, h_post, h_res, grad, *, call):
    """The gradients of ``mhc_post`` for the upstream gradient ``grad`` (x's shape):
    ``(g_x, g_f, g_post, g_res)``, the last three per token of x's batch (the
    frontend sums them over the axes it broadcast)."""
    a = _to_numpy(x)
    n, C = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    dt = a.dtype
    xt, tokens, f, f_tstride, hp, hr = _post_operands(a, f_out, h_post, h_res, call)
    gt, _ = _tokens(_to_numpy(grad), (n, C), call)
    g_x = _empty(a.shape, dt)
    g_f = _empty(batch + (C,), dt)
    g_post = np.empty(batch + (n,), dt)
    g_res = np.empty(batch + (n, n), dt)
    ctype, kernel = _KERNELS[dt].ctype, _KERNELS[dt].hc_post_backward
    if tokens:
        p = [ffi.from_buffer(ctype[0], v) for v in (xt, f, hp, hr, gt, g_x, g_f, g_post, g_res)]
        _check(kernel(p[0], n * C, p[1], f_tstride, p[2], p[3], p[4], n * C, tokens, n, C,
                      p[5], n * C, p[6], p[7], p[8], resolve_isa(call.isa), call.threads))
    return tuple(_back(xp, x, r) for r in (g_x, g_f, g_post, g_res))


# ---------------------------------------------------------------- plans

def plan(kernel, dtypes, ndims, call):
    """A fast callable for NumPy arrays of ``dtypes`` and ``ndims`` (the pipeline's
    cached plan), or None. The callable takes the tuple of arrays, the dict of
    validated options and the caller's state (a layer's workspace, or None) and
    returns the result, or None to decline a call (a layout or a size it does not
    take, a status to report): the general path then serves it, with its errors."""
    if any(dt not in _KERNELS for dt in dtypes) or len(set(dtypes)) != 1:
        return None
    code, threads = resolve_isa(call.isa), call.threads
    kernels = _KERNELS[dtypes[0]]
    array_type, dt = kernels.ctype[0], dtypes[0]
    from_buffer, empty, null = ffi.from_buffer, _empty, ffi.NULL
    if kernel == "sinkhorn":
        sinkhorn_kernel = kernels.sinkhorn
        logits_flag = lib.MHC_SK_LOGITS

        def run_sinkhorn(arrays, options, state):
            x, row_sums, col_sums = arrays
            if row_sums is not None or col_sums is not None:
                return None  # targets: the general path
            shape = x.shape
            n, m = shape[-2], shape[-1]
            count = math.prod(shape[:-2])
            if not (count and n and m):
                return None
            try:  # from_buffer refuses an array that is not C-contiguous
                px = from_buffer(array_type, x)
            except ValueError:
                return None
            res = empty(shape, dt)
            nm = n * m
            flags = (logits_flag if options["logits"] else 0) | _ORDER_FLAG[options["order"]]
            if sinkhorn_kernel(px, nm, m, from_buffer(array_type, res), nm, m, count, n, m,
                               null, 0, null, 0, options["iterations"], options["tau"], flags,
                               code, threads, null):
                return None
            return res
        return run_sinkhorn
    if kernel == "distance" and ndims[1] == 1 and ndims[0] in (1, 2):
        distance_kernel = kernels.distance
        two_d = ndims[0] == 2

        memo = [(None, None)]  # (the last options dict seen, its kernel codes): one tuple

        def run_distance(arrays, options, state):
            x, c = arrays
            d = c.shape[0]
            if x.shape[-1] != d or not d:
                return None
            last = memo[0]
            if last[0] is not options:  # the pipeline passes the same dict while unchanged
                last = memo[0] = (options, (_MANIFOLD[options["manifold"]], options["curvature"],
                                            _DOMAIN_MODE[options["on_domain_error"]]))
            manifold, curvature, mode = last[1]
            res = empty(x.shape[:-1], dt)
            try:
                px, pc = from_buffer(array_type, x), from_buffer(array_type, c)
            except ValueError:
                return None
            if distance_kernel(manifold, px, d, pc, 0, from_buffer(array_type, res),
                               x.shape[0] if two_d else 1, d, curvature, mode, code, threads,
                               null):
                return None  # a domain error, a misaligned pointer: the general path
            return res
        return run_distance
    if kernel in ("mhc_pre", "mhc_post"):
        return _mhc_plan(kernel, kernels, dt, code, threads)
    return None


def _mhc_plan(kernel, kernels, dt, code, threads):
    """The plans of mhc_pre and mhc_post (decode: one call per token and layer): every
    array a C-contiguous NumPy array of the one dtype, the shapes the record would
    accept (anything else: declined, the general path checks and reports it)."""
    array_type, from_buffer, empty, null = kernels.ctype[0], ffi.from_buffer, np.empty, ffi.NULL
    nd = np.ndarray

    def contiguous(*arrays):
        return all(type(a) is nd and a.dtype is dt and a.flags.c_contiguous for a in arrays)

    if kernel == "mhc_pre":
        hc_pre = kernels.hc_pre

        def run_pre(arrays, options, state):
            x, phi, bias, alpha = arrays
            if not contiguous(x, phi, bias, alpha) or x.ndim < 2:
                return None
            n, C = x.shape[-2], x.shape[-1]
            K, v4 = (2 + n) * n, options["variant"] != "paper"
            if (phi.shape != ((K, n * C) if v4 else (n * C, K)) or bias.shape != (K,)
                    or alpha.shape != (3,) or not 1 <= n <= MAX_STREAMS or not C):
                return None
            batch = x.shape[:-2]
            tokens = math.prod(batch)
            h_in, h_pre, h_post = _empty(batch + (C,), dt), empty(batch + (n,), dt), \
                empty(batch + (n,), dt)
            h_res = empty(batch + (n, n), dt)
            if tokens and hc_pre(
                    from_buffer(array_type, x), n * C, tokens, n, C, from_buffer(array_type, phi),
                    phi.shape[1], from_buffer(array_type, bias), from_buffer(array_type, alpha),
                    _VARIANT[options["variant"]], options["iterations"], options["norm_eps"],
                    options["hc_eps"], from_buffer(array_type, h_in),
                    from_buffer(array_type, h_pre), from_buffer(array_type, h_post),
                    from_buffer(array_type, h_res), _workspace(state), code, threads):
                return None   # a status to report: the general path
            return h_in, h_pre, h_post, h_res
        return run_pre
    hc_post = kernels.hc_post

    def run_post(arrays, options, state):
        x, f_out, h_post, h_res = arrays
        if not contiguous(x, f_out, h_post, h_res) or x.ndim < 2:
            return None
        n, C = x.shape[-2], x.shape[-1]
        batch = x.shape[:-2]
        if (f_out.shape != batch + (C,) or h_post.shape != batch + (n,)
                or h_res.shape != batch + (n, n) or not 1 <= n <= MAX_STREAMS or not C):
            return None
        res = _empty(x.shape, dt)
        tokens = math.prod(batch)
        if tokens and hc_post(from_buffer(array_type, x), n * C, from_buffer(array_type, f_out),
                              C, from_buffer(array_type, h_post), from_buffer(array_type, h_res),
                              from_buffer(array_type, res), n * C, tokens, n, C, code, threads):
            return None
        return res
    return run_post


def torch_plan(kernel, dtypes, ndims, call, rows=False):
    """The plans of the mHC records for CPU torch tensors (decode: one call per token
    and layer from ``mhc_array.torch`` under ``no_grad``), or None: the C kernels on
    the tensors' own memory (``data_ptr``), no DLPack round trip. bfloat16 streams
    are read as they are by the bfloat16 entries of the pre and post steps and the
    fused boundary (``mhc_hc_pre_bf16``, ``mhc_hc_post_bf16``, ``mhc_hc_post_pre_bf16``);
    float16 streams are computed in float32 (one copy of the streams, and h_in / x_next
    converted back, as the general path does); the parameters and coefficients must
    be tensors of the computing dtype, the parameters contiguous (their checks
    remembered per Parameter object, data pointer, version and shape).
    Returns ``run(arrays, options, state) -> (result, bytes copied) or None`` (None:
    declined, the general path serves the call). ``rows``: DeepSeek-V4's projection
    given in the paper's rows layout ``(n*C, K)`` (a module's prepared copy of ``fn``,
    kernel flag MHC_HC_ROWS), for mhc_pre and mhc_post_pre."""
    import torch
    if kernel not in ("mhc_pre", "mhc_post", "mhc_post_pre"):
        return None
    cdt = {torch.float64: np.dtype(np.float64)}.get(dtypes[0], np.dtype(np.float32))
    if dtypes[0] not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return None
    kernels = _KERNELS[cdt]
    tdt = torch.float64 if cdt == np.float64 else torch.float32
    ptr_type, cast, empty, empty_like = kernels.ctype[1], ffi.cast, torch.empty, torch.empty_like
    from_numpy = torch.from_numpy
    code, threads = resolve_isa(call.isa), call.threads

    def np_out(shape):
        """The pre step's outputs on NumPy's allocator (and the pool of large
        outputs), whose freed blocks are reused (glibc raises its mmap threshold):
        torch's fresh mapping of h_in faults its pages inside the threaded kernel at
        every call (T = 256, hidden 4096, two threads: 6.0 ms with torch.empty, 3.2 ms
        with this; one thread unchanged)."""
        return from_numpy(_empty(shape, cdt))

    pool_min, itemsize = _outputs.MIN_BYTES, cdt.itemsize

    def large(shape):
        """An output of the computing dtype: torch's allocator, or from the pool of
        large outputs when it is one (a fresh mapping's pages faulted in the call)."""
        if math.prod(shape) * itemsize >= pool_min:
            return from_numpy(_empty(shape, cdt))
        return empty(shape, dtype=tdt)

    Tensor = torch.Tensor
    bf16, u16 = torch.bfloat16, ffi.typeof("uint16_t *")
    grad_enabled = torch.is_grad_enabled

    def usable(t):
        """A CPU tensor of the computing dtype (any layout) that needs no gradient
        here: none requires one, or torch records none (``no_grad``)."""
        return (isinstance(t, Tensor) and t.dtype is tdt and t.is_cpu
                and not (t.requires_grad and grad_enabled()))

    def ready(*ts):
        return all(usable(t) and t.is_contiguous() for t in ts)

    def streams(x, bf16_ok=False):
        """x in the computing dtype, contiguous, on the CPU (a copy counted), or None;
        ``bf16_ok``: contiguous bfloat16 streams as they are (a kernel reads them)."""
        if (not isinstance(x, Tensor) or not x.is_cpu or (x.requires_grad and grad_enabled())
                or x.ndim < 2 or not 1 <= x.shape[-2] <= MAX_STREAMS):
            return None, 0
        if (x.dtype is tdt or bf16_ok and x.dtype is bf16) and x.is_contiguous():
            return x, 0
        if not x.dtype.is_floating_point or x.dtype is torch.float64 and tdt is torch.float32:
            return None, 0
        return x.to(tdt, memory_format=torch.contiguous_format), x.numel() * x.element_size()

    def p(t):
        return cast(ptr_type, t.data_ptr())

    # The parameters' checks and C pointers, remembered per (phi, bias, alpha) -- a
    # module's Parameters, the same objects at every decode call -- while each is
    # the same live object (weak references: nothing is kept alive) with the same
    # data pointer, version and shape; a changed or new parameter is checked again.
    # Whether one requires a gradient is asked at every call (grad mode may change).
    params_seen = {}
    ref = weakref.ref

    def signature(phi, bias, alpha):
        return (phi.data_ptr(), phi._version, phi.shape, bias.data_ptr(), bias._version,
                bias.shape, alpha.data_ptr(), alpha._version, alpha.shape)

    def pre_params(n, C, phi, bias, alpha, v4):
        """(phi, its row stride, bias, alpha) as C pointers, or None (declined)."""
        try:
            key = (id(phi), id(bias), id(alpha), n, C, v4)
            seen = params_seen.get(key)
            if seen is not None:
                refs, sig, ptrs = seen
                if (refs[0]() is phi and refs[1]() is bias and refs[2]() is alpha
                        and sig == signature(phi, bias, alpha)):
                    if grad_enabled() and (phi.requires_grad or bias.requires_grad
                                           or alpha.requires_grad):
                        return None
                    return ptrs
            K = (2 + n) * n
            if rows and not v4:
                return None
            if not (ready(phi, bias, alpha) and bias.shape == (K,) and alpha.shape == (3,)
                    and phi.shape == ((K, n * C) if v4 and not rows else (n * C, K))):
                return None
            ptrs = (p(phi), phi.shape[1], p(bias), p(alpha))
            if len(params_seen) >= 1024:
                params_seen.clear()
            params_seen[key] = ((ref(phi), ref(bias), ref(alpha)),
                                signature(phi, bias, alpha), ptrs)
            return ptrs
        except (AttributeError, TypeError):   # not tensors: the general path names them
            return None

    rows_flag = lib.MHC_HC_ROWS if rows else 0

    pre_bf16, np_u16 = lib.mhc_hc_pre_bf16, np.dtype(np.uint16)
    bf16_streams = tdt is torch.float32

    def run_pre(arrays, options, state):
        x, phi, bias, alpha = arrays
        xc, copied = streams(x, bf16_streams)
        if xc is None:
            return None
        n, C = x.shape[-2], x.shape[-1]
        prm = pre_params(n, C, phi, bias, alpha, options["variant"] != "paper") if C else None
        if prm is None:
            return None
        batch = x.shape[:-2]
        tokens = math.prod(batch)
        if xc.dtype is bf16:   # read as they are, h_in written in bfloat16 (mhc_hc_pre_bf16)
            kernel, h_in = pre_bf16, from_numpy(_empty(batch + (C,), np_u16)).view(bf16)
            px, ph = cast(u16, xc.data_ptr()), cast(u16, h_in.data_ptr())
        else:
            kernel, h_in = kernels.hc_pre, np_out(batch + (C,))
            px, ph = p(xc), p(h_in)
        h_pre, h_post, h_res = np_out(batch + (n,)), np_out(batch + (n,)), np_out(batch + (n, n))
        if tokens and kernel(
                px, n * C, tokens, n, C, prm[0], prm[1], prm[2], prm[3],
                _VARIANT[options["variant"]] | rows_flag, options["iterations"],
                options["norm_eps"], options["hc_eps"], ph, p(h_pre), p(h_post), p(h_res),
                _workspace(state), code, threads):
            return None
        if h_in.dtype is not x.dtype:
            h_in = h_in.to(x.dtype)
        return (h_in, h_pre, h_post, h_res), copied

    def post_checked(x, f_out, h_post, h_res):
        """The post step's shapes (x a CPU tensor of 2 or more dimensions, checked by
        the caller) and its coefficients, contiguous (another layout -- V4's comb
        transposed -- is copied: they are small): (n, C, batch, hp, hr, bytes
        copied), or None."""
        n, C = x.shape[-2], x.shape[-1]
        batch = x.shape[:-2]
        if (not isinstance(f_out, Tensor) or not usable(h_post) or not usable(h_res)
                or f_out.shape != batch + (C,) or h_post.shape != batch + (n,)
                or h_res.shape != batch + (n, n) or not C):
            return None
        coef, copied = [], 0
        for h in (h_post, h_res):
            if not h.is_contiguous():
                h = h.contiguous()
                copied += h.numel() * h.element_size()
            coef.append(h)
        return n, C, batch, coef[0], coef[1], copied

    def post_operands(x, f_out, h_post, h_res, bf16_ok=False):
        """x and f_out in the computing dtype (``bf16_ok``: bfloat16 ones as they are)
        and the checked post step, or None."""
        xc, copied = streams(x, bf16_ok)
        if xc is None:
            return None
        checked = post_checked(x, f_out, h_post, h_res)
        if checked is None:
            return None
        n, C, batch, hp, hr, extra = checked
        fc, more = streams(f_out.unsqueeze(-2), bf16_ok)
        if fc is None:
            return None
        return xc, fc, copied + more + extra, n, C, batch, hp, hr

    post_bf16_kernel = lib.mhc_hc_post_bf16

    def coef_strides(h, batch, tail):
        """(token stride, the strides of the last axes) of a coefficient tensor ``h``
        of shape ``batch + tail`` whose tokens lie one stride apart (any batch of
        tokens laid out as one axis: contiguous ones, V4's comb transposed, a
        broadcast), or None."""
        st, k = h.stride(), len(batch)
        ts = need = None
        for size, s in zip(reversed(batch), reversed(st[:k])):
            if size == 1:
                continue
            if ts is None:
                ts, need = s, s * size
            elif s != need:
                return None
            else:
                need *= size
        return (math.prod(tail) if ts is None else ts), st[k:]

    def post_bf16(x, f_out, h_post, h_res):
        """bfloat16 streams and f_out: mhc_hc_post_bf16 reads and writes them as they
        are (no float32 copies), the coefficients in their own layout (V4's comb
        transposed included), or None. Written out flat: this is the latency of
        every decode step's post step."""
        shape = tuple(x.shape)   # (tuples: slicing a torch.Size makes another, ~0.2 us)
        if (len(shape) < 2 or not x.is_cpu or not x.is_contiguous() or not f_out.is_cpu
                or not f_out.is_contiguous() or not isinstance(h_post, Tensor)
                or not isinstance(h_res, Tensor) or h_post.dtype is not tdt
                or h_res.dtype is not tdt or not h_post.is_cpu or not h_res.is_cpu):
            return None
        if grad_enabled() and (x.requires_grad or f_out.requires_grad or h_post.requires_grad
                               or h_res.requires_grad):
            return None
        n, C = shape[-2], shape[-1]
        batch = shape[:-2]
        if (not 1 <= n <= MAX_STREAMS or not C or tuple(f_out.shape) != batch + (C,)
                or tuple(h_post.shape) != batch + (n,) or tuple(h_res.shape) != batch + (n, n)):
            return None
        ps, rs = coef_strides(h_post, batch, (n,)), coef_strides(h_res, batch, (n, n))
        if ps is None or rs is None or ps[1][0] != 1:
            return None
        res = empty_like(x)      # (x contiguous: ~1 us less than torch.empty(shape))
        tokens = math.prod(batch)
        if tokens and post_bf16_kernel(
                cast(u16, x.data_ptr()), n * C, cast(u16, f_out.data_ptr()), C,
                cast(ptr_type, h_post.data_ptr()), ps[0], cast(ptr_type, h_res.data_ptr()),
                rs[0], rs[1][0], rs[1][1], cast(u16, res.data_ptr()), n * C, tokens, n, C, code,
                threads):
            return None
        return res, 0

    def run_post(arrays, options, state):
        x, f_out = arrays[0], arrays[1]
        if (tdt is torch.float32 and isinstance(x, Tensor) and x.dtype is bf16
                and isinstance(f_out, Tensor) and f_out.dtype is bf16):
            done = post_bf16(*arrays)
            if done is not None:
                return done
        ops = post_operands(*arrays)
        if ops is None:
            return None
        xc, fc, copied, n, C, batch, hp, hr = ops
        res = large(batch + (n, C))
        tokens = math.prod(batch)
        if tokens and kernels.hc_post(p(xc), n * C, p(fc), C, p(hp), p(hr),
                                      p(res), n * C, tokens, n, C, code, threads):
            return None
        if res.dtype is not x.dtype:
            res = res.to(x.dtype)
        return res, copied

    post_pre_bf16 = lib.mhc_hc_post_pre_bf16

    def bf16_out(shape):
        return from_numpy(_empty(shape, np_u16)).view(bf16)

    def run_post_pre(arrays, options, state):
        x, f_out = arrays[0], arrays[1]
        both = (bf16_streams and isinstance(x, Tensor) and x.dtype is bf16
                and isinstance(f_out, Tensor) and f_out.dtype is bf16)
        ops = post_operands(*arrays[:4], both)
        if ops is None:
            return None
        xc, fc, copied, n, C, batch, hp, hr = ops
        phi, bias, alpha = arrays[4:]
        prm = pre_params(n, C, phi, bias, alpha, options["variant"] != "paper")
        if prm is None:
            return None
        tokens = math.prod(batch)
        if xc.dtype is bf16:   # mhc_hc_post_pre_bf16: x_next and h_in written in bfloat16
            kernel, nxt, h_in = post_pre_bf16, bf16_out(batch + (n, C)), bf16_out(batch + (C,))
            px, pf, pn, ph = (cast(u16, t.data_ptr()) for t in (xc, fc, nxt, h_in))
        else:
            kernel, nxt, h_in = (kernels.hc_post_pre, large(batch + (n, C)),
                                 large(batch + (C,)))
            px, pf, pn, ph = p(xc), p(fc), p(nxt), p(h_in)
        h_pre, h_post = empty(batch + (n,), dtype=tdt), empty(batch + (n,), dtype=tdt)
        h_res = empty(batch + (n, n), dtype=tdt)
        if tokens and kernel(
                px, n * C, pf, C, p(hp), p(hr), pn, n * C, tokens, n,
                C, prm[0], prm[1], prm[2], prm[3], _VARIANT[options["variant"]] | rows_flag,
                options["iterations"], options["norm_eps"], options["hc_eps"], ph,
                p(h_pre), p(h_post), p(h_res), _workspace(state), code, threads):
            return None
        if nxt.dtype is not x.dtype:
            nxt, h_in = nxt.to(x.dtype), h_in.to(x.dtype)
        return (nxt, h_in, h_pre, h_post, h_res), copied
    return {"mhc_pre": run_pre, "mhc_post": run_post, "mhc_post_pre": run_post_pre}[kernel]


# ---------------------------------------------------------------- curvature

def ot_w1(xp, cost, mu, mv, rptr, cptr, *, reg, iterations, tolerance, relax, call):
    """Entropic W1 of a ragged batch of small transport problems by
    ``mhc_ot_w1_f64`` -> ``(w (g,), iterations done (g,))``: the masses ``mu``,
    ``mv`` with offset tables ``rptr``, ``cptr`` and the problems' cost matrices one
    after the other in ``cost``; float64 and int64 NumPy arrays as the curvature
    records pass them (zero mass is padding)."""
    g = rptr.shape[0] - 1
    w = np.empty(g)
    done = np.empty(g, dtype=np.int64)
    err = ffi.new("int64_t *")
    status = lib.mhc_ot_w1_f64(
        ffi.from_buffer("double[]", cost), ffi.from_buffer("double[]", mu),
        ffi.from_buffer("double[]", mv), ffi.from_buffer("int64_t[]", rptr),
        ffi.from_buffer("int64_t[]", cptr), g, reg, iterations, tolerance, int(relax),
        ffi.from_buffer("double[]", w), ffi.cast("int64_t *", done.ctypes.data),
        resolve_isa(call.isa), call.threads, err)
    _check_transport(status, err[0])
    return w, done


def _check_transport(status, problem):
    """A transport kernel's status as the error naming the problem."""
    if status == lib.MHC_ERR_DOMAIN:
        raise DomainError(f"transport problem {problem}: masses must be finite, >= 0 and of "
                          "equal totals, costs finite where both masses are > 0",
                          argument="cost")
    if status == lib.MHC_ERR_COMPUTATION:
        raise NativeError(f"transport problem {problem}: its W1 overflows the float64 range "
                          "(masses times costs too large)")
    _check(status)


def graph_costs(xp, indptr, indices, weights, X, xptr, Y, yptr, *, call):
    """Shortest-path distances between ragged supports by ``mhc_graph_costs_f64``:
    edge ``e``'s matrix ``d(X[xptr[e]:xptr[e+1]], Y[yptr[e]:yptr[e+1]])``, all edges'
    matrices one after the other in one flat float64 array; the graph in CSR form
    (both directions stored). One bounded Dijkstra search per distinct source."""
    out = np.empty(int(np.dot(np.diff(xptr), np.diff(yptr))))
    err = ffi.new("int64_t *")
    p = [ffi.from_buffer("int64_t[]", a) for a in (indptr, indices, X, xptr, Y, yptr)]
    status = lib.mhc_graph_costs_f64(p[0], p[1], ffi.from_buffer("double[]", weights),
                                     indptr.shape[0] - 1, p[2], p[3], p[4], p[5],
                                     xptr.shape[0] - 1, ffi.from_buffer("double[]", out),
                                     call.threads, err)
    if status == lib.MHC_ERR_DOMAIN:
        raise DomainError(f"graph edge lengths must be finite and > 0; entry {err[0]} is "
                          f"{weights[err[0]]!r}", argument="graph")
    _check(status)
    return out


def point_costs(xp, points, X, xptr, Y, yptr, *, manifold, curvature, call):
    """Manifold distances between ragged supports of a point cloud by
    ``mhc_point_costs_f64``, in ``graph_costs``' layout; points outside the manifold
    give NaN."""
    out = np.empty(int(np.dot(np.diff(xptr), np.diff(yptr))))
    p = [ffi.from_buffer("int64_t[]", a) for a in (X, xptr, Y, yptr)]
    _check(lib.mhc_point_costs_f64(_MANIFOLD[manifold], ffi.from_buffer("double[]", points),
                                   points.shape[0], points.shape[1], curvature, p[0], p[1],
                                   p[2], p[3], xptr.shape[0] - 1,
                                   ffi.from_buffer("double[]", out), resolve_isa(call.isa),
                                   call.threads))
    return out


def ot_exact(xp, cost, mu, mv, rptr, cptr, *, metric, call):
    """Exact W1 of a ragged batch of small transport problems by ``mhc_ot_exact_f64``
    (a network simplex on real masses) -> w (g,); the
    arrays as for ``ot_w1``."""
    g = rptr.shape[0] - 1
    w = np.empty(g)
    err = ffi.new("int64_t *")
    status = lib.mhc_ot_exact_f64(
        ffi.from_buffer("double[]", cost), ffi.from_buffer("double[]", mu),
        ffi.from_buffer("double[]", mv), ffi.from_buffer("int64_t[]", rptr),
        ffi.from_buffer("int64_t[]", cptr), g, int(metric), ffi.from_buffer("double[]", w),
        call.threads, err)
    _check_transport(status, err[0])
    return w


def ot_exact_table(xp, table, X, Y, mu, mv, rptr, cptr, *, metric, call):
    """Exact W1 of a ragged batch of transport problems whose costs are read from one
    table of distances (N, N) by ``mhc_ot_exact_table_f64`` (each problem's costs
    gathered into a thread's buffer, no cost array) -> w (g,)."""
    g = rptr.shape[0] - 1
    w = np.empty(g)
    err = ffi.new("int64_t *")
    p = [ffi.from_buffer("int64_t[]", a) for a in (X, Y, rptr, cptr)]
    status = lib.mhc_ot_exact_table_f64(
        ffi.from_buffer("double[]", table), table.shape[0], p[0], p[1],
        ffi.from_buffer("double[]", mu), ffi.from_buffer("double[]", mv), p[2], p[3], g,
        int(metric), ffi.from_buffer("double[]", w), call.threads, err)
    _check_transport(status, err[0])
    return w


def unit_w1(xp, indptr, indices, U, V, *, alpha, call):
    """Exact W1(m_u, m_v) of the edges (U, V) of a unit-length CSR graph by
    ``mhc_unit_w1_f64`` (shared mass cancelled, costs 1..3 from adjacency and common
    neighbours, the exact solver) -> w (E,)."""
    w = np.empty(U.shape[0])
    err = ffi.new("int64_t *")
    p = [ffi.from_buffer("int64_t[]", a) for a in (indptr, indices, U, V)]
    status = lib.mhc_unit_w1_f64(p[0], p[1], indptr.shape[0] - 1, p[2], p[3], U.shape[0],
                                 alpha, ffi.from_buffer("double[]", w), call.threads, err)
    if status == lib.MHC_ERR_DOMAIN:
        raise DomainError(f"edge {err[0]} ({int(U[err[0]])}, {int(V[err[0]])}): its ends must "
                          "be adjacent, without self loops or repeated neighbours",
                          argument="graph")
    _check(status)
    return w
