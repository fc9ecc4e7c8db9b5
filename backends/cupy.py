"""The CUDA backend: the kernels of ``native/cuda/*.cu`` launched through CuPy,
for arrays on a CUDA device (CuPy arrays, PyTorch CUDA tensors, any library
that speaks DLPack).

A pure adapter, like ``native``: it receives validated arrays in the compute
dtype and plain scalars, hands them to CUDA zero-copy (``cupy.from_dlpack``),
allocates the results once with CuPy on the input's device and gives them back
in the caller's library (``xp.from_dlpack``, no copy).

- The sources are compiled with NVRTC (``cupy.RawModule``) on first use, once
  per file and device, with ``NVRTC_OPTIONS``; each kernel function is looked up
  once per device and kept; ``source(name)`` is the exact text compiled
  (the shared headers inlined), which CI also compiles with nvcc and NVRTC and
  runs on the CPU (``native/cuda/harness``). The flags, codes and limits they
  share with this module come from ``mhc_constants.h`` (``_constants.py``).
- Streams: CuPy arrays run on CuPy's current stream; PyTorch tensors on
  torch's current stream of their device (``cupy.cuda.ExternalStream``, one
  wrapper per device and stream, kept), so that the caller's ordering holds
  without any synchronisation. The only device-to-host read is the domain flag
  of the Poincare and spherical distances under ``on_domain_error="raise"``: one
  int read after the kernel (``_distance``), which waits for it. The Euclidean
  distance and ``"nan"`` / ``"clip"`` pass no flag and return once the kernel is
  queued.
- A CUDA out-of-memory is a :class:`CudaOutOfMemoryError` (a ``NativeError``
  and a ``MemoryError``); what was allocated for the call is released.

The kernels only need an *engine*: an array module that allocates (CuPy here)
and a launcher. The computing functions (``_sinkhorn`` ...) take one, so that
the tests run this very code on the CPU with NumPy and the CPU harness.
"""

import importlib.util
import math
import os
import re
import threading

import numpy as np

from ..errors import DomainError, NativeError
from ._constants import (CUDA_BLOCK, CUDA_HC_CHUNK, CUDA_SK_SCRATCH, CUDA_SK_SMALL_MAX,
                         DOM_CLIP, DOM_NAN, DOM_RAISE, EUCLIDEAN, HC_DEEPSEEK_V4,
                         HC_MAX_STREAMS, HC_PAPER, POINCARE, SK_COLS_FIRST, SK_LOGITS,
                         SOURCE_DIRS, SPHERICAL)

NAME = "cupy"

SOURCES = ("sinkhorn.cu", "distance.cu", "mhc.cu")
HEADER = "mhc_cuda.cuh"
#: the options NVRTC compiles the sources with (CuPy adds the architecture)
NVRTC_OPTIONS = ("-std=c++17",)
BLOCK = CUDA_BLOCK              # threads per block
MAX_GRID = 1 << 16              # blocks per launch (the kernels stride over the rest)
SHARED_LIMIT = 48 * 1024        # dynamic shared memory without an opt-in
_MANIFOLD = {"euclidean": EUCLIDEAN, "poincare": POINCARE, "spherical": SPHERICAL}
_MODE = {"raise": DOM_RAISE, "nan": DOM_NAN, "clip": DOM_CLIP}
_VARIANT = {"paper": HC_PAPER, "deepseek-v4": HC_DEEPSEEK_V4}
_DL_CUDA = (2, 13)              # kDLCUDA, kDLCUDAManaged


class CudaOutOfMemoryError(NativeError, MemoryError):
    """The GPU ran out of memory during a call (nothing of the call stays allocated)."""


def _source_dir():
    for d in SOURCE_DIRS:
        if os.path.isfile(os.path.join(d, HEADER)):
            return os.path.normpath(d)
    return None


def source(name):
    """The text NVRTC compiles for ``name`` (a file of SOURCES): the file with the
    headers it includes (HEADER, and mhc_constants.h in it) inlined, so that no
    include path is needed."""
    d = _source_dir()

    def inlined(file):
        with open(os.path.join(d, file)) as f:
            return re.sub(r'^#include "([^"]+)".*$', lambda m: inlined(m.group(1)), f.read(),
                          flags=re.M)
    return inlined(name)


def _probe():
    """None if CuPy imports and sees a CUDA device, else why not."""
    if _source_dir() is None:
        return "the CUDA sources (native/cuda) are not part of this installation"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'mhc_array[cuda]')"
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any driver/runtime failure is a reason
        return f"CuPy cannot use CUDA here ({type(exc).__name__}: {exc})"
    if count < 1:
        return "CuPy sees no CUDA device"
    return None


UNAVAILABLE = _probe()


def cannot_serve(x, library, kernel):
    """None if this backend can compute ``kernel`` on ``x``, else the reason."""
    if UNAVAILABLE is not None:
        return UNAVAILABLE
    if getattr(x, "requires_grad", False):
        return ("the tensor requires grad: the CUDA kernels have no autograd here "
                "(use mhc_array.torch, or detach())")
    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else None
    if dev not in _DL_CUDA:
        return f"it computes on CUDA devices, and this {library} array is not on one"
    if kernel.startswith("mhc") and x.ndim >= 2 and x.shape[-2] > HC_MAX_STREAMS:
        return f"its mHC kernels take at most {HC_MAX_STREAMS} streams; x has {x.shape[-2]}"
    if kernel == "sinkhorn_backward" and x.ndim >= 2 and \
            (BLOCK + max(x.shape[-2], x.shape[-1])) * 8 > SHARED_LIMIT:
        return ("its Sinkhorn backward takes matrices of at most "
                f"{SHARED_LIMIT // 8 - BLOCK} rows and columns")
    return None


def silent_reason(why):
    """Reasons that are a choice of the caller, not a missing fast backend."""
    return why.startswith("the tensor requires grad")


# ---------------------------------------------------------------- engines

class Engine:
    """What the kernels run with: ``xp`` allocates (CuPy, or NumPy for the CPU
    harness), ``launch(name, grid, block, args, shared_mem)`` runs a kernel
    (``grid``: the blocks, or a tuple ``(x, y)`` of them)."""

    def __init__(self, xp, launch, block=BLOCK, max_grid=MAX_GRID):
        self.xp, self.launch, self.block, self.max_grid = xp, launch, block, max_grid

    def grid(self, units):
        return max(1, min(units, self.max_grid))


_modules = {}      # (file, device) -> cupy.RawModule, compiled once per device
_engines = {}      # device -> Engine, whose launch keeps that device's kernel functions
_streams = {}      # (device, stream pointer) -> cupy.cuda.ExternalStream
STREAMS_KEPT = 64  # wrappers kept at most (torch draws its streams from a fixed pool)
_lock = threading.Lock()


def _kernel_file(name):
    """The source file that defines kernel ``name`` (``mhc_sk_*``, ``mhc_dist_*``,
    the rest of ``mhc_*`` in mhc.cu)."""
    return {"sk": "sinkhorn.cu", "dist": "distance.cu"}.get(name.split("_")[1], "mhc.cu")


def _module(cupy, fname, device):
    """``fname`` compiled for ``device`` (called with that device current)."""
    key = (fname, device)
    mod = _modules.get(key)
    if mod is None:
        with _lock:                    # two threads' first calls compile it once
            mod = _modules.get(key)
            if mod is None:
                mod = _modules[key] = cupy.RawModule(code=source(fname), options=NVRTC_OPTIONS)
    return mod


def _cupy_engine(device, cupy=None):
    """The engine of ``device``: CuPy allocates, and its launcher looks each kernel
    function up once (``RawModule.get_function`` costs about as much as a small
    launch), then calls the function it kept."""
    eng = _engines.get(device)
    if eng is None:
        if cupy is None:
            import cupy
        functions = {}

        def launch(name, grid, block, args, shared_mem):
            fn = functions.get(name)
            if fn is None:
                fn = functions[name] = _module(cupy, _kernel_file(name), device).get_function(
                    name)
            fn(grid if isinstance(grid, tuple) else (grid,), (block,), args,
               shared_mem=shared_mem)
        eng = _engines.setdefault(device, Engine(cupy, launch))
    return eng


def _suffix(dtype):
    return "_f32" if np.dtype(dtype) == np.float32 else "_f64"


_NULL = np.uint64(0)      # a NULL pointer argument


# ---------------------------------------------------------------- the calls

def _stream_for(x, cupy):
    """The stream to run on for ``x``: torch's current stream for a tensor, else
    None (CuPy's current stream)."""
    if not type(x).__module__.startswith("torch"):
        return None
    import torch  # the caller has a tensor: torch is imported already
    return _external_stream(cupy, torch.cuda.current_stream(x.device).cuda_stream,
                            x.device.index)


def _external_stream(cupy, ptr, device):
    """CuPy's view of the CUDA stream ``ptr`` of ``device``, made once per (device,
    pointer): a wrapper owns nothing, and a pointer names the same stream while that
    stream lives (torch recycles a fixed pool of them)."""
    if ptr == 0:
        return cupy.cuda.Stream.null           # torch's legacy default stream
    key = (device, ptr)
    stream = _streams.get(key)
    if stream is None:
        try:
            stream = cupy.cuda.ExternalStream(ptr, device)
        except TypeError:                      # an older CuPy without device_id
            stream = cupy.cuda.ExternalStream(ptr)
        if len(_streams) >= STREAMS_KEPT:
            _streams.clear()
        _streams[key] = stream
    return stream


def _call(x, body):
    """``body(engine, to_cupy, back)`` on x's device and stream, with CUDA
    out-of-memory reported as CudaOutOfMemoryError."""
    import cupy
    dev = x.__dlpack_device__()[1]
    eng = _cupy_engine(dev, cupy)

    def to_cupy(a):
        return a if type(a) is cupy.ndarray else cupy.from_dlpack(a)

    try:
        with cupy.cuda.Device(dev):
            stream = _stream_for(x, cupy)
            if stream is None:
                return body(eng, to_cupy)
            with stream:
                return body(eng, to_cupy)
    except cupy.cuda.memory.OutOfMemoryError as exc:
        raise CudaOutOfMemoryError(f"the cupy backend ran out of GPU memory ({exc})") from None


def _back(xp, like, res):
    """``res`` (CuPy) as an array of the caller's library, on ``like``'s device."""
    if type(like) is type(res):
        return res
    return xp.from_dlpack(res)


def _contiguous(eng, a, call):
    if a.flags.c_contiguous:
        return a
    call.copied(a.nbytes)
    return eng.xp.ascontiguousarray(a)


def _rows(eng, a, batch, inner, call):
    """``a (..., *inner)`` against ``batch``: (contiguous array, stride between
    batch entries in elements): stride 0 for one entry repeated, else the
    batch materialised (a reported copy when it had to be broadcast)."""
    size = math.prod(inner)
    own = tuple(a.shape[:a.ndim - len(inner)])
    if own != batch and all(s == 1 for s in own):
        return _contiguous(eng, a, call), 0
    if own != batch:
        a = eng.xp.broadcast_to(a, batch + tuple(inner))
        call.copied(math.prod(batch) * size * a.itemsize)
        return eng.xp.ascontiguousarray(a), size
    return _contiguous(eng, a, call), size


# ---------------------------------------------------------------- Sinkhorn

def _sinkhorn(eng, x, rs, cs, *, iterations, tau, logits, order, out, call):
    """Sinkhorn-Knopp of ``x (..., n, m)`` (an eng.xp array); ``out``: an eng.xp
    array to write (C-contiguous, x's dtype) or None. Returns the result."""
    xp = eng.xp
    shape = tuple(x.shape)
    n, m = shape[-2], shape[-1]
    batch = shape[:-2]
    count = math.prod(batch)
    res = out if out is not None else xp.empty(shape, x.dtype)
    if count == 0 or n == 0 or m == 0:
        return res
    a = _contiguous(eng, x, call)
    sfx = _suffix(x.dtype)
    common = [a, res, *_sk_args(eng, rs, cs, batch, n, m, iterations, tau, logits, order,
                                call)]
    B = eng.block
    if n * m <= CUDA_SK_SMALL_MAX:
        if (n, m) == (4, 4):                   # in registers
            eng.launch("mhc_sk_4x4" + sfx, eng.grid(-(-count // B)), B, common, 0)
        else:                                  # in a shared slab per thread
            B, shared = _small_slabs(B, n * m, 1, x.itemsize)
            eng.launch("mhc_sk_small" + sfx, eng.grid(-(-count // B)), B, common, shared)
        return res
    # shared: the reductions' scratch, then the row and column scalings
    shared = (CUDA_SK_SCRATCH * B + n + m) * 8
    ws = _NULL
    if shared > SHARED_LIMIT:                  # the scalings in global memory
        ws = xp.empty(count * (n + m), np.float64)
        shared = CUDA_SK_SCRATCH * B * 8
    eng.launch("mhc_sk_block" + sfx, eng.grid(count), B, common + [ws], shared)
    return res


def _small_slabs(B, nm, arrays, itemsize):
    """Threads per block and shared bytes of a thread-per-matrix Sinkhorn kernel
    whose ``arrays`` matrices of ``nm`` values live in a slab per thread
    (sinkhorn.cu's sk_slab_stride: nm, or nm + 1 when even)."""
    per = arrays * (nm if nm % 2 else nm + 1) * itemsize
    while B > 32 and B * per > SHARED_LIMIT:
        B //= 2
    return B, B * per


def _sk_args(eng, rs, cs, batch, n, m, iterations, tau, logits, order, call):
    """The Sinkhorn kernels' arguments after the matrices: each target (its rows and
    batch stride, or NULL and 0), the sizes, iterations, tau and the flags."""
    targets = []
    for t, k in ((rs, n), (cs, m)):
        if t is None:
            targets += [_NULL, np.int64(0)]
        else:
            tb, stride = _rows(eng, t, batch, (k,), call)
            targets += [tb, np.int64(stride)]
    flags = (SK_LOGITS if logits else 0) | (SK_COLS_FIRST if order == "cols-first" else 0)
    return [*targets, np.int64(math.prod(batch)), np.int32(n), np.int32(m),
            np.int32(iterations), np.float64(tau), np.int32(flags)]


def _sinkhorn_backward(eng, x, rs, cs, g, *, iterations, tau, logits, order, call):
    xp = eng.xp
    shape = tuple(x.shape)
    n, m = shape[-2], shape[-1]
    batch = shape[:-2]
    count = math.prod(batch)
    res = xp.empty(shape, x.dtype)
    if count == 0 or n == 0 or m == 0:
        return res
    a = _contiguous(eng, x, call)
    gb = _contiguous(eng, g, call)
    args = [a, gb, res, *_sk_args(eng, rs, cs, batch, n, m, iterations, tau, logits, order,
                                  call)]
    B = eng.block
    if n * m <= CUDA_SK_SMALL_MAX:
        # a thread per matrix; the steps' denominators in x's dtype, slot s of
        # matrix b at ws[s * count + b] (consecutive threads, consecutive addresses)
        ws = xp.empty(count * iterations * (n + m), x.dtype) if iterations else _NULL
        if (n, m) == (4, 4):                   # in registers
            name, shared = "mhc_sk_4x4_bwd", 0
        else:                                  # the matrix and its gradient in a slab
            name = "mhc_sk_small_bwd"
            B, shared = _small_slabs(B, n * m, 2, x.itemsize)
        eng.launch(name + _suffix(x.dtype), eng.grid(-(-count // B)), B, args + [ws], shared)
        return res
    # shared: the reductions' scratch, then a line's accumulators -- in the
    # workspace, after the matrix's other entries, where they do not fit
    per = n * m + (2 * iterations + 1) * (n + m)
    shared = (CUDA_SK_SCRATCH * B + max(n, m)) * 8
    acc_global = shared > SHARED_LIMIT
    if acc_global:
        per += max(n, m)
        shared = CUDA_SK_SCRATCH * B * 8
    ws = xp.empty(count * per, np.float64)
    eng.launch("mhc_sk_bwd" + _suffix(x.dtype), eng.grid(count), B,
               args + [ws, np.int32(acc_global)], shared)
    return res


def sinkhorn(xp, x, row_sums, col_sums, *, iterations, tau, logits, order, out, call):
    def body(eng, cp):
        a = cp(x)
        dst = None
        if out is not None:
            o = cp(out)
            same = o.data.ptr == a.data.ptr and o.strides == a.strides
            if o.flags.c_contiguous and o.dtype == a.dtype and \
                    (same or not eng.xp.may_share_memory(o, a)):
                dst = o
        res = _sinkhorn(eng, a, None if row_sums is None else cp(row_sums),
                        None if col_sums is None else cp(col_sums), iterations=iterations,
                        tau=tau, logits=logits, order=order, out=dst, call=call)
        if dst is not None:
            return out
        return _back(xp, x, res)
    return _call(x, body)


def sinkhorn_backward(xp, x, row_sums, col_sums, grad, *, iterations, tau, logits, order, call):
    def body(eng, cp):
        res = _sinkhorn_backward(eng, cp(x), None if row_sums is None else cp(row_sums),
                                 None if col_sums is None else cp(col_sums), cp(grad),
                                 iterations=iterations, tau=tau, logits=logits, order=order,
                                 call=call)
        return _back(xp, x, res)
    return _call(x, body)


# ---------------------------------------------------------------- distances

#: a wide row's segment grows (warps of the block reading one row together)
#: while the launch has fewer threads than this: about half of what an H100
#: keeps resident (132 SMs x 2048), so that few long rows still fill the GPU
DIST_FILL_THREADS = 1 << 17
#: the values a distance reduction exchanges at most per thread (distance.cu's
#: DIST_SCRATCH: the spherical sums of double input, three double-double sums and
#: two maxima); a segment of several warps exchanges them through shared memory,
#: one slot per warp
DIST_SCRATCH = 8


def _lanes(eng, rows, d):
    """The lanes that read one row of d terms (distance.cu): a power of two up to
    a warp, about d / 4 (every lane sums >= 4 terms), so that short rows share a
    warp; for long rows too few to fill the GPU (rows * lanes < DIST_FILL_THREADS)
    up to the block, as long as every lane keeps >= 64 terms."""
    B = eng.block
    L = 1
    while L < min(32, B) and L * 4 < d:
        L <<= 1
    while L < B and L * 2 * 64 <= d and rows * L < DIST_FILL_THREADS:
        L <<= 1
    return L


def _distance(eng, manifold, a, a_rs, b, b_rs, rows, d, pair_m, out, curvature, mode):
    """Run the distance kernel; returns True when a point is outside the domain
    under mode "raise" (out then holds NaN there). Only "raise" (Poincare and
    spherical) has a flag to read back: one device-to-host read after the
    launch; every other call queues the kernel and returns without waiting."""
    xp = eng.xp
    flag = _NULL
    if manifold != "euclidean" and mode == "raise":
        flag = xp.zeros(1, np.int32)
    B = eng.block
    L = _lanes(eng, rows, d)
    shared = DIST_SCRATCH * (B // 32) * 8 if L > 32 else 0
    eng.launch("mhc_dist" + _suffix(a.dtype), eng.grid(-(-rows // (B // L))), B,
               [np.int32(_MANIFOLD[manifold]), a, np.int64(a_rs), b, np.int64(b_rs), out,
                np.int64(rows), np.int64(d), np.int64(pair_m), np.float64(curvature),
                np.int32(_MODE[mode]), flag, np.int32(L)], shared)
    return flag is not _NULL and bool(int(flag[0]))


def _raise_domain(xp, manifold, named, curvature):
    """The DomainError naming the first point outside the domain, the argument
    checked first (as the array_api backend does)."""
    for name, p in named:
        if manifold == "poincare":
            bad = curvature * xp.sum(xp.square(p.astype(np.float64)), axis=-1) >= 1
        else:
            bad = xp.all(p == 0, axis=-1)
        if bool(bad.any()):
            raise DomainError.at(name, tuple(p.shape[:-1]), int(xp.argmax(bad.ravel())),
                                 DomainError.OUTSIDE[manifold])
    raise NativeError("the CUDA kernel reported a domain error that the check cannot find")


def _distance_call(eng, a, b, manifold, curvature, on_domain_error, call):
    xp = eng.xp
    d = a.shape[-1]
    sa, sb = tuple(a.shape[:-1]), tuple(b.shape[:-1])
    batch = sa if (sa == sb or not sb) else tuple(np.broadcast_shapes(sa, sb))
    res = xp.empty(batch, a.dtype)
    rows = math.prod(batch)
    if rows:
        pa, a_rs = _rows(eng, a, batch, (d,), call)
        pb, b_rs = _rows(eng, b, batch, (d,), call)
        if _distance(eng, manifold, pa, a_rs, pb, b_rs, rows, d, 0, res, curvature,
                     on_domain_error):
            _raise_domain(xp, manifold, (("x", a), ("c", b)), curvature)
    return res


def _pairwise_call(eng, a, b, manifold, curvature, on_domain_error, call):
    xp = eng.xp
    (N, d), M = a.shape, b.shape[0]
    res = xp.empty((N, M), a.dtype)
    if N and M:
        pa, pb = _contiguous(eng, a, call), _contiguous(eng, b, call)
        if _distance(eng, manifold, pa, d, pb, d, N * M, d, M, res, curvature,
                     on_domain_error):
            _raise_domain(xp, manifold, (("x", a), ("y", b)), curvature)
    return res


def distance(xp, x, c, *, manifold, curvature, on_domain_error, call):
    def body(eng, cp):
        return _back(xp, x, _distance_call(eng, cp(x), cp(c), manifold, curvature,
                                           on_domain_error, call))
    return _call(x, body)


def pairwise(xp, x, y, *, manifold, curvature, on_domain_error, call):
    def body(eng, cp):
        return _back(xp, x, _pairwise_call(eng, cp(x), cp(y), manifold, curvature,
                                           on_domain_error, call))
    return _call(x, body)


# ---------------------------------------------------------------- the mHC connection

#: the CTAs a launch of the connection's forward aims for (two per SM of an
#: H100's 132) when its tokens alone give fewer: the columns are split further
GRID_TARGET = 264


def _hc_pad(v):
    """mhc.cu's hc_pad: v rounded up to a multiple of 4 whose quarter is odd."""
    v = -(-v // 4) * 4
    return v + 4 if (v // 4) % 2 == 0 else v


def _split(eng, units, chunk, blocks):
    """Columns per CTA (a multiple of ``chunk``) and the CTAs over ``units``
    columns (the grid's y, at most 65535) for a grid that already has ``blocks``
    CTAs along the tokens."""
    want = max(1, min(-(-units // chunk), -(-GRID_TARGET // blocks), eng.max_grid, 65535))
    per = -(-(-(-units // want)) // chunk) * chunk
    return per, -(-units // per)


def _project(eng, x, w, variant, post, call):
    """mhc.cu's mhc_proj over x (tokens, n, C): the partials ``(G, tokens, K+1)``
    of the projection and the sums of squares; with ``post = (f, f_ts, hp, hp_ts,
    hr, hr_ts, xo)`` x_next = post(x) is written to xo and projected."""
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    tokens = math.prod(x.shape[:-2])
    K = (2 + n) * n
    KG = -(-K // 8)
    B = eng.block
    S = min(16, B)                              # slices per tile: lanes of one warp
    TG = max(1, min((B // S) // KG, -(-tokens // 4)))   # 4-token groups per tile
    TM, XS, KS, item = 4 * TG, _hc_pad(4 * TG), _hc_pad(8 * KG), x.itemsize
    TC = 32
    while TC > 1 and n * TC * (XS + KS + (TM if post else 0)) * item > SHARED_LIMIT:
        TC //= 2
    shared = n * TC * (XS + KS + (TM if post else 0)) * item
    gx = eng.grid(-(-tokens // TM))
    Cg, G = _split(eng, C, TC, gx)
    part = xp.empty((G, tokens, K + 1), x.dtype)
    f, f_ts, hp, hp_ts, hr, hr_ts, xo = post or (_NULL, np.int64(0), _NULL, np.int64(0),
                                                 _NULL, np.int64(0), _NULL)
    eng.launch("mhc_proj" + _suffix(x.dtype), (gx, G), B,
               [x, f, np.int64(f_ts), hp, np.int64(hp_ts), hr, np.int64(hr_ts), xo,
                np.int64(tokens), np.int32(n), np.int32(C), _contiguous(eng, w, call),
                np.int32(_VARIANT[variant]), np.int32(TG), np.int32(S), np.int32(TC),
                np.int32(Cg), part], shared)
    return part


def _mix(eng, x, part, b, al, *, iterations, norm_eps, variant, hc_eps, call):
    """mhc.cu's mhc_mix over x (tokens, n, C) and the projection's partials:
    ``(h_in, h_pre, h_post, h_res)``."""
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    tokens = math.prod(batch)
    K, dt = (2 + n) * n, x.dtype
    outs = (xp.empty(batch + (C,), dt), xp.empty(batch + (n,), dt),
            xp.empty(batch + (n,), dt), xp.empty(batch + (n, n), dt))
    four = n == 4                               # the coefficients in registers
    TM2 = min(32 if four else 8, eng.block)
    slab = TM2 * (K + 1) + (0 if four else TM2 * (2 * n + n * n))   # mhc.cu's hc_mix
    gx = eng.grid(-(-tokens // TM2))
    Cg2, G2 = _split(eng, C, 32, gx)
    eng.launch(("mhc_mix4" if four else "mhc_mix") + _suffix(dt), (gx, G2), eng.block,
               [x, np.int64(tokens), np.int32(n), np.int32(C), part, np.int32(part.shape[0]),
                _contiguous(eng, b, call), _contiguous(eng, al, call),
                np.int32(_VARIANT[variant]), np.int32(iterations), np.float64(norm_eps),
                np.float64(hc_eps), np.int32(TM2), np.int32(Cg2), *outs],
               (TM2 * n + slab) * x.itemsize)
    return outs


def _mhc_pre(eng, x, w, b, al, *, iterations, norm_eps, variant, hc_eps, call):
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    dt = x.dtype
    if not math.prod(batch):
        return (xp.empty(batch + (C,), dt), xp.empty(batch + (n,), dt),
                xp.empty(batch + (n,), dt), xp.empty(batch + (n, n), dt))
    xc = _contiguous(eng, x, call)
    part = _project(eng, xc, w, variant, None, call)
    return _mix(eng, xc, part, b, al, iterations=iterations, norm_eps=norm_eps,
                variant=variant, hc_eps=hc_eps, call=call)


def _mhc_post_pre(eng, x, f, hp, hr, w, b, al, *, iterations, norm_eps, variant, hc_eps,
                  out, call):
    """The layer boundary: x_next (into ``out`` when given, which may be x) projected
    as it is written, then the coefficients and h_in from x_next."""
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    dt = x.dtype
    res = out if out is not None else xp.empty(tuple(x.shape), dt)
    if not math.prod(batch):
        return (res, xp.empty(batch + (C,), dt), xp.empty(batch + (n,), dt),
                xp.empty(batch + (n,), dt), xp.empty(batch + (n, n), dt))
    fb, f_ts = _rows(eng, f, batch, (C,), call)
    pb, p_ts = _rows(eng, hp, batch, (n,), call)
    rb, r_ts = _rows(eng, hr, batch, (n, n), call)
    part = _project(eng, _contiguous(eng, x, call), w, variant,
                    (fb, f_ts, pb, p_ts, rb, r_ts, res), call)
    return (res, *_mix(eng, res, part, b, al, iterations=iterations, norm_eps=norm_eps,
                       variant=variant, hc_eps=hc_eps, call=call))


def _mhc_post(eng, x, f, hp, hr, *, out, call):
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    tokens = math.prod(batch)
    res = out if out is not None else xp.empty(tuple(x.shape), x.dtype)
    if tokens:
        fb, f_ts = _rows(eng, f, batch, (C,), call)
        pb, p_ts = _rows(eng, hp, batch, (n,), call)
        rb, r_ts = _rows(eng, hr, batch, (n, n), call)
        B = eng.block
        four = n == 4                          # x's column in registers, else shared
        eng.launch(("mhc_post4" if four else "mhc_post") + _suffix(x.dtype),
                   eng.grid(-(-(tokens * C) // B)), B,
                   [_contiguous(eng, x, call), fb, np.int64(f_ts), pb, np.int64(p_ts), rb,
                    np.int64(r_ts), res, np.int64(tokens), np.int32(n), np.int32(C)],
                   0 if four else B * n * x.itemsize)
    return res


COEF_BLOCK = 64                 # threads per block of the per-token coefficient kernel


def _mhc_pre_backward(eng, x, w, b, al, g_in, g_pre, g_post, g_res, *, iterations, norm_eps,
                      variant, hc_eps, call):
    """The gradients of mhc_pre (upstream gradients None: zero) as
    ``backends/native.py``'s ``mhc_pre_backward``: ``(g_x, gz, y, gp, gw)``, the
    first four per token. The forward's projection kernel for the sums (and, with
    g_in, a warp per stream for x[i] . g_in), the coefficients' gradients by a
    thread per token, the streams' gradient by a thread per value; in x's dtype;
    the projection's gradient ``gw = gp^T v`` (K, n*C) by the library's matmul."""
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    tokens = math.prod(batch)
    K = (2 + n) * n
    dt = x.dtype
    g_x = xp.empty(tuple(x.shape), dt)
    gz, y, gp = (xp.empty(batch + (K,), dt) for _ in range(3))
    if not tokens:
        return g_x, gz, y, gp, xp.zeros((K, n * C), dt)
    sfx = _suffix(dt)
    code = np.int32(_VARIANT[variant])
    xc, wc = _contiguous(eng, x, call), _contiguous(eng, w, call)
    gi, gpre, gpost, gres = (_NULL if g is None else _contiguous(eng, g, call)
                             for g in (g_in, g_pre, g_post, g_res))
    B = eng.block
    part = _project(eng, xc, wc, variant, None, call)
    dots = _NULL
    if g_in is not None:
        dots = xp.empty(tokens * n, dt)
        eng.launch("mhc_pre_bwd_dots" + sfx, eng.grid(-(-(tokens * n) // (B // 32))), B,
                   [xc, gi, np.int64(tokens), np.int32(n), np.int32(C), dots], 0)
    # the Sinkhorn steps whose denominators are kept (V4's first is the column step)
    steps = max(iterations - (variant != "paper"), 0) if g_res is not None else 0
    ws = xp.empty(tokens * steps * 2 * n, dt) if steps else _NULL
    aux = xp.empty(tokens * (1 + n + K), dt)
    if n == 4:                                  # the arrays in registers
        coef, cb, shared = "mhc_pre_bwd_coef4", min(B, COEF_BLOCK), 0
    else:                                       # in a shared slab per thread
        slab = (K + 1 + 3 * n * n + n) * x.itemsize    # mhc.cu's hc_bwd_slab
        cb = min(B, COEF_BLOCK)
        while cb > 1 and cb * slab > SHARED_LIMIT:
            cb //= 2
        coef, shared = "mhc_pre_bwd_coef", cb * slab
    eng.launch(coef + sfx, eng.grid(-(-tokens // cb)), cb,
               [part, np.int32(part.shape[0]), dots, np.int64(tokens), np.int32(n),
                np.int32(C), _contiguous(eng, b, call), _contiguous(eng, al, call), code,
                np.int32(iterations), np.float64(norm_eps), np.float64(hc_eps), gpre, gpost,
                gres, gz, y, gp, aux, ws], shared)
    # g_x tiled over 4 tokens x LC stream values (mhc.cu's hc_pre_bwd_gx): LC
    # values of w per CTA, a launch of about GRID_TARGET CTAs
    L, KS = n * C, K | 1
    LC = min(B * 4, -(-L // 32) * 32)
    while LC > 1 and (LC * KS + 4 * K + 4 + 4 * n) * x.itemsize > SHARED_LIMIT:
        LC //= 2
    gy = min(-(-L // LC), 65535, eng.max_grid)
    gx = min(eng.grid(-(-tokens // 4)), max(1, GRID_TARGET // gy))   # many tiles per CTA
    eng.launch("mhc_pre_bwd_gx" + sfx, (gx, gy), B,
               [xc, np.int64(tokens), np.int32(n), np.int32(C), wc, code, gi, aux,
                np.int32(LC), g_x], (LC * KS + 4 * K + 4 + 4 * n) * x.itemsize)
    gw = xp.matmul(gp.reshape(tokens, K).T, xc.reshape(tokens, n * C))
    return g_x, gz, y, gp, gw


def _mhc_post_backward(eng, x, f, hp, hr, grad, *, call):
    """The gradients of mhc_post: ``(g_x, g_f, g_post, g_res)``, the last three per
    token of x's batch (f_out, h_post, h_res broadcast with token stride 0)."""
    xp = eng.xp
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    tokens = math.prod(batch)
    dt = x.dtype
    outs = (xp.empty(tuple(x.shape), dt), xp.empty(batch + (C,), dt),
            xp.empty(batch + (n,), dt), xp.empty(batch + (n, n), dt))
    if tokens:
        fb, f_ts = _rows(eng, f, batch, (C,), call)
        pb, p_ts = _rows(eng, hp, batch, (n,), call)
        rb, r_ts = _rows(eng, hr, batch, (n, n), call)
        B = eng.block
        eng.launch("mhc_post_bwd" + _suffix(dt), eng.grid(tokens), B,
                   [_contiguous(eng, x, call), fb, np.int64(f_ts), pb, np.int64(p_ts), rb,
                    np.int64(r_ts), _contiguous(eng, grad, call), np.int64(tokens),
                    np.int32(n), np.int32(C), *outs], B * CUDA_HC_CHUNK * 8)
    return outs


def mhc_pre(xp, x, phi, bias, alpha, *, iterations, norm_eps, variant, hc_eps, call):
    def body(eng, cp):
        outs = _mhc_pre(eng, cp(x), cp(phi), cp(bias), cp(alpha), iterations=iterations,
                        norm_eps=norm_eps, variant=variant, hc_eps=hc_eps, call=call)
        return tuple(_back(xp, x, r) for r in outs)
    return _call(x, body)


def _post_out(eng, cp, out, a):
    """``out`` as the post step's destination when the kernel may write it directly
    (C-contiguous, a's dtype, a itself or not overlapping it), else None."""
    if out is None:
        return None
    o = cp(out)
    if o.flags.c_contiguous and a.flags.c_contiguous and o.dtype == a.dtype and \
            (o.data.ptr == a.data.ptr or not eng.xp.may_share_memory(o, a)):
        return o
    return None


def mhc_post(xp, x, f_out, h_post, h_res, *, out, call):
    def body(eng, cp):
        a = cp(x)
        dst = _post_out(eng, cp, out, a)
        res = _mhc_post(eng, a, cp(f_out), cp(h_post), cp(h_res), out=dst, call=call)
        return out if dst is not None else _back(xp, x, res)
    return _call(x, body)


def mhc_post_pre(xp, x, f_out, h_post, h_res, phi, bias, alpha, *, iterations, norm_eps,
                 variant, hc_eps, out, call):
    def body(eng, cp):
        a = cp(x)
        dst = _post_out(eng, cp, out, a)
        res = _mhc_post_pre(eng, a, cp(f_out), cp(h_post), cp(h_res), cp(phi), cp(bias),
                            cp(alpha), iterations=iterations, norm_eps=norm_eps,
                            variant=variant, hc_eps=hc_eps, out=dst, call=call)
        nxt = out if dst is not None else _back(xp, x, res[0])
        return (nxt, *(_back(xp, x, r) for r in res[1:]))
    return _call(x, body)


def mhc_pre_backward(xp, x, phi, bias, alpha, g_in, g_pre, g_post, g_res, *, iterations,
                     norm_eps, variant, hc_eps, call):
    def body(eng, cp):
        def opt(g):
            return None if g is None else cp(g)
        outs = _mhc_pre_backward(eng, cp(x), cp(phi), cp(bias), cp(alpha), opt(g_in),
                                 opt(g_pre), opt(g_post), opt(g_res), iterations=iterations,
                                 norm_eps=norm_eps, variant=variant, hc_eps=hc_eps, call=call)
        return tuple(_back(xp, x, r) for r in outs)
    return _call(x, body)


def mhc_post_backward(xp, x, f_out, h_post, h_res, grad, *, call):
    def body(eng, cp):
        outs = _mhc_post_backward(eng, cp(x), cp(f_out), cp(h_post), cp(h_res), cp(grad),
                                  call=call)
        return tuple(_back(xp, x, r) for r in outs)
    return _call(x, body)
