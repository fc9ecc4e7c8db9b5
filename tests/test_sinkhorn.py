"""sinkhorn_knopp (SPEC 2.1, 2.6) against the float64 reference in reference.py."""

import numpy as np
import pytest

import mhc_array as mx
import reference as ref
from conftest import SINK_TOL, Lib, Unchanged, rng_for

# (batch, n, m): square n in {1, 2, 4, 8, 32}, some n x m, the big batch only with n = 4.
CASES = [
    ((), 1, 1),
    ((), 2, 2),
    ((1,), 4, 4),
    ((2, 3, 5), 8, 8),
    ((1,), 32, 32),
    ((2, 3, 5), 2, 2),
    ((4096,), 4, 4),
    ((3,), 3, 5),
    ((2, 2), 5, 3),
    ((), 1, 4),
    ((2,), 4, 1),
]
ORDERS = ("rows-first", "cols-first")
CASE_IDS = ["x".join(map(str, b)) + f"-{n}x{m}" for b, n, m in CASES]


def positive(rng, shape, dtype):
    return rng.uniform(0.05, 1.0, shape).astype(dtype)


def assert_close(got, want, dtype, **override):
    tol = dict(SINK_TOL[dtype])
    tol.update(override)
    np.testing.assert_allclose(got, want, **tol)


# ---------------------------------------------------------------- the reference itself


def test_reference_matches_explicit_loops():
    """The vectorised reference agrees with the plain-loop one (a check of the checker)."""
    rng = rng_for("loops")
    for n, m in [(1, 1), (3, 3), (4, 6), (5, 2)]:
        for order in ("rows-first", "cols-first"):
            x = rng.uniform(0.1, 1, (n, m))
            x[0, 0] = 0.0
            np.testing.assert_allclose(ref.sinkhorn(x, iterations=7, tau=0.01, order=order),
                                       ref.sinkhorn_loops(x, iterations=7, tau=0.01, order=order),
                                       rtol=1e-14, atol=1e-16)


# ---------------------------------------------------------------- the main grid


@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_grid(backend, lib, case, dtype, order):
    batch, n, m = case
    rng = rng_for("grid", case, dtype, order)
    x_np = positive(rng, batch + (n, m), dtype)
    x = lib.asarray(x_np)
    keep = Unchanged(lib, x)
    r = mx.sinkhorn_knopp(x, order=order)
    lib.check(r, dtype, batch + (n, m))
    keep.check()
    want = ref.sinkhorn(x_np, iterations=20, order=order)
    assert_close(lib.to_numpy(r), want, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [((), 4, 4), ((2, 3, 5), 8, 8), ((3,), 3, 5), ((1,), 32, 32)],
                         ids=["4x4", "b-8x8", "b-3x5", "32x32"])
def test_logits(backend, lib, case, dtype):
    batch, n, m = case
    rng = rng_for("logits", case, dtype)
    x_np = (3 * rng.standard_normal(batch + (n, m))).astype(dtype)
    x_np[..., 0, 0] += 40.0  # large logits: exp(x - max) must not overflow
    x = lib.asarray(x_np)
    keep = Unchanged(lib, x)
    for order in ("rows-first", "cols-first"):
        r = mx.sinkhorn_knopp(x, logits=True, order=order, iterations=10)
        lib.check(r, dtype, batch + (n, m))
        got = lib.to_numpy(r)
        assert np.all(np.isfinite(got))
        assert_close(got, ref.sinkhorn(x_np, iterations=10, logits=True, order=order), dtype)
    keep.check()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("iterations", [1, 3, 50])
def test_iterations_and_tau(backend, np_lib, dtype, iterations):
    rng = rng_for("tau", dtype, iterations)
    x = positive(rng, (6, 5, 5), dtype)
    for tau in (0.0, 0.05, 1.0):
        for order in ("rows-first", "cols-first"):
            r = mx.sinkhorn_knopp(x, iterations=iterations, tau=tau, order=order)
            want = ref.sinkhorn(x, iterations=iterations, tau=tau, order=order)
            assert_close(r, want, dtype)


def test_tau_changes_result(backend):
    """tau > 0 is really applied (the result differs from tau = 0 by more than rounding)."""
    x = positive(rng_for("tau2"), (4, 4), "float64")
    a = mx.sinkhorn_knopp(x, tau=0.0)
    b = mx.sinkhorn_knopp(x, tau=0.5)
    assert np.max(np.abs(a - b)) > 1e-3
    np.testing.assert_allclose(b, ref.sinkhorn(x, tau=0.5), **SINK_TOL["float64"])


def test_last_side_exact(backend):
    """rows-first ends with columns: column sums exact; cols-first ends with rows."""
    x = positive(rng_for("exact"), (10, 6, 6), "float64")
    r = mx.sinkhorn_knopp(x, iterations=3, order="rows-first")
    np.testing.assert_allclose(r.sum(axis=-2), 1.0, rtol=1e-13)
    r = mx.sinkhorn_knopp(x, iterations=3, order="cols-first")
    np.testing.assert_allclose(r.sum(axis=-1), 1.0, rtol=1e-13)


# ---------------------------------------------------------------- iterations = 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_iterations_returns_start(backend, lib, dtype):
    rng = rng_for("it0", dtype)
    x_np = positive(rng, (3, 4, 5), dtype)
    x = lib.asarray(x_np)
    r = mx.sinkhorn_knopp(x, iterations=0)
    lib.check(r, dtype, (3, 4, 5))
    np.testing.assert_array_equal(lib.to_numpy(r), x_np)
    # logits: exp(x - max) with the max over each matrix
    y_np = (5 * rng.standard_normal((3, 4, 5))).astype(dtype)
    r = mx.sinkhorn_knopp(lib.asarray(y_np), iterations=0, logits=True)
    lib.check(r, dtype, (3, 4, 5))
    want = np.exp(y_np.astype(np.float64) - y_np.astype(np.float64).max(axis=(-2, -1),
                                                                        keepdims=True))
    assert_close(lib.to_numpy(r), want, dtype, rtol=1e-5 if dtype == "float32" else 1e-13)
    got = lib.to_numpy(r)
    assert np.all(got.max(axis=(-2, -1)) == 1.0)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_and_col_sums(backend, lib, dtype):
    rng = rng_for("targets", dtype)
    B, n, m = 4, 3, 5
    x_np = positive(rng, (B, n, m), dtype)
    x = lib.asarray(x_np)
    # one target pair broadcast over the batch
    rs = np.array([1.0, 2.0, 3.0], dtype=dtype)
    cs = np.array([1.0, 1.0, 2.0, 1.0, 1.0], dtype=dtype)
    for order in ("rows-first", "cols-first"):
        r = mx.sinkhorn_knopp(x, row_sums=lib.asarray(rs), col_sums=lib.asarray(cs),
                              order=order)
        lib.check(r, dtype, (B, n, m))
        got = lib.to_numpy(r)
        assert_close(got, ref.sinkhorn(x_np, row_sums=rs, col_sums=cs, order=order), dtype)
    # the last normalised side (columns, rows-first) hits its target
    r = lib.to_numpy(mx.sinkhorn_knopp(x, row_sums=lib.asarray(rs), col_sums=lib.asarray(cs)))
    np.testing.assert_allclose(r.sum(axis=-2), np.broadcast_to(cs, (B, m)),
                               rtol=1e-5 if dtype == "float32" else 1e-12)
    # per-matrix targets (B, n) and (B, m), equal totals per matrix
    rs_b = rng.uniform(0.5, 2.0, (B, n))
    cs_b = rng.uniform(0.5, 2.0, (B, m))
    cs_b *= (rs_b.sum(-1) / cs_b.sum(-1))[:, None]
    rs_b, cs_b = rs_b.astype(dtype), cs_b.astype(dtype)
    # make the float32 totals agree to well within 1e-6 relative
    cs_b[:, -1] = (rs_b.astype(np.float64).sum(-1) - cs_b[:, :-1].astype(np.float64).sum(-1))
    r = mx.sinkhorn_knopp(x, row_sums=lib.asarray(rs_b), col_sums=lib.asarray(cs_b))
    lib.check(r, dtype, (B, n, m))
    assert_close(lib.to_numpy(r), ref.sinkhorn(x_np, row_sums=rs_b, col_sums=cs_b), dtype)


def test_row_sums_broadcast_batch_axis(backend):
    """row_sums (1, n) and col_sums (B, 1, m)-style leading axes broadcast over (A, B)."""
    rng = rng_for("bcast")
    x = positive(rng, (2, 3, 4, 4), "float64")
    rs = np.array([[1.0, 2.0, 0.5, 0.5]])            # (1, n)
    cs = np.full((3, 4), 1.0)                          # (B, m)
    r = mx.sinkhorn_knopp(x, row_sums=rs, col_sums=cs)
    np.testing.assert_allclose(r, ref.sinkhorn(x, row_sums=rs, col_sums=cs),
                               **SINK_TOL["float64"])


def test_default_targets_rectangular(backend):
    """Defaults: rows 1, columns n/m."""
    x = positive(rng_for("rect"), (2, 3), "float64")
    r = mx.sinkhorn_knopp(x, iterations=200)
    np.testing.assert_allclose(r.sum(axis=-2), 2 / 3, rtol=1e-12)
    np.testing.assert_allclose(r.sum(axis=-1), 1.0, rtol=1e-8)


def test_target_totals_mismatch(backend):
    x = positive(rng_for("mm"), (3, 4), "float64")
    with pytest.raises(ValueError):
        mx.sinkhorn_knopp(x, row_sums=np.ones(3), col_sums=np.ones(4))
    with pytest.raises(ValueError):
        # per-matrix: the second matrix's totals disagree
        mx.sinkhorn_knopp(np.stack([x, x]), row_sums=np.ones((2, 3)),
                          col_sums=np.array([[0.75] * 4, [0.8] * 4]))


# ---------------------------------------------------------------- special values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
def test_zero_rows_and_columns(backend, lib, dtype, order):
    rng = rng_for("zeros", dtype, order)
    x_np = positive(rng, (3, 5, 5), dtype)
    x_np[0, 1, :] = 0.0
    x_np[1, :, 3] = 0.0
    x_np[2, 2, :] = 0.0
    x_np[2, :, 0] = 0.0
    r = mx.sinkhorn_knopp(lib.asarray(x_np), order=order)
    got = lib.to_numpy(r)
    assert not np.any(np.isnan(got))
    assert np.all(got[0, 1, :] == 0) and np.all(got[1, :, 3] == 0)
    assert np.all(got[2, 2, :] == 0) and np.all(got[2, :, 0] == 0)
    assert_close(got, ref.sinkhorn(x_np, order=order), dtype)


def test_all_zero_matrix(backend):
    x = np.zeros((2, 4, 4))
    x[1] = positive(rng_for("z0"), (4, 4), "float64")
    r = mx.sinkhorn_knopp(x)
    assert np.all(r[0] == 0)
    np.testing.assert_allclose(r, ref.sinkhorn(x), **SINK_TOL["float64"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("logits", [False, True])
def test_nan_poisons_only_its_matrix(backend, lib, dtype, logits):
    rng = rng_for("nan", dtype, logits)
    x_np = positive(rng, (4, 3, 3), dtype)
    x_np[2, 1, 0] = np.nan
    r = lib.to_numpy(mx.sinkhorn_knopp(lib.asarray(x_np), logits=logits))
    assert np.all(np.isnan(r[2]))
    others = [0, 1, 3]
    assert np.all(np.isfinite(r[others]))
    assert_close(r[others], ref.sinkhorn(x_np[others], logits=logits), dtype)


def test_negative_entry_domain_error(backend, lib):
    x_np = positive(rng_for("neg"), (2, 3, 4), "float64")
    x_np[1, 2, 0] = -0.25
    x = lib.asarray(x_np)
    keep = Unchanged(lib, x)
    with pytest.raises(mx.DomainError) as ei:
        mx.sinkhorn_knopp(x)
    msg = str(ei.value).replace(" ", "")
    assert "1,2,0" in msg, str(ei.value)
    assert isinstance(ei.value, ValueError)
    keep.check()
    # negative logits are fine
    r = mx.sinkhorn_knopp(x, logits=True)
    assert_close(lib.to_numpy(r), ref.sinkhorn(x_np, logits=True), "float64")


# ---------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out(backend, lib, dtype):
    rng = rng_for("out", dtype)
    x_np = positive(rng, (5, 4, 4), dtype)
    x = lib.asarray(x_np)
    out = lib.asarray(np.full((5, 4, 4), -7.0, dtype=dtype))
    keep = Unchanged(lib, x)
    r = mx.sinkhorn_knopp(x, out=out)
    assert r is out
    keep.check()
    assert_close(lib.to_numpy(out), ref.sinkhorn(x_np), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_in_place(backend, lib, dtype):
    rng = rng_for("inplace", dtype)
    x_np = positive(rng, (5, 3, 6), dtype)
    x = lib.asarray(x_np)
    r = mx.sinkhorn_knopp(x, out=x, order="cols-first", tau=0.01)
    assert r is x
    assert_close(lib.to_numpy(x), ref.sinkhorn(x_np, order="cols-first", tau=0.01), dtype)


def test_out_in_place_logits(backend):
    x0 = 2 * rng_for("inplace-logits").standard_normal((7, 4, 4))
    x = x0.copy()
    r = mx.sinkhorn_knopp(x, out=x, logits=True)
    assert r is x
    np.testing.assert_allclose(x, ref.sinkhorn(x0, logits=True), **SINK_TOL["float64"])


def test_out_wrong_shape_or_dtype(backend):
    x = positive(rng_for("outbad"), (2, 3, 3), "float32")
    with pytest.raises(ValueError):
        mx.sinkhorn_knopp(x, out=np.empty((2, 3, 4), np.float32))
    with pytest.raises((TypeError, ValueError)):
        mx.sinkhorn_knopp(x, out=np.empty((2, 3, 3), np.float64))


# ---------------------------------------------------------------- ragged


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ragged(backend, lib, dtype):
    rng = rng_for("ragged", dtype)
    shapes = [(3, 3), (4, 5), (2, 2), (1, 1), (6, 2)]
    xs_np = [positive(rng, s, dtype) for s in shapes]
    xs = [lib.asarray(a) for a in xs_np]
    keep = Unchanged(lib, *xs)
    for order in ("rows-first", "cols-first"):
        rs = mx.sinkhorn_knopp(xs, order=order, tau=0.01)
        assert isinstance(rs, list) and len(rs) == len(xs)
        for r, a, s in zip(rs, xs_np, shapes):
            lib.check(r, dtype, s)
            assert_close(lib.to_numpy(r), ref.sinkhorn(a, order=order, tau=0.01), dtype)
    rs = mx.sinkhorn_knopp(tuple(xs), logits=True, iterations=5)
    assert isinstance(rs, list)
    for r, a in zip(rs, xs_np):
        assert_close(lib.to_numpy(r), ref.sinkhorn(a, logits=True, iterations=5), dtype)
    keep.check()


def test_ragged_empty_list(backend):
    assert mx.sinkhorn_knopp([]) == []


def test_ragged_mixed_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        mx.sinkhorn_knopp([np.ones((2, 2)), torch.ones((3, 3), dtype=torch.float64)])


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("libname", ["numpy", "torch"])
def test_float16(backend, libname):
    lib = Lib(libname)
    x_np = positive(rng_for("f16"), (6, 4, 4), "float16")
    r = mx.sinkhorn_knopp(lib.asarray(x_np))
    lib.check(r, "float16", (6, 4, 4))
    want = ref.sinkhorn(x_np.astype(np.float64))
    # computed in float32, rounded once to float16 (unit roundoff 2**-11 ~ 4.9e-4)
    np.testing.assert_allclose(lib.to_numpy(r).astype(np.float64), want, rtol=1e-3, atol=1e-4)


def test_bfloat16_torch(backend):
    torch = pytest.importorskip("torch")
    x32 = positive(rng_for("bf16"), (6, 4, 4), "float32")
    x = torch.from_numpy(x32).to(torch.bfloat16)
    r = mx.sinkhorn_knopp(x)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.bfloat16 and r.shape == x.shape
    want = ref.sinkhorn(x.float().numpy())
    np.testing.assert_allclose(r.float().numpy(), want, rtol=8e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_promoted_to_float64(backend, lib, dtype):
    x_np = rng_for("int", dtype).integers(1, 9, (3, 4, 4)).astype(dtype)
    if dtype == "bool":
        x_np[:, np.arange(4), np.arange(4)] = True  # no all-zero row
    r = mx.sinkhorn_knopp(lib.asarray(x_np))
    lib.check(r, "float64", (3, 4, 4))
    np.testing.assert_allclose(lib.to_numpy(r), ref.sinkhorn(x_np.astype(np.float64)),
                               **SINK_TOL["float64"])


def test_complex_unsupported(backend, lib):
    x = lib.asarray(np.ones((3, 3), dtype=np.complex128))
    with pytest.raises(mx.UnsupportedDTypeError) as ei:
        mx.sinkhorn_knopp(x)
    assert isinstance(ei.value, TypeError)
    assert "x" in str(ei.value)


# ---------------------------------------------------------------- shapes and layouts


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 3, 3)])
def test_zero_size_batch(backend, lib, dtype, shape):
    x = lib.asarray(np.zeros(shape, dtype=dtype))
    r = mx.sinkhorn_knopp(x)
    lib.check(r, dtype, shape)
    r = mx.sinkhorn_knopp(x, logits=True)
    lib.check(r, dtype, shape)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_contiguous_numpy(backend, dtype):
    rng = rng_for("strided", dtype)
    base = positive(rng, (6, 5, 10), dtype)
    views = {
        "column-strided": base[:, :, ::2],            # (6, 5, 5), inner stride 2
        "row-strided": base[:, :, :5],                 # rows strided, inner contiguous
        "batch-strided": base[::2],                    # every other matrix
        "transposed": base[:, :, :5].transpose(0, 2, 1),
        "swapped-batch": np.swapaxes(positive(rng, (5, 6, 5), dtype), 0, 1),
        "negative-stride": base[::-1, ::-1, ::3],
    }
    before = base.copy()
    for name, v in views.items():
        r = mx.sinkhorn_knopp(v, order="cols-first")
        assert r.shape == v.shape and r.dtype == v.dtype, name
        assert_close(r, ref.sinkhorn(v, order="cols-first"), dtype, err_msg=name)
    np.testing.assert_array_equal(base, before)


def test_non_contiguous_torch(backend):
    torch = pytest.importorskip("torch")
    base = torch.from_numpy(positive(rng_for("tstrided"), (4, 6, 6), "float32"))
    for v in (base.transpose(-1, -2), base[:, :, ::2], base[:, ::2, :]):
        r = mx.sinkhorn_knopp(v)
        assert isinstance(r, torch.Tensor) and r.shape == v.shape
        assert_close(r.numpy(), ref.sinkhorn(v.numpy()), "float32")


def test_non_contiguous_array_api_strict(backend):
    xp = pytest.importorskip("array_api_strict")
    base_np = positive(rng_for("sstrided"), (3, 4, 8), "float64")
    v = xp.asarray(base_np)[:, :, ::2]
    r = mx.sinkhorn_knopp(v)
    assert tuple(r.shape) == (3, 4, 4)
    assert_close(np.from_dlpack(r), ref.sinkhorn(base_np[:, :, ::2]), "float64")


def test_read_only_input(backend):
    x = positive(rng_for("ro"), (3, 4, 4), "float32")
    x.setflags(write=False)
    r = mx.sinkhorn_knopp(x)
    assert_close(r, ref.sinkhorn(x), "float32")
    r = mx.sinkhorn_knopp(x, logits=True, iterations=3)
    assert_close(r, ref.sinkhorn(x, logits=True, iterations=3), "float32")
    # read-only targets too
    rs = np.ones(4, np.float32)
    rs.setflags(write=False)
    r = mx.sinkhorn_knopp(x, row_sums=rs, col_sums=rs)
    assert_close(r, ref.sinkhorn(x), "float32")


def test_read_only_out_rejected(backend):
    x = positive(rng_for("ro-out"), (3, 3), "float64")
    out = np.zeros((3, 3))
    out.setflags(write=False)
    with pytest.raises((ValueError, TypeError)):
        mx.sinkhorn_knopp(x, out=out)
    assert np.all(out == 0)


@pytest.mark.parametrize("libname", ["numpy", "torch"])  # libraries with in-place writes
def test_result_does_not_alias_input(backend, libname):
    lib = Lib(libname)
    x_np = positive(rng_for("alias"), (2, 3, 3), "float64")
    x = lib.asarray(x_np)
    r = mx.sinkhorn_knopp(x, iterations=0)
    # writing into the result must not change x
    r_np = lib.to_numpy(r)
    if lib.name == "numpy":
        r[...] = 5.0
    else:
        r.fill_(5.0)
    np.testing.assert_array_equal(lib.to_numpy(x), x_np)
    np.testing.assert_array_equal(r_np, x_np)


def test_ragged_with_targets_and_out(backend):
    rng = rng_for("ragged-targets")
    xs = [positive(rng, (2, 3), "float64"), positive(rng, (4, 4), "float64")]
    before = [a.copy() for a in xs]
    rs = [np.array([1.0, 2.0]), np.array([0.5, 0.5, 1.0, 2.0])]
    cs = [np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])]
    outs = [np.empty((2, 3)), np.empty((4, 4))]
    res = mx.sinkhorn_knopp(xs, row_sums=rs, col_sums=cs, out=outs, order="cols-first")
    assert isinstance(res, list) and len(res) == 2
    for r, o, a, r_t, c_t in zip(res, outs, xs, rs, cs):
        assert r is o
        np.testing.assert_allclose(o, ref.sinkhorn(a, row_sums=r_t, col_sums=c_t,
                                                   order="cols-first"), **SINK_TOL["float64"])
    for a, b in zip(xs, before):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the 4x4 (mHC) kernel
# The native 4x4 kernel keeps 8 or 16 matrices in the lanes of a register, runs groups
# of several registers, and iterates on scaling vectors, falling back to explicit
# normalisation for lanes whose denominators reach 0, NaN or overflow. Batches of 1 to
# 61 matrices cover whole groups, single registers and the padded tail; special
# matrices sit at lanes that share registers with ordinary ones.

SPECIAL_4X4 = ("zero-row", "zero-col", "all-zero", "nan", "huge", "tiny", "inf")


def _special_batch(rng, batch, dtype, kind, logits):
    x = (2 * rng.standard_normal((batch, 4, 4)) if logits
         else rng.uniform(0.05, 1.0, (batch, 4, 4))).astype(dtype)
    big = np.finfo(dtype).max / 8
    for b in range(kind, batch, 7):          # every 7th matrix, from a different start
        what = SPECIAL_4X4[(b // 7) % len(SPECIAL_4X4)]
        if what == "zero-row" and not logits:
            x[b, b % 4, :] = 0
        elif what == "zero-col" and not logits:
            x[b, :, (b + 1) % 4] = 0
        elif what == "all-zero" and not logits:
            x[b] = 0
        elif what == "nan":
            x[b, (b + 2) % 4, b % 4] = np.nan
        elif what == "huge" and not logits:
            x[b] *= big
        elif what == "tiny" and not logits:
            x[b] *= np.finfo(dtype).tiny * 16
        elif what == "inf" and not logits:
            x[b, 1, 2] = np.inf
    return x


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NumPy's own, on inf input
@pytest.mark.parametrize("batch", [1, 7, 8, 9, 16, 23, 24, 25, 47, 48, 49, 61])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_4x4_batches_across_lane_groups(backend, batch, dtype):
    rng = rng_for("4x4-batches", batch, dtype)
    for logits in (False, True):
        for order in ORDERS:
            x = _special_batch(rng, batch, dtype, batch % 7, logits)
            keep = x.copy()
            got = np.asarray(mx.sinkhorn_knopp(x, logits=logits, order=order))
            want = ref.sinkhorn(x, logits=logits, order=order)
            np.testing.assert_array_equal(x, keep)
            nan = np.isnan(want).any(axis=(-2, -1))
            assert np.all(np.isnan(got[nan])), (logits, order)
            # 'huge' matrices overflow float sums in any implementation; they must not
            # disturb their lane neighbours
            fine = ~nan & np.isfinite(want).all(axis=(-2, -1))
            assert_close(got[fine], want[fine], dtype, err_msg=f"{logits} {order}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ORDERS)
def test_4x4_tau_and_targets(backend, dtype, order):
    rng = rng_for("4x4-targets", dtype, order)
    x = rng.uniform(0.0, 1.0, (53, 4, 4)).astype(dtype)
    x[5, 2, :] = 0
    x[11, :, 1] = 0
    rs = rng.uniform(0.5, 2.0, (53, 4)).astype(dtype)
    cs = rng.uniform(0.5, 2.0, (53, 4)).astype(dtype)
    cs *= (rs.sum(-1, dtype=np.float64) / cs.sum(-1, dtype=np.float64))[:, None].astype(dtype)
    for tau in (0.0, 0.25):
        for iterations in (0, 1, 3, 20):
            got = np.asarray(mx.sinkhorn_knopp(x, tau=tau, order=order, row_sums=rs,
                                               col_sums=cs, iterations=iterations))
            want = ref.sinkhorn(x, tau=tau, order=order, row_sums=rs, col_sums=cs,
                                iterations=iterations)
            assert_close(got, want, dtype, err_msg=f"tau={tau} it={iterations}")
    assert np.all(got[5, 2, :] == 0) and np.all(got[11, :, 1] == 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_4x4_strided_batch_and_in_place(backend, dtype):
    rng = rng_for("4x4-strided", dtype)
    base = rng.standard_normal((37, 6, 5)).astype(dtype)
    x = base[:, 1:5, :4]                          # rows 5 apart, matrices 30 apart
    want = ref.sinkhorn(x, logits=True, order="cols-first")
    got = mx.sinkhorn_knopp(x, logits=True, order="cols-first")
    assert_close(np.asarray(got), want, dtype)
    y = np.ascontiguousarray(x)
    r = mx.sinkhorn_knopp(y, logits=True, order="cols-first", out=y)
    assert r is y or np.shares_memory(r, y)
    assert_close(y, want, dtype)
