"""The Sinkhorn backward without torch: the pipeline record SINKHORN_BACKWARD at
every backend and ISA level against finite differences of the float64
reference, and the raw C ABI mhc_sinkhorn_backward_* (argument validation,
out-of-memory, threads). The torch integration is tested in test_torch.py."""

import numpy as np
import pytest
import reference as ref
from conftest import native_available

import mhc_array as mx
from mhc_array._api import SINKHORN_BACKWARD


_numeric_grad = ref.sinkhorn_grad_numeric


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
def test_backward_record_matches_finite_differences(backend, logits, order):
    rng = np.random.default_rng(31 + logits)
    x = rng.standard_normal((2, 3, 4)) if logits else rng.uniform(0.2, 1.0, (2, 3, 4))
    up = rng.standard_normal(x.shape)
    rs = np.array([1.0, 2.0, 3.0])
    cs = np.full(4, rs.sum() / 4)   # the pipeline's default with only row_sums given
    kw = dict(iterations=4, tau=0.05, logits=logits, order=order, row_sums=rs, col_sums=cs)
    got = SINKHORN_BACKWARD((x, rs, None, up), (4, 0.05, logits, order))
    assert got.shape == x.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, _numeric_grad(x, up, **kw), rtol=1e-6, atol=1e-8)
    # float32 in, float32 out; strided (non-contiguous) x and grad give the same
    g32 = SINKHORN_BACKWARD((x.astype(np.float32), rs, None, up.astype(np.float32)),
                            (4, 0.05, logits, order))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, got, rtol=1e-3, atol=1e-4 * np.abs(got).max())
    xs = np.ascontiguousarray(np.swapaxes(x, 0, 2)).swapaxes(0, 2)
    gs = np.ascontiguousarray(np.swapaxes(up, 0, 2)).swapaxes(0, 2)
    np.testing.assert_allclose(SINKHORN_BACKWARD((xs, rs, None, gs), (4, 0.05, logits, order)),
                               got, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n,m", [(4, 4), (3, 5), (9, 9)])
def test_backward_many_matrices_every_lane(backend, n, m):
    """37 matrices: the small-matrix kernel's full and partial lane groups (and the
    one-matrix path for 9x9) against finite differences per matrix; a NaN matrix
    gives a NaN gradient and leaves the others' exactly as they were."""
    rng = np.random.default_rng(n * 10 + m)
    x = rng.standard_normal((37, n, m))
    up = rng.standard_normal(x.shape)
    opts = (6, 0.0, True, "cols-first")
    got = SINKHORN_BACKWARD((x, None, None, up), opts)
    kw = dict(iterations=6, logits=True, order="cols-first")
    for b in (0, 1, 15, 16, 17, 31, 36):
        np.testing.assert_allclose(got[b], _numeric_grad(x[b], up[b], **kw), rtol=1e-6,
                                   atol=1e-8)
    xn = x.copy()
    xn[17, 1, 2] = np.nan
    gn = SINKHORN_BACKWARD((xn, None, None, up), opts)
    assert np.isnan(gn[17]).all()
    keep = np.arange(37) != 17
    np.testing.assert_array_equal(gn[keep], got[keep])


def test_backward_record_checks_shapes_and_domain(backend):
    x = np.ones((2, 3, 3))
    with pytest.raises(mx.ShapeError, match="grad"):
        SINKHORN_BACKWARD((x, None, None, np.ones((2, 3, 4))), (3, 0.0, False, "rows-first"))
    x[1, 0, 2] = -1
    with pytest.raises(mx.DomainError, match=r"x\[1, 0, 2\]"):
        SINKHORN_BACKWARD((x, None, None, np.ones_like(x)), (3, 0.0, False, "rows-first"))
    with pytest.raises(ValueError, match="order"):
        SINKHORN_BACKWARD((x, None, None, x), (3, 0.0, False, "sideways"))


# ---------------------------------------------------------------- the raw C ABI

PARAMS = ("x", "x_bstride", "x_rstride", "grad_out", "g_bstride", "g_rstride", "grad_x",
          "gx_bstride", "gx_rstride", "batch", "n", "m", "row_sums", "rs_bstride",
          "col_sums", "cs_bstride", "iterations", "tau", "flags", "isa", "n_threads",
          "err_index")


def _abi_args(dtype, batch=2, n=3, m=3, iterations=5):
    if not native_available():
        pytest.skip("native backend unavailable")
    from mhc_array._native import ffi, lib
    sfx, ct = ("f32", "float") if dtype == "float32" else ("f64", "double")
    rng = np.random.default_rng(40)
    x = rng.uniform(0.1, 1.0, (batch, n, m)).astype(dtype)
    g = rng.standard_normal((batch, n, m)).astype(dtype)
    gx = np.full_like(x, 42)
    err = ffi.new("int64_t *", 123)
    args = dict(x=ffi.from_buffer(f"{ct}[]", x), x_bstride=n * m, x_rstride=m,
                grad_out=ffi.from_buffer(f"{ct}[]", g), g_bstride=n * m, g_rstride=m,
                grad_x=ffi.from_buffer(f"{ct}[]", gx), gx_bstride=n * m, gx_rstride=m,
                batch=batch, n=n, m=m, row_sums=ffi.NULL, rs_bstride=0, col_sums=ffi.NULL,
                cs_bstride=0, iterations=iterations, tau=0.0, flags=0, isa=-1, n_threads=1,
                err_index=err)
    fn = getattr(lib, f"mhc_sinkhorn_backward_{sfx}")
    return ffi, lib, fn, args, (x, g, gx, err, ct)


def _call(fn, args, **override):
    args = dict(args, **override)
    return fn(*[args[p] for p in PARAMS])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("override", [
    dict(batch=-1), dict(n=-1), dict(iterations=-5), dict(tau=-1.0), dict(tau=float("inf")),
    dict(n_threads=-1), dict(flags=4),
    dict(batch=2**40, n=2**20, m=2**20),
    dict(x_bstride=2**62, batch=3), dict(g_rstride=2**62), dict(gx_bstride=-2**62, batch=3),
], ids=["neg-batch", "neg-n", "neg-iterations", "neg-tau", "inf-tau", "neg-threads",
        "bad-flags", "size-overflow", "x-stride-overflow", "g-stride-overflow",
        "gx-stride-overflow"])
def test_abi_backward_rejects_invalid_arguments(dtype, override):
    ffi, lib, fn, args, (x, g, gx, err, ct) = _abi_args(dtype)
    assert _call(fn, args, **override) == lib.MHC_ERR_INVALID_DIMENSION
    assert err[0] == -1
    np.testing.assert_array_equal(gx, 42)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_abi_backward_pointers_domain_and_memory(dtype):
    ffi, lib, fn, args, (x, g, gx, err, ct) = _abi_args(dtype)
    for name in ("x", "grad_out", "grad_x"):
        assert _call(fn, args, **{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER
    bad = ffi.cast(f"{ct} *", int(ffi.cast("uintptr_t", args["x"])) + 1)
    for name in ("x", "grad_out", "grad_x", "row_sums", "col_sums"):
        assert _call(fn, args, **{name: bad}) == lib.MHC_ERR_MISALIGNED
    np.testing.assert_array_equal(gx, 42)
    assert _call(fn, args, batch=0) == lib.MHC_OK
    x[1, 2, 0] = -1
    assert _call(fn, args) == lib.MHC_ERR_DOMAIN
    assert err[0] == 9 + 6
    np.testing.assert_array_equal(gx, 42)
    assert _call(fn, args, flags=lib.MHC_SK_LOGITS, err_index=ffi.NULL) == lib.MHC_OK
    assert np.isfinite(gx).all()
    # a workspace whose size overflows: out of memory, not a crash
    assert _call(fn, args, iterations=2**62, flags=lib.MHC_SK_LOGITS) == \
        lib.MHC_ERR_OUT_OF_MEMORY


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_abi_backward_heap_workspace_fails_cleanly(dtype):
    ffi, lib, fn, args, (x, g, gx, err, ct) = _abi_args(dtype, batch=3, n=40, m=40)
    live = lib.mhc_debug_live_allocs()
    lib.mhc_debug_fail_allocs_after(0)
    try:
        assert _call(fn, args) == lib.MHC_ERR_OUT_OF_MEMORY
    finally:
        lib.mhc_debug_fail_allocs_after(-1)
    assert lib.mhc_debug_live_allocs() == live
    assert _call(fn, args) == lib.MHC_OK
    assert lib.mhc_debug_live_allocs() == live
    want = SINKHORN_BACKWARD((x, None, None, g), (5, 0.0, False, "rows-first"))
    np.testing.assert_array_equal(gx, want)


def test_abi_backward_threads_give_the_same_result():
    ffi, lib, fn, args, (x, g, gx, err, ct) = _abi_args("float64", batch=20000, n=4, m=4,
                                                        iterations=20)
    assert _call(fn, args, n_threads=1) == lib.MHC_OK
    one = gx.copy()
    gx[...] = 42
    assert _call(fn, args, n_threads=2) == lib.MHC_OK
    np.testing.assert_array_equal(gx, one)
