"""The CUDA kernels of native/cuda/ executed on the CPU (no GPU needed).

native/cuda/harness/ compiles the very .cu sources as C++ (the CUDA built-ins
defined for g++: one OS thread per CUDA thread, a std::barrier for
__syncthreads, the grid's blocks in turn). The cupy backend's computing
functions (backends/cupy.py: ``_sinkhorn``, ``_distance_call``, ...) run
unchanged on an engine made of NumPy (allocation) and this harness (launch),
so the launch code -- kernel choice, argument lists, grid and shared-memory
sizes -- is exercised too. Results are compared with the float64 references
of tests/reference.py at the tolerances of the native tests; small blocks and
grids make the kernels' grid-stride loops and segmented reductions take every
path they take on a GPU; every family also runs at the GPU's block size (the
distance tests all run at both). The harness fails a launch that writes shared
memory past its allocation (a canary), and a ThreadSanitizer build of it checks that the threads share memory only
across barriers (and reports the races of a barrier broken on purpose).
"""

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import reference as ref
from conftest import DIST_TOL, KERNEL_RE, SINK_TOL, rng_for

from mhc_array.backends import cupy as cb
from mhc_array.errors import DomainError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = os.path.join(ROOT, "native", "cuda")
HARNESS = os.path.join(CUDA, "harness")
MHC_TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


#: extra compiler flags for the harness: test_harness_under_thread_sanitizer runs
#: tests of this file again in a process with ThreadSanitizer loaded, the harness
#: built with -fsanitize=thread
TSAN_FLAGS = "MHC_HARNESS_CXXFLAGS"


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed: the CUDA kernels cannot be run on the CPU")
    out = str(tmp_path_factory.mktemp("cuda_cpu") / "libmhc_cuda_cpu.so")
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-Wall", "-Werror",
           "-Wno-unused-function", "-Wno-unknown-pragmas", "-I", CUDA, "-include",
           os.path.join(HARNESS, "cuda_cpu.h"),
           os.path.join(HARNESS, "harness.cpp"), "-o", out, "-pthread",
           *os.environ.get(TSAN_FLAGS, "").split()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lib = ctypes.CDLL(out)
    lib.mhc_harness_launch.restype = ctypes.c_int
    lib.mhc_harness_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                       ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_void_p)]
    lib.mhc_harness_launch2.restype = ctypes.c_int
    lib.mhc_harness_launch2.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                        ctypes.c_uint, ctypes.c_ulonglong,
                                        ctypes.POINTER(ctypes.c_void_p)]
    lib.mhc_harness_kernels.restype = ctypes.c_char_p
    return lib


_CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64,
           np.float64: ctypes.c_double}


class _PoisonedNumpy:
    """NumPy whose ``empty`` fills float arrays with NaN and keeps them in
    ``allocated``: a result or workspace entry a kernel should write and does not
    stays NaN, and a test can read the workspaces' layout."""

    def __init__(self):
        self.allocated = []

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=np.float64):
        a = np.empty(shape, dtype)
        if a.dtype.kind == "f":
            a.fill(np.nan)
        self.allocated.append(a)
        return a


def engine(lib, block=32, max_grid=5, poison=False):
    """An Engine of the cupy backend that runs the kernels on the CPU."""
    launches = []

    def launch(name, grid, blk, args, shared_mem):
        assert shared_mem <= cb.SHARED_LIMIT, (name, shared_mem)
        gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
        assert blk & (blk - 1) == 0 and 1 <= gx <= max_grid and 1 <= gy <= max_grid
        held = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, name
                held.append(ctypes.c_void_p(a.ctypes.data))
            else:
                held.append(_CTYPES[type(a)](a))   # exactly the kernel's scalar types
        ptrs = (ctypes.c_void_p * len(held))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
                                               for h in held])
        rc = lib.mhc_harness_launch2(name.encode(), gx, gy, blk, shared_mem, ptrs)
        assert rc == 0, (name, rc)
        launches.append(name)

    eng = cb.Engine(_PoisonedNumpy() if poison else np, launch, block=block,
                    max_grid=max_grid)
    eng.launches = launches
    return eng


class Call:
    def __init__(self):
        self.bytes = 0

    def copied(self, nbytes):
        self.bytes += nbytes


def test_every_kernel_is_in_the_harness(harness):
    """Every extern "C" __global__ of the sources can be launched on the CPU."""
    import re
    names = set()
    for f in cb.SOURCES:
        text = open(os.path.join(CUDA, f)).read()
        for base in re.findall(KERNEL_RE, text):
            names |= {base + "_f32", base + "_f64"}
    assert len(names) == 34
    listed = set(harness.mhc_harness_kernels().decode().split())
    assert names == {k for k in listed if not k.startswith("mhc_harness_")}


@pytest.mark.parametrize("block,grid", [(32, 1), (64, 3)])
def test_warp_shuffles(harness, block, grid):
    """The harness's warp shuffles give what CUDA's do: an xor butterfly sums the
    warp in every lane, shuffles down sum it into lane 0, a broadcast reads lane 0;
    each warp of a block on its own."""
    x = rng_for("cuda-shfl", block).integers(-1000, 1000, grid * block).astype(np.float64)
    out = np.full((grid * block, 3), np.nan)
    assert _launch_raw(harness, "mhc_harness_shfl_check", grid, block, 0, [x, out]) == 0
    warps = x.reshape(-1, 32)
    np.testing.assert_array_equal(out[:, 0].reshape(-1, 32),
                                  np.repeat(warps.sum(1)[:, None], 32, 1))
    np.testing.assert_array_equal(out[::32, 1], warps.sum(1))
    np.testing.assert_array_equal(out[:, 2].reshape(-1, 32),
                                  np.repeat(warps[:, :1], 32, 1))


# ---------------------------------------------------------------- Sinkhorn

SK_SHAPES = [(7, 4, 4), (5, 3, 5), (1, 1, 1), (3, 12, 10), (2, 1, 70), (2, 9, 2)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("shape", SK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sinkhorn(harness, shape, logits, order, dtype):
    rng = rng_for("cuda-sk", shape, logits, order, dtype)
    x = (rng.standard_normal(shape) * 2 if logits else rng.uniform(0, 1, shape)).astype(dtype)
    eng = engine(harness, max_grid=2)
    got = cb._sinkhorn(eng, x, None, None, iterations=20, tau=0.0, logits=logits, order=order,
                       out=None, call=Call())
    want = ref.sinkhorn(x, iterations=20, logits=logits, order=order)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got, want, **SINK_TOL[dtype])
    n, m = shape[1:]
    kind = "4x4" if (n, m) == (4, 4) else "small" if n * m <= 64 else "block"
    assert eng.launches == [f"mhc_sk_{kind}_{dtype[0]}{dtype[-2:]}"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(6, 3, 4), (3, 11, 13)], ids=["small", "block"])
def test_sinkhorn_targets_tau_zero_lines_and_nan(harness, shape, dtype):
    """Targets per matrix and broadcast, tau, zero rows/columns that stay 0, a NaN
    matrix that leaves the others untouched, iterations 0, out= x in place."""
    rng = rng_for("cuda-sk-edge", shape, dtype)
    b, n, m = shape
    x = rng.uniform(0, 1, shape)
    x[1, 0, :] = 0                       # a zero row
    x[2, :, 1] = 0                       # a zero column
    x[0, 1, 2] = np.nan                  # matrix 0 is NaN, the others are not
    x = x.astype(dtype)
    rs = rng.uniform(0.5, 2, (b, n))
    cs = rng.uniform(0.5, 2, (1, m))
    cs = cs / cs.sum() * rs.sum(-1, keepdims=True)       # equal totals per matrix
    rs, cs = rs.astype(dtype), np.ascontiguousarray(cs).astype(dtype)
    for order in ("rows-first", "cols-first"):
        for tau in (0.0, 0.3):
            eng = engine(harness)
            got = cb._sinkhorn(eng, x, rs, cs, iterations=7, tau=tau, logits=False,
                               order=order, out=None, call=Call())
            want = ref.sinkhorn(x, iterations=7, tau=tau, order=order, row_sums=rs,
                                col_sums=cs)
            assert np.isnan(got[0]).all()
            np.testing.assert_allclose(got[1:], want[1:], **SINK_TOL[dtype])
            assert np.all(got[1, 0, :] == 0) and np.all(got[2, :, 1] == 0)
    one = rs[:1, :]                      # one target vector for every matrix (stride 0)
    ones = np.full(m, one.sum() / m, dtype)
    got = cb._sinkhorn(engine(harness), x, one, ones, iterations=3, tau=0.0, logits=False,
                       order="rows-first", out=None, call=Call())
    want = ref.sinkhorn(x, iterations=3, row_sums=one, col_sums=ones)
    np.testing.assert_allclose(got[1:], want[1:], **SINK_TOL[dtype])
    y = x[1:].copy()
    got = cb._sinkhorn(engine(harness), y, None, None, iterations=0, tau=0.0, logits=True,
                       order="rows-first", out=None, call=Call())
    np.testing.assert_allclose(got, ref.sinkhorn(y, iterations=0, logits=True),
                               **SINK_TOL[dtype])
    want = ref.sinkhorn(y, iterations=5)
    got = cb._sinkhorn(engine(harness), y, None, None, iterations=5, tau=0.0, logits=False,
                       order="rows-first", out=y, call=Call())
    assert got is y
    np.testing.assert_allclose(y, want, **SINK_TOL[dtype])


def test_sinkhorn_scalings_in_global_memory(harness, monkeypatch):
    """Matrices whose scaling vectors (forward) or line accumulators (backward) do
    not fit in shared memory keep them in a workspace: the same results, and the
    launches stay within the (lowered) limit."""
    monkeypatch.setattr(cb, "SHARED_LIMIT", (cb.CUDA_SK_SCRATCH * 32 + 16) * 8)
    rng = rng_for("cuda-sk-ws")
    x = rng.uniform(0, 1, (3, 20, 30))
    for order in ("rows-first", "cols-first"):
        for logits in (False, True):
            got = cb._sinkhorn(engine(harness), x, None, None, iterations=10, tau=0.1,
                               logits=logits, order=order, out=None, call=Call())
            want = ref.sinkhorn(x, iterations=10, tau=0.1, logits=logits, order=order)
            np.testing.assert_allclose(got, want, **SINK_TOL["float64"])
    x, up = x[:2, :9, :21], rng.standard_normal((2, 9, 21))
    kw = dict(iterations=3, tau=0.05, logits=True, order="cols-first")
    got = cb._sinkhorn_backward(engine(harness), x, None, None, up, call=Call(), **kw)
    np.testing.assert_allclose(got, _numeric_grad(x, up, **kw), rtol=1e-6, atol=1e-8)


def _launch_raw(lib, name, grid, block, shared, args):
    held = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else _CTYPES[type(a)](a)
            for a in args]
    ptrs = (ctypes.c_void_p * len(held))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
                                           for h in held])
    return lib.mhc_harness_launch(name.encode(), grid, block, shared, ptrs)


@pytest.mark.parametrize("shared_doubles", [32, 2 * 32 + 22])
def test_harness_catches_shared_memory_written_past_its_allocation(harness, shared_doubles):
    """The harness's canary: the block Sinkhorn from logits reduces three values per
    thread (CUDA_SK_SCRATCH); launched with less shared memory than that needs (the
    allocation the launches once made: the scratch of one value per thread, or 2B
    plus the scalings), the launch reports the overflow (-4) instead of passing."""
    B, n, m = 32, 9, 13
    x = rng_for("cuda-canary").standard_normal((1, n, m))
    out = np.empty_like(x)
    args = [x, out, cb._NULL, np.int64(0), cb._NULL, np.int64(0), np.int64(1), np.int32(n),
            np.int32(m), np.int32(2), np.float64(0.0), np.int32(cb.SK_LOGITS), cb._NULL]
    assert _launch_raw(harness, "mhc_sk_block_f64", 1, B, shared_doubles * 8, args) == -4
    need = (cb.CUDA_SK_SCRATCH * B + n + m) * 8
    assert _launch_raw(harness, "mhc_sk_block_f64", 1, B, need, args) == 0
    np.testing.assert_allclose(out, ref.sinkhorn(x, iterations=2, logits=True),
                               **SINK_TOL["float64"])


_numeric_grad = ref.sinkhorn_grad_numeric


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 4, 4), (1, 9, 11)], ids=str)
def test_sinkhorn_backward(harness, shape, order, logits):
    rng = rng_for("cuda-sk-bwd", shape, order, logits)
    x = rng.standard_normal(shape) if logits else rng.uniform(0.2, 1.0, shape)
    up = rng.standard_normal(shape)
    n, m = shape[1:]
    rs = rng.uniform(0.5, 2, n)
    cs = np.full(m, rs.sum() / m)
    kw = dict(iterations=4, tau=0.05, logits=logits, order=order, row_sums=rs, col_sums=cs)
    want = _numeric_grad(x, up, **kw)
    eng = engine(harness)
    got = cb._sinkhorn_backward(eng, x, rs, cs, up, iterations=4, tau=0.05, logits=logits,
                                order=order, call=Call())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    kind = "4x4_bwd" if (n, m) == (4, 4) else "small_bwd" if n * m <= 64 else "bwd"
    assert eng.launches == [f"mhc_sk_{kind}_f64"]
    g32 = cb._sinkhorn_backward(engine(harness), x.astype(np.float32), rs.astype(np.float32),
                                cs.astype(np.float32), up.astype(np.float32), iterations=4,
                                tau=0.05, logits=logits, order=order, call=Call())
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 25)], ids=["thread", "block"])
def test_sinkhorn_backward_default_targets_and_zero_lines(harness, shape):
    rng = rng_for("cuda-sk-bwd0", shape)
    x = rng.uniform(0.2, 1.0, shape)
    x[0, 1, :] = 0                                   # a zero row: its gradient is 0
    up = rng.standard_normal(x.shape)
    kw = dict(iterations=3, tau=0.0, logits=False, order="rows-first")
    got = cb._sinkhorn_backward(engine(harness), x, None, None, up, call=Call(), **kw)
    want = _numeric_grad(x, up, **kw)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-8)
    assert np.all(got[0, 1] == 0)


def _array_api_sk_grad(x, up, dtype=np.float64, **kw):
    """The array_api backend's Sinkhorn backward in NumPy float64 (every iterate kept:
    an independent algorithm) -- the reference where finite differences are too slow."""
    from mhc_array.backends import array_api as aa
    rs, cs = kw.pop("row_sums", None), kw.pop("col_sums", None)
    return aa.sinkhorn_backward(np, x.astype(np.float64), rs, cs, up.astype(np.float64),
                                call=Call(), **kw)


def _denominators(x, rs, cs, *, iterations, tau, logits, order):
    """Every forward step's sums + tau, per matrix in order: (count, iterations (n + m))."""
    M = np.asarray(x, np.float64)
    if logits:
        M = np.exp(M - M.max(axis=(-2, -1), keepdims=True))
    out = []
    for _ in range(iterations):
        for axis in ((-2, -1) if order == "cols-first" else (-1, -2)):
            t = rs if axis == -1 else cs
            D = M.sum(axis=axis) + tau
            out.append(D)
            M = M * (np.asarray(t, np.float64) / D)[..., :, None] if axis == -1 else \
                M * (np.asarray(t, np.float64) / D)[..., None, :]
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nm", [(4, 4), (2, 7), (8, 8), (1, 1)], ids=str)
def test_sinkhorn_backward_one_thread_per_matrix(harness, nm, dtype):
    """Many small matrices, more than the grid's threads (the grid-stride loop and the
    workspace's stride), 20 iterations, both orders, logits, tau, per-matrix targets."""
    n, m = nm
    count = 173                                       # > block 32 x grid 5, odd
    rng = rng_for("cuda-sk-bwd-thread", nm, dtype)
    for logits, order, tau in ((False, "rows-first", 0.0), (True, "cols-first", 0.0),
                               (True, "rows-first", 0.1), (False, "cols-first", 0.02)):
        x = rng.standard_normal((count, n, m)) * 2 if logits else \
            rng.uniform(0.05, 1.0, (count, n, m))
        up = rng.standard_normal((count, n, m))
        rs = rng.uniform(0.5, 2, (count, n))
        cs = rng.uniform(0.5, 2, (count, m))
        cs *= rs.sum(-1, keepdims=True) / cs.sum(-1, keepdims=True)
        x, up, rs, cs = (a.astype(dtype) for a in (x, up, rs, cs))
        kw = dict(iterations=20, tau=tau, logits=logits, order=order)
        eng = engine(harness, poison=True)
        got = cb._sinkhorn_backward(eng, x, rs, cs, up, call=Call(), **kw)
        assert got.dtype == x.dtype and got.shape == x.shape
        # the workspace: every step's denominators, slot s of matrix b at s * count + b
        ws = [a for a in eng.xp.allocated if a.size == count * 20 * (n + m)]
        assert len(ws) == 1 and ws[0].dtype == x.dtype
        _close_to = dict(rtol=1e-4 if dtype == "float32" else 1e-12)
        np.testing.assert_allclose(ws[0].reshape(20 * (n + m), count).T,
                                   _denominators(x, rs, cs, **kw), **_close_to)
        assert eng.launches == [f"mhc_sk_{'4x4' if nm == (4, 4) else 'small'}_bwd_"
                                f"{dtype[0]}{dtype[-2:]}"]
        want = _array_api_sk_grad(x, up, row_sums=rs.astype(np.float64),
                                  col_sums=cs.astype(np.float64), **kw)
        scale = max(np.abs(want).max(), 1e-6)        # 1x1: the gradient is ~0
        if dtype == "float64":
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * scale)
        else:
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * scale)


def test_sinkhorn_backward_one_thread_zero_targets_nan_and_no_iterations(harness):
    """A zero target (its line cannot be recovered by undoing the step: that matrix
    recomputes each step from x) next to ordinary matrices; a NaN matrix; 0 iterations."""
    rng = rng_for("cuda-sk-bwd-zero-target")
    x = rng.uniform(0.2, 1.0, (3, 3, 4))
    up = rng.standard_normal(x.shape)
    rs = np.array([[1.0, 1.0, 1.0], [0.0, 1.5, 1.5], [1.0, 1.0, 1.0]])
    cs = np.array([[0.75] * 4, [0.75] * 4, [1.5, 0.0, 0.75, 0.75]])
    for logits in (False, True):
        for order in ("rows-first", "cols-first"):
            kw = dict(iterations=5, tau=0.01, logits=logits, order=order)
            got = cb._sinkhorn_backward(engine(harness), x, rs, cs, up, call=Call(), **kw)
            for b in range(3):
                want = _numeric_grad(x[b:b + 1], up[b:b + 1], row_sums=rs[b], col_sums=cs[b],
                                     **kw)
                np.testing.assert_allclose(got[b:b + 1], want, rtol=1e-6, atol=1e-8)
    y = x.copy()
    y[1, 2, 0] = np.nan
    got = cb._sinkhorn_backward(engine(harness), y, None, None, up, iterations=3, tau=0.0,
                                logits=True, order="rows-first", call=Call())
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()
    np.testing.assert_allclose(got[[0, 2]], _array_api_sk_grad(
        y[[0, 2]], up[[0, 2]], iterations=3, tau=0.0, logits=True, order="rows-first"),
        rtol=1e-10, atol=1e-12)
    for logits in (False, True):
        eng = engine(harness)
        got = cb._sinkhorn_backward(eng, x, None, None, up, iterations=0, tau=0.0,
                                    logits=logits, order="rows-first", call=Call())
        want = _numeric_grad(x, up, iterations=0, logits=logits)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- distances

MANIFOLDS = ["euclidean", "poincare", "spherical"]


def _points(manifold, rng, shape, d, curvature=1.0):
    if manifold == "poincare":
        return ref.ball_points(rng, shape, d, curvature)
    if manifold == "spherical":
        return ref.sphere_points(rng, shape, d)
    return rng.standard_normal(tuple(shape) + (d,)) * 3


def _dist(lib, block, manifold, x, c, curvature=1.0, mode="raise"):
    return cb._distance_call(engine(lib, block=block), x, c, manifold, curvature, mode, Call())


@pytest.fixture(params=[32, cb.BLOCK], ids=["block32", "block256"])
def block(request):
    """the distance tests' block size: 32 (a warp, so that small inputs reach
    every path of the reductions) and the GPU's"""
    return request.param


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
@pytest.mark.parametrize("d", [1, 3, 16, 130])
def test_distance_grid(harness, block, manifold, d, dtype):
    rng = rng_for("cuda-dist", manifold, d, dtype)
    x = _points(manifold, rng, (4, 9), d).astype(dtype)
    for c in (_points(manifold, rng, (), d), _points(manifold, rng, (4, 9), d),
              _points(manifold, rng, (9,), d)):
        c = c.astype(dtype)
        got = _dist(harness, block, manifold, x, c)
        assert got.shape == (4, 9) and got.dtype == x.dtype
        extra = dict(atol=1e-15) if manifold == "spherical" else {}
        np.testing.assert_allclose(got, ref.distance(manifold, x, c), **{**DIST_TOL[dtype],
                                                                         **extra})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_near_zero_and_identical(harness, block, manifold, dtype):
    rng = rng_for("cuda-near0", manifold, dtype)
    x = _points(manifold, rng, (40,), 16)
    c = (x + 1e-4 * rng.standard_normal(x.shape) * np.abs(x).mean()).astype(dtype)
    x = x.astype(dtype)
    want = ref.distance(manifold, x, c)
    assert np.all(want > 0)
    np.testing.assert_allclose(_dist(harness, block, manifold, x, c), want, **DIST_TOL[dtype])
    np.testing.assert_array_equal(_dist(harness, block, manifold, x, x.copy()), 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spherical_near_antipodal_and_scales(harness, block, dtype):
    rng = rng_for("cuda-antipodal", dtype)
    x = ref.sphere_points(rng, (40,), 16)
    c = (-x * rng.uniform(0.5, 2, (40, 1)) + 1e-3 * rng.standard_normal(x.shape)).astype(dtype)
    x = x.astype(dtype)
    want = ref.spherical(x, c)
    assert np.all(want > np.pi - 1e-2)
    np.testing.assert_allclose(_dist(harness, block, "spherical", x, c), want, **DIST_TOL[dtype])
    np.testing.assert_allclose(_dist(harness, block, "spherical", x, -x), np.full(40, np.pi),
                               **DIST_TOL[dtype])
    # a unit vector against one 1e3..1e25 times longer, near 0 and near pi
    u = ref.sphere_points(rng, (20,), 8)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    s = np.logspace(3, 25 if dtype == "float64" else 30, 20)[:, None]
    for sign in (1, -1):
        v = (sign * u * s + 1e-4 * s * rng.standard_normal(u.shape)).astype(dtype)
        uu = u.astype(dtype)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(_dist(harness, block, "spherical", uu, v), ref.spherical(uu, v),
                                   **tol)
    if dtype == "float64":   # norms whose squares over- or underflow double
        for scale in (1e200, 1e-200):
            a, b = x.astype(np.float64) * scale, c.astype(np.float64) * scale * 3
            np.testing.assert_allclose(_dist(harness, block, "spherical", a, b),
                                       ref.spherical(x.astype(np.float64), c.astype(np.float64)),
                                       **DIST_TOL[dtype])


def test_euclidean_over_and_underflow(harness, block):
    rng = rng_for("cuda-euclid-scale")
    x = rng.standard_normal((10, 12))
    c = rng.standard_normal((10, 12))
    for scale in (1e200, 1e-200, 1e-310):
        np.testing.assert_allclose(_dist(harness, block, "euclidean", x * scale, c * scale),
                                   ref.euclidean(x, c) * scale, rtol=1e-12)
    x32 = (x * 1e-30).astype(np.float32)
    np.testing.assert_allclose(_dist(harness, block, "euclidean", x32, np.zeros(12, np.float32)),
                               ref.euclidean(x32, np.zeros(12)), **DIST_TOL["float32"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("curvature", [1.0, 3.0])
def test_poincare_near_boundary_and_every_scale(harness, block, curvature, dtype):
    rng = rng_for("cuda-boundary", curvature, dtype)
    v = rng.standard_normal((40, 8))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    x = v * np.sqrt((1 - 1e-3) / curvature)
    c = ref.ball_points(rng, (40,), 8, curvature)
    c[:10] = -x[:10] * 0.999999
    c[10:20] = x[10:20] * (1 - 1e-4)
    x, c = x.astype(dtype), c.astype(dtype)
    np.testing.assert_allclose(_dist(harness, block, "poincare", x, c, curvature),
                               ref.poincare(x, c, curvature), **DIST_TOL[dtype])
    # distances from 1e-13 to ~15 from an off-centre point
    d = 24
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    R = 1 / np.sqrt(curvature)
    centre = (0.3 * R * rng.standard_normal(d) / np.sqrt(d)).astype(dtype)
    steps = np.concatenate([np.logspace(-13, -1, 60), 1 - np.logspace(-1, -6.5, 40)])
    radius = R - np.linalg.norm(centre) - 1e-6 * R
    y = (centre.astype(np.float64) + np.outer(steps * radius, u)).astype(dtype)
    want = ref.poincare(y, centre, curvature=curvature)
    ok = want > 0
    np.testing.assert_allclose(_dist(harness, block, "poincare", y, centre, curvature)[ok], want[ok],
                               **DIST_TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_domain_errors_and_non_finite_rows(harness, block, dtype):
    rng = rng_for("cuda-domain", dtype)
    x = ref.ball_points(rng, (6, 5), 4).astype(dtype)
    c = ref.ball_points(rng, (5,), 4).astype(dtype)
    x[2, 3] = [1.0, 1.0, 0, 0]                     # outside the ball
    with pytest.raises(DomainError) as e:
        _dist(harness, block, "poincare", x, c)
    assert e.value.argument == "x" and e.value.index == (2, 3)
    got = _dist(harness, block, "poincare", x, c, mode="nan")
    assert np.isnan(got[2, 3]) and np.isnan(got).sum() == 1
    ok = np.ones(got.shape, bool)
    ok[2, 3] = False
    np.testing.assert_allclose(got[ok], ref.poincare(x, c)[ok], **DIST_TOL[dtype])
    clipped = _dist(harness, block, "poincare", x, c, mode="clip")
    want = ref.poincare(ref.clip_to_ball(x), c)
    np.testing.assert_allclose(clipped, want, rtol=1e-5 if dtype == "float32" else 1e-10)
    s = ref.sphere_points(rng, (7,), 3).astype(dtype)
    s[4] = 0
    with pytest.raises(DomainError) as e:
        _dist(harness, block, "spherical", s, s[0])
    assert e.value.argument == "x" and e.value.index == (4,)
    got = _dist(harness, block, "spherical", s, s[1], mode="nan")
    assert np.isnan(got[4]) and np.isnan(got).sum() == 1
    nan_row = x.copy()
    nan_row[1, 1, 0] = np.nan
    for manifold in MANIFOLDS:
        got = _dist(harness, block, manifold, nan_row, c, mode="nan")
        assert np.isnan(got[1, 1]) and np.isnan(got).sum() == (2 if manifold == "poincare"
                                                                else 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_pairwise(harness, block, manifold, dtype):
    rng = rng_for("cuda-pairwise", manifold, dtype)
    x = _points(manifold, rng, (11,), 7).astype(dtype)
    y = _points(manifold, rng, (6,), 7).astype(dtype)
    got = cb._pairwise_call(engine(harness, block=block), x, y, manifold, 1.0, "raise", Call())
    assert got.shape == (11, 6)
    extra = dict(atol=1e-15) if manifold == "spherical" else {}
    np.testing.assert_allclose(got, ref.pairwise(manifold, x, y), **{**DIST_TOL[dtype],
                                                                      **extra})
    np.testing.assert_allclose(np.diag(cb._pairwise_call(engine(harness, block=block), x, x, manifold, 1.0,
                                                         "raise", Call())), 0, atol=1e-15)
    if manifold != "euclidean":
        bad = y.copy()
        bad[3] = 0 if manifold == "spherical" else 2
        with pytest.raises(DomainError) as e:
            cb._pairwise_call(engine(harness, block=block), x, bad, manifold, 1.0, "raise", Call())
        assert e.value.argument == "y" and e.value.index == (3,)


def _unaligned(a, offset=1):
    """a copy of ``a`` (C-contiguous) whose data start ``offset`` elements past a
    16-byte boundary"""
    buf = np.empty(a.size + 4, a.dtype)
    start = (-buf.ctypes.data % 16) // a.itemsize + offset
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 16 == offset * a.itemsize
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
@pytest.mark.parametrize("d", [1, 3, 4, 5, 8, 13, 64, 130, 1027])
def test_distance_vector_and_scalar_loads(harness, block, manifold, d, dtype):
    """Rows whose starts (x's and c's) are 16-byte aligned are read in float4 /
    double2 vectors and the rest of d one term at a time; other rows in scalars:
    aligned rows, every row unaligned, x and c unaligned alike, and (d odd)
    aligned and unaligned rows in one warp all match the reference."""
    rng = rng_for("cuda-dist-vec", manifold, d, dtype)
    x = _points(manifold, rng, (37,), d).astype(dtype)
    c1 = _points(manifold, rng, (), d).astype(dtype)
    cn = _points(manifold, rng, (37,), d).astype(dtype)
    assert x.ctypes.data % 16 == 0 and c1.ctypes.data % 16 == 0
    if d % 2:     # row i starts at i * d elements: some rows aligned, some not
        starts = {(x.ctypes.data + i * d * x.itemsize) % 16 for i in range(37)}
        assert 0 in starts and len(starts) > 1
    extra = dict(atol=1e-15) if manifold == "spherical" else {}
    tol = {**DIST_TOL[dtype], **extra}
    for a, b in ((x, c1), (x, cn), (_unaligned(x), c1), (_unaligned(x), _unaligned(cn)),
                 (x, _unaligned(c1))):
        np.testing.assert_allclose(_dist(harness, block, manifold, a, b), ref.distance(manifold, x, b),
                                   **tol)
    got = cb._pairwise_call(engine(harness, block=block), _unaligned(x[:9]), cn[:5], manifold, 1.0,
                            "raise", Call())
    np.testing.assert_allclose(got, ref.pairwise(manifold, x[:9], cn[:5]), **tol)


def _second_pass_rows(manifold, rng, n, d, dtype):
    """(x, c, want, mode): n rows of dtype in which every third needs the kernel's
    second pass (a rescale, a non-finite term, a clip, a near angle) and the
    others not, so that one warp holds both kinds; want from the float64
    reference of the rows as given"""
    if manifold == "euclidean":
        x = rng.standard_normal((n, d))
        c = rng.standard_normal((n, d))
        if dtype == "float64":
            s = np.where(np.arange(n) % 6 == 0, 1e200, np.where(np.arange(n) % 6 == 3, 1e-200, 1))
            x, c = x * s[:, None], c * s[:, None]
            x32, c32 = x / s[:, None], c / s[:, None]
            return x, c, ref.euclidean(x32, c32) * s, "nan"
        x, c = x.astype(dtype), c.astype(dtype)
        want = ref.euclidean(x, c)
        x[1::6, d // 2] = np.inf
        want[1::6] = np.inf
        x[4::6, 0] = np.nan
        want[4::6] = np.nan
        return x, c, want, "nan"
    if manifold == "poincare":
        x = ref.ball_points(rng, (n,), d)
        c = ref.ball_points(rng, (n,), d)
        if dtype == "float64":  # |x - c| ~ 1e-160: its squares underflow
            x[::3] *= 1e-150
            c[::3] = x[::3] * (1 + 1e-10 * rng.standard_normal((len(x[::3]), d)))
            return x, c, ref.poincare(x, c), "nan"
        x[1::3] *= 1.3 / np.linalg.norm(x[1::3], axis=-1, keepdims=True)   # to be clipped
        x, c = x.astype(dtype), c.astype(dtype)
        return x, c, ref.poincare(ref.clip_to_ball(x), c), "clip"
    x = ref.sphere_points(rng, (n,), d)
    c = ref.sphere_points(rng, (n,), d)
    c[::3] = x[::3] * 1.7 + 1e-5 * rng.standard_normal((len(x[::3]), d))   # near 0
    c[1::3] = -x[1::3] * 0.3 + 1e-5 * rng.standard_normal((len(x[1::3]), d))   # near pi
    if dtype == "float64":
        x[2::6] *= 1e200
        c[5::6] *= 1e-200
    x, c = x.astype(dtype), c.astype(dtype)
    return x, c, ref.spherical(x, c), "raise"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
@pytest.mark.parametrize("d", [3, 40, 300])
def test_distance_second_pass_rows_beside_plain_rows(harness, block, manifold, d, dtype):
    """Rows needing a second pass among rows that do not, in one warp (d = 3: a
    lane per row, 40: 16 lanes, 300: the whole warp): the warp runs the pass for
    the rows that need it and the others keep their first-pass result."""
    rng = rng_for("cuda-dist-second", manifold, d, dtype)
    x, c, want, mode = _second_pass_rows(manifold, rng, 45, d, dtype)
    assert x.dtype == dtype and c.dtype == dtype
    if manifold == "poincare" and dtype == "float64":
        assert np.all(want[::3] < 1e-150) and np.all(want[1::3] > 1e-3)
    got = _dist(harness, block, manifold, x, c, mode=mode)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    extra = dict(atol=1e-15) if manifold == "spherical" else {}
    np.testing.assert_allclose(got[ok], want[ok], **{**DIST_TOL[dtype], **extra})


def test_distance_lanes():
    """The launch's choice of lanes per row: short rows share a warp, rows of
    >= 128 terms take a whole warp, long rows that are too few to fill the GPU
    spread over several warps, up to the block."""
    eng = cb.Engine(np, None)
    assert [cb._lanes(eng, 10**6, d) for d in (1, 4, 5, 16, 100, 128, 1024, 10**5)] == \
        [1, 1, 2, 4, 32, 32, 32, 32]
    assert cb._lanes(eng, 100, 1024) == 32 and cb._lanes(eng, 3, 4095) == 32
    assert cb._lanes(eng, 3, 4096) == 64 and cb._lanes(eng, 3, 10000) == 128
    assert cb._lanes(eng, 3, 20000) == cb._lanes(eng, 3, 10**6) == cb.BLOCK
    assert cb._lanes(eng, 4096, 10**6) == 32
    assert cb._lanes(cb.Engine(np, None, block=32), 3, 10**6) == 32
    # the shared memory a wide launch gives is what the kernel's reductions may use
    import re
    text = open(os.path.join(CUDA, "distance.cu")).read()
    assert re.search(r"^#define DIST_SCRATCH (\d+)$", text, re.M).group(1) == \
        str(cb.DIST_SCRATCH)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_distance_wide_rows_across_warps(harness, dtype):
    """Few long rows: a segment of several warps (lanes > 32) sums each row and
    the warps' totals meet in shared memory, the second passes included."""
    rng = rng_for("cuda-dist-wide", dtype)
    for manifold in MANIFOLDS:
        d = 20000 + 3
        x, c, want, mode = _second_pass_rows(manifold, rng, 6, d, dtype)
        for block in (64, cb.BLOCK):
            eng = engine(harness, block=block, max_grid=2)
            assert cb._lanes(eng, 6, d) == block
            got = cb._distance_call(eng, x, c, manifold, 1.0, mode, Call())
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            ok = ~np.isnan(want)
            extra = dict(atol=1e-15) if manifold == "spherical" else {}
            np.testing.assert_allclose(got[ok], want[ok], **{**DIST_TOL[dtype], **extra})


@pytest.mark.parametrize("manifold", MANIFOLDS)
@pytest.mark.parametrize("mode", ["raise", "nan", "clip"])
def test_distance_reads_back_only_the_raise_flag(harness, manifold, mode):
    """Only "raise" on the Poincare ball and the sphere gives the kernel a flag
    (the one value read back after the launch); every other call passes NULL,
    so there is nothing to wait for."""
    x = _points(manifold, rng_for("cuda-dist-flag", manifold), (4,), 5)
    eng = engine(harness)
    seen = []
    launch = eng.launch

    def spy(name, grid, blk, args, shared):
        seen.append(args[11])
        launch(name, grid, blk, args, shared)
    eng.launch = spy
    cb._distance_call(eng, x, x[0], manifold, 1.0, mode, Call())
    cb._pairwise_call(eng, x, x, manifold, 1.0, mode, Call())
    flagged = mode == "raise" and manifold != "euclidean"
    for flag in seen:
        assert (flag is cb._NULL) != flagged
        if flagged:
            assert isinstance(flag, np.ndarray) and flag.shape == (1,) and flag[0] == 0


# ---------------------------------------------------------------- the mHC connection

def _mhc_params(rng, n, C, variant, dtype):
    K = (2 + n) * n
    w = rng.standard_normal((n * C, K) if variant == "paper" else (K, n * C)) * 0.1
    b = rng.standard_normal(K) * 0.1
    a = np.array([0.8, 0.5, 1.3])
    return w.astype(dtype), b.astype(dtype), a.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("n,C", [(4, 8), (3, 37), (1, 5), (16, 3), (4, 130)])
def test_mhc_pre(harness, n, C, variant, dtype):
    rng = rng_for("cuda-pre", n, C, variant, dtype)
    x = rng.standard_normal((2, 3, n, C)).astype(dtype)
    w, b, a = _mhc_params(rng, n, C, variant, dtype)
    for iterations in (20, 1, 0):
        eng = engine(harness)
        got = cb._mhc_pre(eng, x, w, b, a, iterations=iterations, norm_eps=1e-6,
                          variant=variant, hc_eps=1e-6, call=Call())
        want = ref.mhc_pre(x, w, b, a, iterations=iterations, variant=variant)
        for g, wv in zip(got, want):
            assert g.dtype == x.dtype and g.shape == wv.shape
            np.testing.assert_allclose(g, wv, **MHC_TOL[dtype])
    # h_res mixes the streams: a non-identity matrix
    assert n == 1 or not np.allclose(got[3], np.eye(n))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("tokens,n,C,block", [(7, 4, 100, 32), (7, 4, 100, 256), (1, 4, 70, 32),
                                              (3, 16, 5, 32), (9, 2, 33, 256)])
def test_mhc_post_pre(harness, tokens, n, C, variant, dtype, block):
    """The fused boundary against mhc_post then mhc_pre of the float64 references:
    token tiles with missing tokens, columns split over CTAs (C = 100: four chunks
    of 32), several passes over the tiles (n = 16, or a block of 32), out = x."""
    rng = rng_for("cuda-post-pre", tokens, n, C, variant, dtype, block)
    x = rng.standard_normal((tokens, n, C)).astype(dtype)
    f = rng.standard_normal((tokens, C)).astype(dtype)
    hp = rng.uniform(0, 2, (tokens, n)).astype(dtype)
    hr = rng.uniform(0, 1, (tokens, n, n)).astype(dtype)
    w, b, a = _mhc_params(rng, n, C, variant, dtype)
    nxt = ref.mhc_post(x, f, hp, hr)
    want = (nxt, *ref.mhc_pre(nxt, w, b, a, iterations=20, variant=variant))
    for in_place in (False, True):
        y = x.copy()
        eng = engine(harness, block=block)
        got = cb._mhc_post_pre(eng, y, f, hp, hr, w, b, a, iterations=20, norm_eps=1e-6,
                               variant=variant, hc_eps=1e-6, out=y if in_place else None,
                               call=Call())
        assert (got[0] is y) == in_place
        assert in_place or np.array_equal(y, x)            # x untouched without out=
        for g, wv in zip(got, want):
            assert g.dtype == x.dtype and g.shape == wv.shape
            np.testing.assert_allclose(g, wv, **MHC_TOL[dtype])
        assert eng.launches == [f"mhc_proj_{dtype[0]}{dtype[-2:]}",
                                f"mhc_mix{'4' if n == 4 else ''}_{dtype[0]}{dtype[-2:]}"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mhc_post(harness, dtype):
    rng = rng_for("cuda-post", dtype)
    n, C = 4, 19
    x = rng.standard_normal((2, 3, n, C)).astype(dtype)
    f = rng.standard_normal((2, 3, C)).astype(dtype)
    hp = rng.uniform(0, 2, (2, 3, n)).astype(dtype)
    hr = rng.uniform(0, 1, (2, 3, n, n)).astype(dtype)
    want = ref.mhc_post(x, f, hp, hr)
    got = cb._mhc_post(engine(harness), x, f, hp, hr, out=None, call=Call())
    np.testing.assert_allclose(got, want, **MHC_TOL[dtype])
    # one f_out / h_post / h_res for every token (stride 0), and out = x in place
    f1, hp1, hr1 = f[:1, :1], hp[:1, :1], hr[:1, :1]
    want = ref.mhc_post(x, np.broadcast_to(f1, f.shape), np.broadcast_to(hp1, hp.shape),
                        np.broadcast_to(hr1, hr.shape))
    y = x.copy()
    got = cb._mhc_post(engine(harness), y, f1, hp1, hr1, out=y, call=Call())
    assert got is y
    np.testing.assert_allclose(y, want, **MHC_TOL[dtype])
    # a batch that must be broadcast (one f_out per sequence position)
    fb = f[:1]
    want = ref.mhc_post(x, np.broadcast_to(fb, f.shape), hp, hr)
    call = Call()
    np.testing.assert_allclose(cb._mhc_post(engine(harness), x, fb, hp, hr, out=None,
                                            call=call), want, **MHC_TOL[dtype])
    assert call.bytes == f.nbytes


# ---------------------------------------------------------------- the mHC backward

MHC_BWD_TOL = {"float32": (2e-3, 2e-4), "float64": (1e-9, 1e-11)}   # rtol, atol x scale


def _close(got, want, dtype):
    rtol, atol = MHC_BWD_TOL[dtype]
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=atol * max(np.abs(want).max(), 1e-3))


def _upstream(rng, batch, n, C, dtype, which="ipqr"):
    """Upstream gradients of (h_in, h_pre, h_post, h_res); a letter missing: None."""
    shapes = {"i": (C,), "p": (n,), "q": (n,), "r": (n, n)}
    return [rng.standard_normal(batch + shapes[k]).astype(dtype) if k in which else None
            for k in "ipqr"]


def _pre_bwd_array_api(x, w, b, a, gs, **kw):
    """The array_api backend's mhc_pre_backward in NumPy float64: the reference."""
    from mhc_array.backends import array_api as aa
    f64 = [None if v is None else np.asarray(v, np.float64) for v in (x, w, b, a, *gs)]
    return aa.mhc_pre_backward(np, *f64, call=Call(), **kw)


def _pre_bwd(lib, x, w, b, a, gs, **kw):
    eng = engine(lib)
    got = cb._mhc_pre_backward(eng, x, w, b, a, *gs, call=Call(), **kw)
    sfx = f"_{x.dtype.name[0]}{x.dtype.name[-2:]}"
    coef = "mhc_pre_bwd_coef4" if x.shape[-2] == 4 else "mhc_pre_bwd_coef"
    dots = ("mhc_pre_bwd_dots",) if gs[0] is not None else ()
    assert eng.launches == [k + sfx for k in ("mhc_proj", *dots, coef, "mhc_pre_bwd_gx")]
    return got


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("n,C", [(4, 8), (3, 37), (1, 5), (16, 3)])
def test_mhc_pre_backward(harness, n, C, variant, dtype):
    """(g_x, gz, y, gp, gw) against the array_api backend in float64; n = 4 takes the
    unrolled path, 1, 3 and 16 the general one; C = 37 is not a multiple of the block."""
    rng = rng_for("cuda-pre-bwd", n, C, variant, dtype)
    x = rng.standard_normal((2, 3, n, C)).astype(dtype)
    w, b, a = _mhc_params(rng, n, C, variant, dtype)
    gs = _upstream(rng, (2, 3), n, C, dtype)
    for iterations in (20, 2, 1, 0):
        kw = dict(iterations=iterations, norm_eps=1e-6, variant=variant, hc_eps=1e-3)
        got = _pre_bwd(harness, x, w, b, a, gs, **kw)
        want = _pre_bwd_array_api(x, w, b, a, gs, **kw)
        for g, wv in zip(got, want):
            _close(g, wv, dtype)


def _pre_loss(x, w, b, a, ups, **kw):
    out = ref.mhc_pre(x, w, b, a, **kw)
    return sum(float(np.sum(u * o)) for u, o in zip(ups, out))


def _pre_numeric(args, which, ups, h=1e-6, **kw):
    args = [v.copy() for v in args]
    g = np.zeros_like(args[which])
    for idx in np.ndindex(g.shape):
        keep = args[which][idx]
        args[which][idx] = keep + h
        lp = _pre_loss(*args, ups, **kw)
        args[which][idx] = keep - h
        lm = _pre_loss(*args, ups, **kw)
        args[which][idx] = keep
        g[idx] = (lp - lm) / (2 * h)
    return g


@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_mhc_pre_backward_finite_differences(harness, variant):
    """The streams' and the parameters' gradients (summed from the per-token outputs as
    mhc_array.torch does) against central differences of reference.mhc_pre."""
    rng = rng_for("cuda-pre-bwd-fd", variant)
    n, C, iterations = 3, 5, 4
    K = (2 + n) * n
    x = rng.standard_normal((2, n, C))
    w, b, a = _mhc_params(rng, n, C, variant, "float64")
    w *= 5
    ups = _upstream(rng, (2,), n, C, "float64")
    kw = dict(iterations=iterations, variant=variant)
    g_x, gz, y, gp, gwk = _pre_bwd(harness, x, w, b, a, ups, norm_eps=1e-6, hc_eps=1e-6,
                                   **kw)
    num = [_pre_numeric((x, w, b, a), k, ups, **kw) for k in range(4)]
    v = x.reshape(2, n * C)
    gw = v.T @ gp if variant == "paper" else gp.T @ v
    np.testing.assert_allclose(gwk, gp.T @ v, rtol=1e-12, atol=1e-14)
    ga = np.array([np.sum((gz * y)[:, :n]), np.sum((gz * y)[:, n:2 * n]),
                   np.sum((gz * y)[:, 2 * n:])])
    assert gz.shape == (2, K)
    for got, want in zip((g_x, gw, gz.sum(0), ga), num):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which", ["i", "r", "pq", ""], ids=["g_in", "g_res", "pre_post",
                                                           "none"])
def test_mhc_pre_backward_missing_upstream_gradients(harness, which, dtype):
    """Upstream gradients passed as None are zero (NULL pointers in the kernels)."""
    rng = rng_for("cuda-pre-bwd-none", which, dtype)
    n, C = 4, 9
    x = rng.standard_normal((5, n, C)).astype(dtype)
    for variant in ("paper", "deepseek-v4"):
        w, b, a = _mhc_params(rng, n, C, variant, dtype)
        gs = _upstream(rng, (5,), n, C, dtype, which)
        kw = dict(iterations=6, norm_eps=1e-6, variant=variant, hc_eps=1e-3)
        got = _pre_bwd(harness, x, w, b, a, gs, **kw)
        want = _pre_bwd_array_api(x, w, b, a, gs, **kw)
        for g, wv in zip(got, want):
            _close(g, wv, dtype)
        if not which:
            assert not got[0].any() and not got[1].any() and not got[3].any()


def test_mhc_pre_backward_many_tokens(harness):
    """More tokens than the grids' blocks and threads (every grid-stride loop, the
    Sinkhorn workspace's token stride); no tokens at all."""
    rng = rng_for("cuda-pre-bwd-many")
    n, C = 2, 3
    x = rng.standard_normal((170, n, C))
    for variant in ("paper", "deepseek-v4"):
        w, b, a = _mhc_params(rng, n, C, variant, "float64")
        gs = _upstream(rng, (170,), n, C, "float64")
        kw = dict(iterations=7, norm_eps=1e-6, variant=variant, hc_eps=1e-3)
        eng = engine(harness, poison=True)
        got = cb._mhc_pre_backward(eng, x, w, b, a, *gs, call=Call(), **kw)
        for g, wv in zip(got, _pre_bwd_array_api(x, w, b, a, gs, **kw)):
            _close(g, wv, "float64")
        # the Sinkhorn workspace: (iterations, V4: - 1) x 2n slots per token, every one
        # written, slot s of token t at s * tokens + t (positive denominators)
        steps = 7 - (variant != "paper")
        ws = [v for v in eng.xp.allocated if v.size == 170 * steps * 2 * n]
        assert len(ws) == 1 and np.all(ws[0] > 0)
        empty = cb._mhc_pre_backward(engine(harness), x[:0], w, b, a, *(g[:0] for g in gs),
                                     call=Call(), **kw)
        assert [e.shape for e in empty] == [(0, n, C)] + [(0, (2 + n) * n)] * 3 + [
            ((2 + n) * n, n * C)]
        assert not empty[4].any()


def _post_bwd_reference(x, f, hp, hr, g):
    batch = x.shape[:-2]
    f, hp, hr = (np.broadcast_to(np.asarray(v, np.float64), batch + v.shape[v.ndim - k:])
                 for v, k in ((f, 1), (hp, 1), (hr, 2)))
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    return (np.einsum("...ij,...ic->...jc", hr, g), np.einsum("...i,...ic->...c", hp, g),
            np.einsum("...ic,...c->...i", g, f), np.einsum("...ic,...jc->...ij", g, x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,C", [(4, 19), (1, 70), (16, 37), (3, 5)])
def test_mhc_post_backward(harness, n, C, dtype):
    """(g_x, g_f, g_post, g_res) per token against the formulas in float64; f_out,
    h_post, h_res per token, one for every token (stride 0) and broadcast."""
    rng = rng_for("cuda-post-bwd", n, C, dtype)
    x = rng.standard_normal((2, 3, n, C)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    f = rng.standard_normal((2, 3, C)).astype(dtype)
    hp = rng.uniform(0, 2, (2, 3, n)).astype(dtype)
    hr = rng.uniform(0, 1, (2, 3, n, n)).astype(dtype)
    for args in ((f, hp, hr), (f[:1, :1], hp[:1, :1], hr[:1, :1]), (f[:1], hp, hr[:1])):
        eng = engine(harness)
        got = cb._mhc_post_backward(eng, x, *args, g, call=Call())
        assert eng.launches == [f"mhc_post_bwd_{dtype[0]}{dtype[-2:]}"]
        for gv, wv in zip(got, _post_bwd_reference(x, *args, g)):
            _close(gv, wv, dtype)


# ---------------------------------------------------------------- the GPU's block size

@pytest.mark.parametrize("family", ["sinkhorn", "distances", "mhc"])
def test_every_kernel_at_the_block_size_the_gpu_runs(harness, family):
    """The launches a GPU makes (cb.BLOCK threads per block; the tests above use 32 to
    reach every path of the reductions with small inputs): the same results, and no
    kernel writes shared memory past what its launch allocates (the canary)."""
    rng = rng_for("cuda-gpu-block", family)
    eng = engine(harness, block=cb.BLOCK, max_grid=2)
    assert eng.block == 256
    if family == "sinkhorn":
        for shape in ((3, 4, 4), (2, 3, 7), (2, 12, 10), (1, 40, 30)):
            x = rng.standard_normal(shape)
            got = cb._sinkhorn(eng, x, None, None, iterations=6, tau=0.0, logits=True,
                               order="cols-first", out=None, call=Call())
            np.testing.assert_allclose(got, ref.sinkhorn(x, iterations=6, logits=True,
                                                         order="cols-first"),
                                       **SINK_TOL["float64"])
            up = rng.standard_normal(shape)
            kw = dict(iterations=3, tau=0.0, logits=True, order="rows-first")
            got = cb._sinkhorn_backward(eng, x, None, None, up, call=Call(), **kw)
            np.testing.assert_allclose(got, _numeric_grad(x, up, **kw), rtol=1e-6, atol=1e-8)
    elif family == "distances":
        for manifold in MANIFOLDS:
            for d in (3, 300, 1100, 20003):     # 20003: a row across the block's 8 warps
                x = _points(manifold, rng, (5,), d)
                c = _points(manifold, rng, (), d)
                got = cb._distance_call(eng, x, c, manifold, 1.0, "raise", Call())
                want = ref.distance(manifold, x, c)
                np.testing.assert_allclose(got, want, **DIST_TOL["float64"])
    else:
        for variant in ("paper", "deepseek-v4"):
            n, C = 4, 300
            x = rng.standard_normal((3, n, C))
            w, b, a = _mhc_params(rng, n, C, variant, "float64")
            got = cb._mhc_pre(eng, x, w, b, a, iterations=20, norm_eps=1e-6, variant=variant,
                              hc_eps=1e-6, call=Call())
            want = ref.mhc_pre(x, w, b, a, iterations=20, variant=variant)
            for g, wv in zip(got, want):
                np.testing.assert_allclose(g, wv, **MHC_TOL["float64"])
            gs = _upstream(rng, (3,), n, C, "float64")
            got = cb._mhc_pre_backward(eng, x, w, b, a, *gs, call=Call(), iterations=20,
                                       norm_eps=1e-6, variant=variant, hc_eps=1e-6)
            want = _pre_bwd_array_api(x, w, b, a, gs, iterations=20, norm_eps=1e-6,
                                      variant=variant, hc_eps=1e-6)
            for g, wv in zip(got, want):
                if wv is not None:
                    _close(g, wv, "float64")
        f, hp = rng.standard_normal((3, C)), rng.uniform(0, 2, (3, n))
        hr = rng.uniform(0, 1, (3, n, n))
        np.testing.assert_allclose(cb._mhc_post(eng, x, f, hp, hr, out=None, call=Call()),
                                   ref.mhc_post(x, f, hp, hr), **MHC_TOL["float64"])
        g = rng.standard_normal(x.shape)
        for gv, wv in zip(cb._mhc_post_backward(eng, x, f, hp, hr, g, call=Call()),
                          _post_bwd_reference(x, f, hp, hr, g)):
            _close(gv, wv, "float64")


# ---------------------------------------------------------------- ThreadSanitizer

def _libtsan():
    cxx = shutil.which("g++")
    if cxx is None:
        return None
    path = subprocess.run([cxx, "-print-file-name=libtsan.so"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(TSAN_FLAGS in os.environ, reason="already under ThreadSanitizer")
@pytest.mark.parametrize("barrier", ["kept", "broken"])
def test_harness_under_thread_sanitizer(barrier, tmp_path):
    """The kernels' threads share memory only across barriers: every kernel family at
    the GPU's block size runs again with the harness built with -fsanitize=thread
    (ThreadSanitizer loaded into the interpreter) and no data race is reported; with
    __syncthreads() broken on purpose, races are reported and the run fails."""
    lib = _libtsan()
    if lib is None:
        pytest.skip("ThreadSanitizer's runtime (libtsan) is not installed with g++")
    flags = "-fsanitize=thread -g" + (" -DMHC_HARNESS_BROKEN_BARRIER" if barrier == "broken"
                                     else "")
    select = "gpu_runs or shuffles" if barrier == "kept" else "gpu_runs and sinkhorn"
    log = tmp_path / "tsan"      # the reports (pytest's capture would swallow them)
    env = dict(os.environ, LD_PRELOAD=lib, **{TSAN_FLAGS: flags},
               TSAN_OPTIONS=f"halt_on_error=1 exitcode=66 log_path={log}")
    p = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-k", select,
                        "-p", "no:cacheprovider"], capture_output=True, text=True, env=env,
                       timeout=600, cwd=ROOT)
    out = p.stdout + p.stderr + "".join(f.read_text() for f in tmp_path.glob("tsan*"))
    if barrier == "kept":
        assert p.returncode == 0 and "ThreadSanitizer" not in out, out[-4000:]
        assert "5 passed" in out, out[-4000:]
    else:
        assert p.returncode == 66 and "WARNING: ThreadSanitizer: data race" in out, out[-4000:]
