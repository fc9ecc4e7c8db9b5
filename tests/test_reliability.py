"""Failure paths (issue "Reliability"): allocation failures inside the C code become a
NativeError with no leaked block, sizes whose products overflow are a ShapeError before
any allocation, and many threads mixing calls and per-thread configuration get the
reference answer every time."""
import numpy as np
import pytest

import mhc_array as mx
from mhc_array.errors import NativeError, ShapeError

import reference as ref

native = pytest.importorskip("mhc_array.backends.native")
pytestmark = pytest.mark.skipif(native.UNAVAILABLE is not None, reason="native backend unavailable")


class _FailingAllocs:
    """Every heap allocation of the C library fails after ``after`` successful ones."""

    def __init__(self, after):
        self.after = after

    def __enter__(self):
        native.lib.mhc_debug_fail_allocs_after(self.after)

    def __exit__(self, *exc):
        native.lib.mhc_debug_fail_allocs_after(-1)


def _live():
    return native.lib.mhc_debug_live_allocs()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_allocation_failure_in_sinkhorn(dtype, threads):
    # rows of 40000 columns need a heap workspace per chunk (more than the stack buffer)
    x = np.random.default_rng(0).random((4, 2, 40000)).astype(dtype)
    before, x0 = _live(), x.copy()
    with mx.use_backend("native"), mx.use_num_threads(threads):
        with _FailingAllocs(0), pytest.raises(NativeError, match="out of memory"):
            mx.sinkhorn_knopp(x, iterations=2)
        assert _live() == before  # nothing leaked on the failure path
        np.testing.assert_array_equal(x, x0)
        got = mx.sinkhorn_knopp(x, iterations=2)  # the hook is off again: it works
    np.testing.assert_allclose(got, ref.sinkhorn(x.astype(np.float64), iterations=2),
                               rtol=1e-4 if dtype == np.float32 else 1e-12)
    assert _live() == before


@pytest.mark.parametrize("after", [0, 1, 2, 3])
def test_native_allocation_failure_in_mhc_pre(after):
    rng = np.random.default_rng(1)
    n, C, T = 4, 1000, 600
    x = rng.standard_normal((T, n, C)).astype(np.float32)
    phi = (rng.standard_normal((n * C, 2 * n + n * n)) * 0.01).astype(np.float32)
    bias = rng.standard_normal(2 * n + n * n).astype(np.float32) * 0.1
    alpha = np.array([0.1, 0.1, 0.1], np.float32)
    before = _live()
    with mx.use_backend("native"), mx.use_num_threads(2):
        with _FailingAllocs(after):
            try:
                res = mx.mhc_pre(x, phi, bias, alpha)
            except NativeError as e:  # a failure is reported, never a crash
                assert "out of memory" in str(e)
                res = None
        if after == 0:  # no workspace and no heap: the first chunk cannot start
            assert res is None
        assert _live() == before
        if res is None:
            res = mx.mhc_pre(x, phi, bias, alpha)
    want = ref.mhc_pre(x.astype(np.float64), phi.astype(np.float64), bias.astype(np.float64),
                       alpha.astype(np.float64))
    for got, expected in zip(res, want):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    assert _live() == before


def test_layer_workspace_freed_with_the_layer():
    import gc
    before = _live()
    layer = mx.MHCLayer(4, 256, seed=0)
    x = np.random.default_rng(2).standard_normal((300, 4, 256)).astype(np.float32)
    with mx.use_backend("native"):
        layer.pre(x)
    assert _live() > before  # the layer's workspace holds its buffers between calls
    del layer
    gc.collect()
    assert _live() == before


def test_layer_created_while_allocations_fail_still_works():
    x = np.random.default_rng(3).standard_normal((5, 4, 64)).astype(np.float32)
    with _FailingAllocs(0):
        layer = mx.MHCLayer(4, 64, seed=0)  # no C workspace: calls allocate their own
    with mx.use_backend("native"):
        got = layer.pre(x)
    with mx.use_backend("array_api"):
        want = layer.pre(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dt", ["float", "double"])
def test_overflowing_sizes_refused_by_the_abi_before_any_access(dt):
    """Sizes whose products overflow int64 (which no NumPy array can have) are refused
    by the C ABI as an invalid dimension, without reading or writing the (1-element)
    buffers; under the sanitizer CI step any access would abort."""
    ffi, lib = native.ffi, native.lib
    sfx = "f32" if dt == "float" else "f64"
    buf = ffi.new(f"{dt}[1]")
    big = 2**62
    sk = getattr(lib, f"mhc_sinkhorn_{sfx}")
    for batch, n, m in [(big, 4, 4), (4, big, big), (2, 2**32, 2**32)]:
        assert sk(buf, n * m if n * m < 2**63 else 0, m, buf, 0, m, batch, n, m, ffi.NULL, 0,
                  ffi.NULL, 0, 1, 0.0, 0, 0, 1, ffi.NULL) == 2
    # strides whose extent overflows, with sizes that do not
    assert sk(buf, big, 4, buf, 16, 4, 4, 4, 4, ffi.NULL, 0, ffi.NULL, 0, 1, 0.0, 0, 0, 1,
              ffi.NULL) == 2
    dist = getattr(lib, f"mhc_distance_{sfx}")
    assert dist(0, buf, big, buf, 0, buf, 4, 2, 1.0, 0, 0, 1, ffi.NULL) == 2
    pair = getattr(lib, f"mhc_pairwise_{sfx}")
    assert pair(0, buf, big, 1, buf, big, 1, 1, buf, 1.0, 0, 0, 1, ffi.NULL) == 2
    post = getattr(lib, f"mhc_hc_post_{sfx}")
    assert post(buf, big, buf, 0, buf, buf, buf, big, big, 4, big, 0, 1) == 2
    pre = getattr(lib, f"mhc_hc_pre_{sfx}")
    assert pre(buf, 0, big, 4, big, buf, 24, buf, buf, 0, 1, 1e-6, 1e-6, buf, buf, buf, buf,
               ffi.NULL, 0, 1) == 2


# ---- stress: many threads, mixed calls, per-thread configuration ------------------

STRESS_THREADS = 16
STRESS_CALLS = int(__import__("os").environ.get("MHC_STRESS_CALLS", "2000"))


def _stress_cases():
    """(function, expected) pairs on different inputs, the expectations computed once
    in float64 by the plain references."""
    rng = np.random.default_rng(7)
    cases = []
    for k in range(24):
        dt = np.float32 if k % 2 else np.float64
        tol = dict(rtol=3e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-10, atol=1e-13)
        kind = k % 6
        if kind == 0:
            x = rng.standard_normal((int(rng.integers(1, 40)), 4, 4)).astype(dt)
            want = ref.sinkhorn(x.astype(np.float64), logits=True, order="cols-first")
            fn = (lambda x=x: mx.sinkhorn_knopp(x, logits=True, order="cols-first"))
        elif kind == 1:
            n, m = (int(v) for v in rng.integers(1, 9, 2))
            x = rng.random((3, n, m)).astype(dt)
            want = ref.sinkhorn(x.astype(np.float64), iterations=5)
            fn = (lambda x=x: mx.sinkhorn_knopp(x, iterations=5))
        elif kind in (2, 3, 4):
            manifold = ("euclidean", "poincare", "spherical")[kind - 2]
            d = int(rng.integers(1, 70))
            x = ref.ball_points(rng, (int(rng.integers(1, 30)),), d, rmax=0.8).astype(dt)
            c = ref.ball_points(rng, (), d, rmax=0.8).astype(dt)
            want = ref.distance(manifold, x.astype(np.float64), c.astype(np.float64))
            fn = (lambda x=x, c=c, m=manifold: mx.geometric_distance(x, c, manifold=m))
        else:
            x = rng.standard_normal((5, 9, 3)).astype(dt)
            y = rng.standard_normal((4, 3)).astype(dt)
            want = ref.pairwise("euclidean", x.reshape(-1, 3).astype(np.float64),
                                y.astype(np.float64))
            fn = (lambda x=x, y=y: mx.pairwise_distance(x.reshape(-1, 3), y))
        cases.append((fn, want, tol))
    return cases


def test_stress_threads_mixed_calls_and_per_thread_config():
    from conftest import cpu_supports, run_in_threads

    cases = _stress_cases()
    levels = [lv for lv in ("portable", "sse", "avx2", "avx512") if cpu_supports(lv)]
    counts = [0] * (STRESS_THREADS + 1)

    def work(k):
        rng = np.random.default_rng(100 + k)
        if k == STRESS_THREADS:  # the configuration changer: its own contexts only
            for i in range(STRESS_CALLS):
                backend = ("native", "array_api")[i % 2]
                isa = levels[i % len(levels)]
                with mx.use_backend(backend), mx.use_isa(isa):
                    assert (mx.get_backend(), mx.get_isa()) == (backend, isa)
                    fn, want, tol = cases[int(rng.integers(len(cases)))]
                    np.testing.assert_allclose(fn(), want, **tol)
                counts[k] += 1
            return
        for i in range(STRESS_CALLS):
            # nothing the changer sets may leak into this thread
            assert mx.get_backend() == "auto" and mx.get_isa() == "auto"
            fn, want, tol = cases[int(rng.integers(len(cases)))]
            np.testing.assert_allclose(fn(), want, **tol)
            counts[k] += 1

    run_in_threads(work, STRESS_THREADS + 1, timeout=900)
    assert counts == [STRESS_CALLS] * (STRESS_THREADS + 1)


@pytest.mark.parametrize("dt", ["float", "double"])
@pytest.mark.parametrize("variant", [0, 1], ids=["paper", "v4"])
@pytest.mark.parametrize("n,extra", [(3, 0), (1, 2), (2, 1), (5, 3), (4, 0), (4, 5)])
def test_abi_mhc_pre_reads_the_callers_layout(dt, variant, n, extra):
    """The projection in the caller's layout with a row stride of its row length +
    extra (not a multiple of the vector width: a case the fuzz harness found reading
    past phi's last row): phi (n*C, K) for the paper, V4's fn (K, n*C); the kernel
    reads only each row's values and the result matches the float64 reference at
    every ISA level (K = 24 for n = 4: a vector and a half on 16 lanes)."""
    from conftest import cpu_supports
    ffi, lib = native.ffi, native.lib
    npdt = np.float32 if dt == "float" else np.float64
    rng = np.random.default_rng(n * 10 + extra)
    C, T = 13, 7
    K, L = (2 + n) * n, n * 13
    x = rng.standard_normal((T, n, C)).astype(npdt)
    rows, cols = (K, L) if variant else (L, K)
    w = (rng.standard_normal((rows, cols + extra)) * 0.1).astype(npdt)
    bias = (rng.standard_normal(K) * 0.1).astype(npdt)
    alpha = np.array([0.5, 0.5, 0.5], npdt)
    want = ref.mhc_pre(x.astype(np.float64), w[:, :cols].astype(np.float64),
                       bias.astype(np.float64), alpha.astype(np.float64),
                       variant="deepseek-v4" if variant else "paper")
    fn = getattr(lib, f"mhc_hc_pre_{'f32' if dt == 'float' else 'f64'}")
    tol = dict(rtol=1e-4, atol=1e-5) if dt == "float" else dict(rtol=1e-10, atol=1e-12)
    for code, level in enumerate(("portable", "sse", "avx2", "avx512")):
        if not cpu_supports(level):
            continue
        outs = [np.full(s, np.nan, npdt) for s in ((T, C), (T, n), (T, n), (T, n, n))]
        p = [ffi.from_buffer(f"{dt}[]", v) for v in (x, w, bias, alpha, *outs)]
        assert fn(p[0], n * C, T, n, C, p[1], cols + extra, p[2], p[3], variant, 20, 1e-6,
                  1e-6, p[4], p[5], p[6], p[7], ffi.NULL, code, 1) == 0
        for got, expected in zip(outs, want):
            np.testing.assert_allclose(got, expected, **tol, err_msg=level)


@pytest.mark.parametrize("shape", [(2**40, 2**30, 4, 4), (2**62, 2), (3, 2**61, 4)])
def test_frontend_size_guard_names_the_argument(shape):
    """NumPy and PyTorch refuse such shapes themselves; lazily shaped arrays (Dask) can
    carry them, and the frontend's guard stops them before any allocation."""
    from mhc_array import _dispatch
    with pytest.raises(ShapeError, match=r"x: the element count of shape .* overflows"):
        _dispatch.checked_size(shape, "x")
    assert _dispatch.checked_size((2**31, 2**31), "x") == 2**62
