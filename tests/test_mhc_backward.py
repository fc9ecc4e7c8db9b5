"""The backward of the mHC pre step without torch: the non-public record
MHC_PRE_BACKWARD at every backend and ISA level against central differences of
the float64 reference (reference.mhc_pre), and the raw C ABI
mhc_hc_pre_backward_* (argument validation, overlap, out of memory, threads).
The torch autograd built on it is tested in test_torch_mhc.py."""

import numpy as np
import pytest
import reference as ref
from conftest import native_available

from mhc_array._mhc import MHC_POST_BACKWARD, MHC_PRE_BACKWARD

VARIANTS = ["paper", "deepseek-v4"]


def _params(rng, n, C, variant):
    k = (2 + n) * n
    w = rng.standard_normal((n * C, k)) * (2.0 / np.sqrt(n * C))
    if variant == "deepseek-v4":
        w = np.ascontiguousarray(w.T)
    return w, rng.standard_normal(k) * 0.5, np.array([0.8, 0.6, 1.5])


def _loss(ups, x, w, b, a, iterations, variant):
    out = ref.mhc_pre(x, w, b, a, iterations=iterations, variant=variant)
    return sum(float(np.sum(u * o)) for u, o in zip(ups, out))


def _numeric(ups, args, which, iterations, variant, h=1e-6):
    args = list(args)
    g = np.zeros_like(args[which])
    for idx in np.ndindex(g.shape):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[which][idx] += h
        minus[which][idx] -= h
        g[idx] = (_loss(ups, *plus, iterations, variant) -
                  _loss(ups, *minus, iterations, variant)) / (2 * h)
    return g


def _param_grads(variant, x, gz, y, gp, gw, n):
    """The parameters' gradients from the record's outputs (as the torch autograd
    takes them): phi's is the record's gw (K, n*C), transposed for the paper's
    layout, which must equal sum_t v_t^T gp_t of its per-token gp."""
    K = (2 + n) * n
    v = x.reshape(-1, x.shape[-2] * x.shape[-1])
    gz, y, gp = gz.reshape(-1, K), y.reshape(-1, K), gp.reshape(-1, K)
    np.testing.assert_allclose(gw, gp.T @ v, rtol=1e-12, atol=1e-14 * np.abs(gw).max())
    gw = gw.T if variant == "paper" else gw
    ga = np.array([np.sum(gz[:, :n] * y[:, :n]), np.sum(gz[:, n:2 * n] * y[:, n:2 * n]),
                   np.sum(gz[:, 2 * n:] * y[:, 2 * n:])])
    return gw, gz.sum(0), ga


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,C,iterations", [(3, 5, 4), (4, 19, 1), (1, 7, 2)])
def test_record_matches_finite_differences(backend, variant, n, C, iterations):
    rng = np.random.default_rng(n * 100 + C)
    x = rng.standard_normal((2, 3, n, C))
    w, b, a = _params(rng, n, C, variant)
    ups = [rng.standard_normal(s) for s in ((2, 3, C), (2, 3, n), (2, 3, n), (2, 3, n, n))]
    gx, gz, y, gp, gw = MHC_PRE_BACKWARD((x, w, b, a, *ups), (iterations, 1e-6, variant, 1e-6))
    assert gx.shape == x.shape and gz.shape == y.shape == gp.shape == (2, 3, (2 + n) * n)
    assert gw.shape == ((2 + n) * n, n * C)
    got = (gx, *_param_grads(variant, x, gz, y, gp, gw, n))
    for which, g in enumerate(got):
        want = _numeric(ups, (x, w, b, a), which, iterations, variant)
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-7 * np.abs(want).max(),
                                   err_msg=f"argument {which}")
    # y is the normalised projection of the forward
    v = x.reshape(2, 3, n * C)
    p = v @ (w if variant == "paper" else w.T)
    np.testing.assert_allclose(y, p / np.sqrt(np.mean(v * v, -1, keepdims=True) + 1e-6),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_upstream_gradients_are_zero(backend, variant):
    rng = np.random.default_rng(5)
    n, C = 4, 16
    x = rng.standard_normal((6, n, C))
    w, b, a = _params(rng, n, C, variant)
    ups = [rng.standard_normal(s) for s in ((6, C), (6, n), (6, n), (6, n, n))]
    for keep in range(4):
        only = [u if i == keep else None for i, u in enumerate(ups)]
        zeros = [u if i == keep else np.zeros_like(u) for i, u in enumerate(ups)]
        got = MHC_PRE_BACKWARD((x, w, b, a, *only), (5, 1e-6, variant, 1e-6))
        want = MHC_PRE_BACKWARD((x, w, b, a, *zeros), (5, 1e-6, variant, 1e-6))
        for g1, g2 in zip(got, want):
            np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_close_to_float64_many_streams(backend, variant):
    """n = 16 (the Sinkhorn backward's one-matrix path), C = 37 (vector tails), 50
    tokens (partial sub-blocks): float32 within 1e-4 of float64."""
    rng = np.random.default_rng(16)
    n, C = 16, 37
    x = rng.standard_normal((50, n, C))
    w, b, a = _params(rng, n, C, variant)
    ups = [rng.standard_normal(s) for s in ((50, C), (50, n), (50, n), (50, n, n))]
    opts = (6, 1e-6, variant, 1e-6)
    g64 = MHC_PRE_BACKWARD((x, w, b, a, *ups), opts)
    g32 = MHC_PRE_BACKWARD(tuple(t.astype(np.float32) for t in (x, w, b, a, *ups)), opts)
    for name, u, v in zip(("g_x", "gz", "y", "gp", "gw"), g32, g64):
        assert u.dtype == np.float32
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-4 * np.abs(v).max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n,C", [(4, 1100), (3, 37), (1, 9)])
def test_projection_gradient_over_sub_blocks_and_threads(backend, dtype, n, C):
    """gw, summed over the tokens by the kernel (sub-blocks of a few tokens at C =
    1100; K = 15 and 3 leave tiles' remainders, C = 37 and 9 vector tails), equals
    sum_t gp_t^T v_t of the record's own per-token gp in float64, at 1 to 3 threads
    and with fewer tokens than threads; g_x (tiles of 4, 3, 2 and 1 tokens: 39 = 28 +
    4 + 4 + 3 at C = 1100) against the float64 record where the dtype is float32."""
    import mhc_array as mx
    rng = np.random.default_rng(n * C)
    K = (2 + n) * n
    for tokens in (39, 2, 1):
        x = rng.standard_normal((tokens, n, C))
        ups = [rng.standard_normal(s) for s in ((tokens, C), (tokens, n), (tokens, n),
                                                (tokens, n, n))]
        for variant in VARIANTS:
            w, b, a = _params(rng, n, C, variant)
            args = tuple(t.astype(dtype) for t in (x, w, b, a, *ups))
            for threads in (1, 2, 3):
                with mx.use_num_threads(threads):
                    *_, gp, gw = MHC_PRE_BACKWARD(args, (3, 1e-6, variant, 1e-6))
                assert gw.shape == (K, n * C) and gw.dtype == np.dtype(dtype)
                want = gp.reshape(-1, K).astype(np.float64).T @ x.reshape(tokens, n * C)
                tol = 1e-12 if dtype == "float64" else 2e-5
                np.testing.assert_allclose(gw, want, rtol=0, atol=tol * np.abs(want).max(),
                                           err_msg=f"{tokens} tokens, {threads} threads")
            if dtype == "float32":
                g_x = MHC_PRE_BACKWARD(args, (3, 1e-6, variant, 1e-6))[0]
                g64 = MHC_PRE_BACKWARD((x, w, b, a, *ups), (3, 1e-6, variant, 1e-6))[0]
                np.testing.assert_allclose(g_x, g64, rtol=0, atol=1e-4 * np.abs(g64).max())


def test_record_checks_shapes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4))
    w, b, a = _params(rng, 2, 4, "paper")
    with pytest.raises(ValueError, match="g_res"):
        MHC_PRE_BACKWARD((x, w, b, a, None, None, None, np.ones((3, 2, 3))),
                         (2, 1e-6, "paper", 1e-6))
    with pytest.raises(ValueError, match="g_in"):
        MHC_PRE_BACKWARD((x, w, b, a, np.ones((3, 5)), None, None, None),
                         (2, 1e-6, "paper", 1e-6))


# ---------------------------------------------------------------- the post step

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n,C", [(4, 64), (3, 21), (16, 5)])
def test_post_backward_against_the_equations(backend, dtype, n, C):
    """x_next[i] = sum_j h_res[i, j] x[j] + h_post[i] f: its gradients written out
    in float64 here, per token (C = 21: vector tails; n = 16: many streams)."""
    rng = np.random.default_rng(n * C)
    x = rng.standard_normal((2, 3, n, C))
    f = rng.standard_normal((2, 3, C))
    hp = rng.random((2, 3, n))
    hr = rng.random((2, 3, n, n))
    g = rng.standard_normal(x.shape)
    want = (np.einsum("...ij,...ic->...jc", hr, g), np.einsum("...i,...ic->...c", hp, g),
            np.einsum("...ic,...c->...i", g, f), np.einsum("...ic,...jc->...ij", g, x))
    got = MHC_POST_BACKWARD(tuple(a.astype(dtype) for a in (x, f, hp, hr, g)))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-5)
    for name, u, w in zip(("g_x", "g_f", "g_post", "g_res"), got, want):
        assert u.dtype == np.dtype(dtype) and u.shape == w.shape
        np.testing.assert_allclose(u, w, **tol, err_msg=name)
    # broadcast operands (one f_out, one h_res per batch row): per-token results
    got = MHC_POST_BACKWARD((x, f[0, 0], hp, hr[:, :1], g))
    want_b = (np.einsum("...ij,...ic->...jc", np.broadcast_to(hr[:, :1], hr.shape), g),
              np.einsum("...i,...ic->...c", hp, g), np.einsum("...ic,c->...i", g, f[0, 0]),
              want[3])
    for name, u, w in zip(("g_x", "g_f", "g_post", "g_res"), got, want_b):
        np.testing.assert_allclose(u, w, rtol=1e-12, atol=1e-12, err_msg=name)


def test_post_backward_checks_shapes():
    x = np.ones((3, 2, 4))
    with pytest.raises(ValueError, match="grad"):
        MHC_POST_BACKWARD((x, np.ones((3, 4)), np.ones((3, 2)), np.ones((3, 2, 2)),
                           np.ones((3, 2, 5))))


# ---------------------------------------------------------------- the C ABI

PARAMS = ("x", "x_tstride", "tokens", "n", "C", "phi", "ldp", "phi_t", "bias", "alpha",
          "variant", "iterations", "norm_eps", "hc_eps", "g_in", "g_pre", "g_post", "g_res",
          "g_x", "gx_tstride", "gz", "y", "gp", "gw", "isa", "n_threads")


def _abi(dtype, tokens=5, n=3, C=8, iterations=4, variant=0):
    if not native_available():
        pytest.skip("native backend unavailable")
    from mhc_array._native import ffi, lib
    ct = "float" if dtype == "float32" else "double"
    sfx = "f32" if dtype == "float32" else "f64"
    rng = np.random.default_rng(9)
    K, L = (2 + n) * n, n * C
    x = rng.standard_normal((tokens, L)).astype(dtype)
    phi = (rng.standard_normal((L, K)) * 0.3).astype(dtype)
    phit = np.ascontiguousarray(phi.T)
    b, a = rng.standard_normal(K).astype(dtype), np.array([0.8, 0.6, 1.5], dtype)
    gi, gpre, gpost, gres = (rng.standard_normal(s).astype(dtype) for s in
                             ((tokens, C), (tokens, n), (tokens, n), (tokens, n * n)))
    outs = [np.full(s, 42, dtype) for s in ((tokens, L), (tokens, K), (tokens, K),
                                           (tokens, K), (K, L))]
    buf = [ffi.from_buffer(f"{ct}[]", v) for v in (x, phi, phit, b, a, gi, gpre, gpost, gres,
                                                   *outs)]
    # the projection in the variant's layout: phi (L, K), or V4's fn (K, L) = phi^T
    args = dict(x=buf[0], x_tstride=L, tokens=tokens, n=n, C=C, phi=buf[2 if variant else 1],
                ldp=L if variant else K, phi_t=buf[2],
                bias=buf[3], alpha=buf[4], variant=variant, iterations=iterations,
                norm_eps=1e-6, hc_eps=1e-6, g_in=buf[5], g_pre=buf[6], g_post=buf[7],
                g_res=buf[8], g_x=buf[9], gx_tstride=L, gz=buf[10], y=buf[11], gp=buf[12],
                gw=buf[13], isa=-1, n_threads=1)
    fn = getattr(lib, f"mhc_hc_pre_backward_{sfx}")
    return ffi, lib, fn, args, (x, outs, ct)


def _call(fn, args, **override):
    args = dict(args, **override)
    return fn(*[args[p] for p in PARAMS])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("override", [
    dict(tokens=-1), dict(n=0), dict(n=17), dict(C=0), dict(iterations=-1), dict(variant=2),
    dict(norm_eps=-1.0), dict(hc_eps=float("inf")), dict(n_threads=-1), dict(ldp=14),
    dict(x_tstride=23), dict(gx_tstride=2**62), dict(C=2**62), dict(tokens=2**62),
], ids=["neg-tokens", "zero-n", "n-above-16", "zero-C", "neg-iterations", "bad-variant",
        "neg-norm-eps", "inf-hc-eps", "neg-threads", "ldp-below-K", "x-stride-below-L",
        "gx-stride-overflow", "L-overflow", "tokens-overflow"])
def test_native_abi_rejects_invalid_arguments(dtype, override):
    ffi, lib, fn, args, (x, outs, ct) = _abi(dtype)
    assert _call(fn, args, **override) == lib.MHC_ERR_INVALID_DIMENSION
    for o in outs:
        np.testing.assert_array_equal(o, 42)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_native_abi_pointers_overlap_and_memory(dtype):
    ffi, lib, fn, args, (x, outs, ct) = _abi(dtype)
    for name in ("x", "phi", "phi_t", "bias", "alpha", "g_x", "gz", "y", "gp"):
        assert _call(fn, args, **{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER
    bad = ffi.cast(f"{ct} *", int(ffi.cast("uintptr_t", args["x"])) + 1)
    for name in ("x", "phi", "phi_t", "g_in", "g_res", "g_x", "gp", "gw"):
        assert _call(fn, args, **{name: bad}) == lib.MHC_ERR_MISALIGNED
    assert _call(fn, args, g_x=args["x"]) == lib.MHC_ERR_INVALID_DIMENSION   # overlaps x
    for o in outs:
        np.testing.assert_array_equal(o, 42)
    assert _call(fn, args, tokens=0) == lib.MHC_OK
    # a Sinkhorn workspace whose size overflows: out of memory, not a crash
    assert _call(fn, args, iterations=2**62) == lib.MHC_ERR_OUT_OF_MEMORY
    live = lib.mhc_debug_live_allocs()
    lib.mhc_debug_fail_allocs_after(0)
    try:
        assert _call(fn, args) == lib.MHC_ERR_OUT_OF_MEMORY
    finally:
        lib.mhc_debug_fail_allocs_after(-1)
    assert lib.mhc_debug_live_allocs() == live
    assert _call(fn, args, g_in=ffi.NULL, g_res=ffi.NULL) == lib.MHC_OK
    assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("variant", [0, 1])
def test_native_abi_threads_give_the_same_result(variant):
    ffi, lib, fn, args, (x, outs, ct) = _abi("float64", tokens=3000, n=4, C=64,
                                             iterations=20, variant=variant)
    assert _call(fn, args, n_threads=1) == lib.MHC_OK
    one = [o.copy() for o in outs]
    for o in outs:
        o[...] = 42
    assert _call(fn, args, n_threads=2) == lib.MHC_OK
    for o, w in zip(outs[:4], one):
        np.testing.assert_array_equal(o, w)
    # gw: a sum per thread's range of tokens, the ranges added in order -- the same
    # for the same thread count, and the float64 sum to rounding
    np.testing.assert_allclose(outs[4], one[4], rtol=1e-12, atol=1e-12 * np.abs(one[4]).max())
    two = outs[4].copy()
    for _ in range(3):
        outs[4][...] = 42
        assert _call(fn, args, n_threads=2) == lib.MHC_OK
        np.testing.assert_array_equal(outs[4], two)


POST_PARAMS = ("x", "x_tstride", "f", "f_tstride", "h_post", "h_res", "g", "g_tstride",
               "tokens", "n", "C", "g_x", "gx_tstride", "g_f", "g_post", "g_res", "isa",
               "n_threads")


def _post_abi(dtype, tokens=5, n=3, C=8):
    if not native_available():
        pytest.skip("native backend unavailable")
    from mhc_array._native import ffi, lib
    ct = "float" if dtype == "float32" else "double"
    rng = np.random.default_rng(3)
    ins = [rng.standard_normal(s).astype(dtype) for s in
           ((tokens, n * C), (tokens, C), (tokens, n), (tokens, n * n), (tokens, n * C))]
    outs = [np.full(s, 42, dtype) for s in ((tokens, n * C), (tokens, C), (tokens, n),
                                           (tokens, n * n))]
    b = [ffi.from_buffer(f"{ct}[]", v) for v in (*ins, *outs)]
    args = dict(x=b[0], x_tstride=n * C, f=b[1], f_tstride=C, h_post=b[2], h_res=b[3], g=b[4],
                g_tstride=n * C, tokens=tokens, n=n, C=C, g_x=b[5], gx_tstride=n * C, g_f=b[6],
                g_post=b[7], g_res=b[8], isa=-1, n_threads=1)
    fn = getattr(lib, f"mhc_hc_post_backward_{'f32' if dtype == 'float32' else 'f64'}")
    return ffi, lib, fn, args, (outs, ct)


def _post_call(fn, args, **override):
    args = dict(args, **override)
    return fn(*[args[p] for p in POST_PARAMS])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_native_abi_post_backward_validation(dtype):
    ffi, lib, fn, args, (outs, ct) = _post_abi(dtype)
    for override in (dict(tokens=-1), dict(n=0), dict(n=17), dict(C=0), dict(n_threads=-1),
                     dict(f_tstride=-1), dict(f_tstride=3), dict(g_tstride=23),
                     dict(gx_tstride=2**62), dict(C=2**62), dict(tokens=2**62)):
        assert _post_call(fn, args, **override) == lib.MHC_ERR_INVALID_DIMENSION, override
    for name in ("x", "f", "h_post", "h_res", "g", "g_x", "g_f", "g_post", "g_res"):
        assert _post_call(fn, args, **{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER
    bad = ffi.cast(f"{ct} *", int(ffi.cast("uintptr_t", args["x"])) + 1)
    for name in ("x", "g", "g_x", "g_res"):
        assert _post_call(fn, args, **{name: bad}) == lib.MHC_ERR_MISALIGNED
    for o in outs:
        np.testing.assert_array_equal(o, 42)
    assert _post_call(fn, args, tokens=0) == lib.MHC_OK
    assert _post_call(fn, args, f_tstride=0) == lib.MHC_OK      # one f for all tokens
    assert all(np.isfinite(o).all() for o in outs)
