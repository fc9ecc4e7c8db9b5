"""The fused layer boundary mhc_post_pre (SPEC 2.3): the post step of one connection
and the pre step of the next in one pass, against the float64 equations of
reference.py (post, then pre of its result), at every backend and ISA level, and
bit for bit against the two separate calls of the same backend."""

import numpy as np
import pytest

import mhc_array as mx
import reference as ref
from conftest import Lib, Unchanged, rng_for
from test_mhc import TOL, params

VARIANTS = ["paper", "deepseek-v4"]


def _case(rng, batch, n, C, variant, dtype):
    x = rng.standard_normal(batch + (n, C)).astype(dtype)
    f = rng.standard_normal(batch + (C,)).astype(dtype)
    h_post = (rng.random(batch + (n,)) * 2).astype(dtype)
    h_res = ref.sinkhorn(rng.standard_normal(batch + (n, n)), logits=True).astype(dtype)
    return x, f, h_post, h_res, params(rng, n, C, variant, dtype)


def _want(x, f, h_post, h_res, w, b, a, variant):
    nxt = ref.mhc_post(x, f, h_post, h_res)
    return (nxt, *ref.mhc_pre(nxt, w, b, a, variant=variant))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("batch", [(), (9,), (2, 3)], ids=["token", "T", "BS"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_post_pre_against_the_equations(backend, variant, n, batch, dtype):
    rng = rng_for("post_pre", variant, n, batch, dtype)
    C = 37
    x, f, hp, hr, (w, b, a) = _case(rng, batch, n, C, variant, dtype)
    keep = Unchanged(Lib("numpy"), x, f, hp, hr, w, b, a)
    got = mx.mhc_post_pre(x, f, hp, hr, w, b, a, variant=variant)
    want = _want(x, f, hp, hr, w, b, a, variant)
    shapes = [x.shape, batch + (C,), batch + (n,), batch + (n,), batch + (n, n)]
    for name, g, wnt, shape in zip(("x_next", "h_in", "h_pre", "h_post", "h_res"), got, want,
                                   shapes):
        assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == shape, name
        np.testing.assert_allclose(g, wnt, **TOL[dtype], err_msg=name)
    keep.check()
    # the same backend's two separate calls: the fused pass computes the same numbers
    nxt = mx.mhc_post(x, f, hp, hr)
    sep = (nxt, *mx.mhc_pre(nxt, w, b, a, variant=variant))
    for g, s in zip(got, sep):
        np.testing.assert_array_equal(g, s)


@pytest.mark.parametrize("variant", VARIANTS)
def test_post_pre_in_place_and_out(backend, variant):
    rng = rng_for("post_pre_out", variant)
    x, f, hp, hr, (w, b, a) = _case(rng, (6,), 4, 16, variant, "float32")
    want = _want(x, f, hp, hr, w, b, a, variant)
    y = x.copy()
    got = mx.mhc_post_pre(y, f, hp, hr, w, b, a, variant=variant, out=y)   # the residual
    assert got[0] is y
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, **TOL["float32"])
    out = np.empty_like(x)
    got = mx.mhc_post_pre(x, f, hp, hr, w, b, a, variant=variant, out=out)
    assert got[0] is out
    np.testing.assert_allclose(out, want[0], **TOL["float32"])


def test_post_pre_broadcasts_like_post(backend):
    """One f_out, h_post and h_res for every token (the post step's broadcasting)."""
    rng = rng_for("post_pre_bcast")
    x, f, hp, hr, (w, b, a) = _case(rng, (5,), 4, 12, "paper", "float64")
    got = mx.mhc_post_pre(x, f[0], hp[0], hr[0], w, b, a)
    want = _want(x, np.broadcast_to(f[0], f.shape), np.broadcast_to(hp[0], hp.shape),
                 np.broadcast_to(hr[0], hr.shape), w, b, a, "paper")
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, **TOL["float64"])


@pytest.mark.parametrize("hidden", [4096, 7168])
def test_post_pre_at_deepseek_v4_sizes(hidden):
    """DeepSeek-V4's real sizes (hc_mult 4, hidden 4096 and 7168), float32: the
    fused path against the separate one and the float64 equations (fused boundaries
    of other projects were found wrong at hidden 7168)."""
    rng = rng_for("post_pre_v4", hidden)
    x, f, hp, hr, (w, b, a) = _case(rng, (3,), 4, hidden, "deepseek-v4", "float32")
    w = (w * 0.05).astype(np.float32)
    got = mx.mhc_post_pre(x, f, hp, hr, w, b, a, variant="deepseek-v4")
    nxt = mx.mhc_post(x, f, hp, hr)
    sep = (nxt, *mx.mhc_pre(nxt, w, b, a, variant="deepseek-v4"))
    want = _want(x, f, hp, hr, w, b, a, "deepseek-v4")
    for g, s, wnt in zip(got, sep, want):
        np.testing.assert_array_equal(g, s)
        np.testing.assert_allclose(g, wnt, rtol=1e-5, atol=1e-6)


def test_post_pre_h_res_mixes_the_streams():
    """A non-identity h_res changes x_next (and so the next coefficients)."""
    rng = rng_for("post_pre_mix")
    x, f, hp, hr, (w, b, a) = _case(rng, (4,), 4, 8, "paper", "float64")
    eye = np.broadcast_to(np.eye(4), hr.shape)
    mixed = mx.mhc_post_pre(x, f, hp, hr, w, b, a)
    plain = mx.mhc_post_pre(x, f, hp, eye, w, b, a)
    assert np.abs(mixed[0] - plain[0]).max() > 1e-3
    assert np.abs(mixed[4] - plain[4]).max() > 1e-6


def test_post_pre_errors_name_the_argument():
    rng = rng_for("post_pre_err")
    x, f, hp, hr, (w, b, a) = _case(rng, (3,), 4, 8, "paper", "float64")
    with pytest.raises(mx.ShapeError, match="f_out"):
        mx.mhc_post_pre(x, f[:, :5], hp, hr, w, b, a)
    with pytest.raises(mx.ShapeError, match=r"phi must have shape \(32, 24\)"):
        mx.mhc_post_pre(x, f, hp, hr, w[:-1], b, a)
    with pytest.raises(mx.ShapeError, match=r"fn must have shape \(24, 32\)"):
        mx.mhc_post_pre(x, f, hp, hr, w, b, a, variant="deepseek-v4")
    with pytest.raises(TypeError, match="h_res must be an array"):
        mx.mhc_post_pre(x, f, hp, None, w, b, a)
    with pytest.raises(mx.ShapeError, match="out"):
        mx.mhc_post_pre(x, f, hp, hr, w, b, a, out=np.empty((3, 4, 9)))


def test_layer_post_pre():
    rng = rng_for("layer_post_pre")
    first, second = mx.MHCLayer(4, 8, seed=0, dtype="float64"), mx.MHCLayer(4, 8, seed=1,
                                                                           dtype="float64")
    x = rng.standard_normal((5, 4, 8))
    h_in, _, hp, hr = first.pre(x)
    got = second.post_pre(x, np.tanh(h_in), hp, hr)
    want = _want(x, np.tanh(h_in), hp, hr, second.phi, second.bias, second.alpha, "paper")
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, **TOL["float64"])
