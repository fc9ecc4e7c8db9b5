"""mhc_array.torch: the differentiable Sinkhorn-Knopp (SPEC 2.7) -- gradients
against torch autograd through a plain loop, gradcheck at every backend and ISA
level, the custom ops under opcheck and torch.compile."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mhc_array as mx  # noqa: E402
import mhc_array.torch as mt  # noqa: E402
from mhc_array.torch import _distances  # noqa: E402
from mhc_array.errors import DomainError  # noqa: E402

ORDERS = ["rows-first", "cols-first"]


def loop_reference(x, *, iterations, tau=0.0, logits=False, order="rows-first",
                   row_sums=None, col_sums=None):
    """SPEC 2.1's iteration written plainly in torch (autograd differentiates it)."""
    n, m = x.shape[-2], x.shape[-1]
    M = torch.exp(x - x.amax(dim=(-2, -1), keepdim=True)) if logits else x
    r = torch.ones(n, dtype=x.dtype) if row_sums is None else row_sums
    c = torch.full((m,), n / m, dtype=x.dtype) if col_sums is None else col_sums

    def rows(M):
        s = M.sum(dim=-1, keepdim=True) + tau
        return torch.where(s == 0, torch.zeros_like(M), M / torch.where(s == 0, 1.0, s)
                           * r[..., :, None])

    def cols(M):
        s = M.sum(dim=-2, keepdim=True) + tau
        return torch.where(s == 0, torch.zeros_like(M), M / torch.where(s == 0, 1.0, s)
                           * c[..., None, :])

    for _ in range(iterations):
        M = cols(rows(M)) if order == "rows-first" else rows(cols(M))
    return M


def _targets(batch, n, m, gen):
    rs = torch.rand(batch + (n,), dtype=torch.float64, generator=gen) + 0.5
    cs = torch.rand(batch + (m,), dtype=torch.float64, generator=gen) + 0.5
    cs = cs / cs.sum(-1, keepdim=True) * rs.sum(-1, keepdim=True)
    return rs, cs


def _input(shape, logits, gen, dtype=torch.float64):
    if logits:
        return torch.randn(shape, dtype=dtype, generator=gen) * 2
    return torch.rand(shape, dtype=dtype, generator=gen) + 0.1


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tau", [0.0, 0.1])
@pytest.mark.parametrize("targets", [False, True])
def test_gradcheck(backend, logits, order, tau, targets):
    gen = torch.Generator().manual_seed(hash((logits, order, tau, targets)) % 2**31)
    for n, m in ((3, 4), (4, 4)):
        x = _input((3, n, m), logits, gen).requires_grad_()
        rs, cs = _targets((3,), n, m, gen) if targets else (None, None)

        def f(x, rs=rs, cs=cs):
            return mt.sinkhorn_knopp(x, iterations=5, tau=tau, logits=logits, order=order,
                                     row_sums=rs, col_sums=cs)
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("targets", [False, True])
def test_gradient_matches_autograd_through_a_loop(backend, logits, order, targets):
    gen = torch.Generator().manual_seed(7 + 2 * logits + 4 * targets)
    for shape, tau in (((5, 3, 4), 0.0), ((2, 3, 6, 5), 0.05), ((4, 4), 0.0)):
        x = _input(shape, logits, gen).requires_grad_()
        rs, cs = _targets(shape[:-2], shape[-2], shape[-1], gen) if targets else (None, None)
        up = torch.randn(shape, dtype=torch.float64, generator=gen)
        kw = dict(iterations=7, tau=tau, logits=logits, order=order, row_sums=rs, col_sums=cs)
        y = mt.sinkhorn_knopp(x, **kw)
        (g,) = torch.autograd.grad(y, x, up)
        xr = x.detach().clone().requires_grad_()
        yr = loop_reference(xr, **kw)
        (gr,) = torch.autograd.grad(yr, xr, up)
        torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-12 * float(gr.abs().max()))


@pytest.mark.parametrize("logits", [False, True])
def test_float32_gradient_close_to_float64(backend, logits):
    gen = torch.Generator().manual_seed(11 + logits)
    x64 = _input((4096, 4, 4), logits, gen)
    up = torch.randn((4096, 4, 4), dtype=torch.float64, generator=gen)
    grads = {}
    for dt in (torch.float32, torch.float64):
        x = x64.to(dt).requires_grad_()
        y = mt.sinkhorn_knopp(x, iterations=20, logits=logits)
        (grads[dt],) = torch.autograd.grad(y, x, up.to(dt))
        assert grads[dt].dtype == dt
    g64, g32 = grads[torch.float64], grads[torch.float32].double()
    scale = float(g64.abs().max())
    assert float((g32 - g64).abs().max()) <= 1e-4 * scale


def test_zero_row_gives_zero_gradient_and_no_nan(backend):
    """A zero row (column) normalised first stays 0 and passes no gradient; the
    other entries get the loop's gradient, finite."""
    gen = torch.Generator().manual_seed(3)
    for order, axis in (("rows-first", 1), ("cols-first", 2)):
        x = torch.rand((2, 4, 4), dtype=torch.float64, generator=gen) + 0.1
        if axis == 1:
            x[0, 1, :] = 0
        else:
            x[0, :, 1] = 0
        x.requires_grad_()
        up = torch.randn(x.shape, dtype=x.dtype, generator=gen)
        y = mt.sinkhorn_knopp(x, iterations=6, order=order)
        (g,) = torch.autograd.grad(y, x, up)
        assert torch.isfinite(g).all() and torch.isfinite(y).all()
        zero = (0, 1, slice(None)) if axis == 1 else (0, slice(None), 1)
        assert (g[zero] == 0).all() and (y[zero] == 0).all()
        xr = x.detach().clone().requires_grad_()
        (gr,) = torch.autograd.grad(loop_reference(xr, iterations=6, order=order), xr, up)
        torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-13)


def test_half_precision_in_and_out(backend):
    for dt in (torch.float16, torch.bfloat16):
        x = torch.randn((3, 4, 4)).to(dt).requires_grad_()
        y = mt.sinkhorn_knopp(x, iterations=5, logits=True)
        assert y.dtype == dt
        y.float().square().sum().backward()
        assert x.grad.dtype == dt and torch.isfinite(x.grad.float()).all()


def test_batched_and_broadcast_targets(backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((3, 2, 3, 3), dtype=torch.float64, generator=gen).requires_grad_()
    rs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)   # broadcast over the batch
    up = torch.randn(x.shape, dtype=x.dtype, generator=gen)
    (g,) = torch.autograd.grad(mt.sinkhorn_knopp(x, iterations=4, row_sums=rs), x, up)
    xr = x.detach().clone().requires_grad_()
    cs = torch.full((3,), 2.0, dtype=torch.float64)
    (gr,) = torch.autograd.grad(loop_reference(xr, iterations=4, row_sums=rs, col_sums=cs),
                                xr, up)
    torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- the custom ops

def test_opcheck_both_ops():
    gen = torch.Generator().manual_seed(9)
    x = torch.rand((3, 4, 5), dtype=torch.float64, generator=gen) + 0.1
    rs, cs = _targets((3,), 4, 5, gen)
    g = torch.randn((3, 4, 5), dtype=torch.float64, generator=gen)
    fwd = torch.ops.mhc_array.sinkhorn_knopp.default
    bwd = torch.ops.mhc_array.sinkhorn_knopp_backward.default
    xp = torch.rand((3, 5, 4), dtype=torch.float64, generator=gen).permute(0, 2, 1) + 0.1
    gp = g.transpose(0, 2).contiguous().transpose(0, 2)
    assert not xp.is_contiguous() and not gp.is_contiguous()
    for xx, gg in ((x, g), (xp, gp)):
        for logits, order in ((False, "rows-first"), (True, "cols-first")):
            opts = (5, 0.1, logits, order)
            torch.library.opcheck(fwd, (xx.clone().requires_grad_(), None, None, *opts))
            torch.library.opcheck(fwd, (xx.clone().requires_grad_(), rs, cs, *opts))
            torch.library.opcheck(bwd, (gg, xx, None, None, *opts))
            torch.library.opcheck(bwd, (gg, xx, rs, cs, *opts))


def test_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(13)

    def loss(x, w):
        return (mt.sinkhorn_knopp(x, iterations=3, logits=True) * w).sum()

    x = torch.randn((2, 4, 4), generator=gen, dtype=torch.float64)
    w = torch.randn((2, 4, 4), generator=gen, dtype=torch.float64)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    le = loss(xe, w)
    le.backward()
    lc = torch.compile(loss, fullgraph=True)(xc, w)
    lc.backward()
    torch.testing.assert_close(lc, le, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-12)


def test_outputs_are_fresh_and_input_unchanged(backend):
    gen = torch.Generator().manual_seed(17)
    for logits in (False, True):
        x = torch.rand((2, 3, 3), dtype=torch.float64, generator=gen) + 0.1
        before = x.clone()
        for it in (0, 3):
            xr = x.clone().requires_grad_()
            y = mt.sinkhorn_knopp(xr, iterations=it, logits=logits)
            assert y.untyped_storage().data_ptr() != xr.untyped_storage().data_ptr()
            assert y.is_contiguous()
            y.sum().backward()
            y2 = mt.sinkhorn_knopp(x, iterations=it, logits=logits)
            assert y2.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
            torch.testing.assert_close(x, before, rtol=0, atol=0)
        y3 = mt.sinkhorn_knopp(x.permute(0, 2, 1), iterations=2, logits=logits)
        assert y3.is_contiguous()
        torch.testing.assert_close(x, before, rtol=0, atol=0)


@pytest.mark.parametrize("kw, err, name", [
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(iterations=2.0), TypeError, "iterations"),
    (dict(tau=-0.5), ValueError, "tau"),
    (dict(logits="yes"), TypeError, "logits"),
    (dict(order="diagonal"), ValueError, "order"),
])
def test_bad_options_raise_naming_them(kw, err, name):
    x = torch.rand((2, 3, 3), requires_grad=True)
    with pytest.raises(err, match=name):
        mt.sinkhorn_knopp(x, **kw)


def test_bad_inputs_raise_the_library_errors(backend):
    x = torch.rand((2, 3, 3), dtype=torch.float64)
    x[1, 2, 0] = -1
    with pytest.raises(DomainError, match=r"x\[1, 2, 0\]"):
        mt.sinkhorn_knopp(x.requires_grad_())
    with pytest.raises(mx.ShapeError, match="row_sums"):
        mt.sinkhorn_knopp(torch.rand((2, 3, 3)), row_sums=torch.ones(4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        mt.sinkhorn_knopp(np.ones((3, 3)))


def test_native_backend_serves_cpu_tensors():
    if not mx.config()["backends"]["native"]["available"]:
        pytest.skip("native backend unavailable")
    mx.reset_stats()
    x = torch.rand((4, 3, 3), dtype=torch.float32, requires_grad=True)
    with mx.use_backend("native"):
        mt.sinkhorn_knopp(x, iterations=3).sum().backward()
    st = mx.stats()
    assert "native" in st["sinkhorn_knopp"]
    assert "native" in st["sinkhorn_knopp_backward"]


# ---------------------------------------------------------------- distances (SPEC 2.2)

MANIFOLDS = ["euclidean", "poincare", "spherical"]
DIST_BACKENDS = ["native", "array_api"]


def _use(name):
    if name == "native" and not mx.config()["backends"]["native"]["available"]:
        pytest.skip("native backend unavailable")
    return mx.use_backend(name)


def dist_reference(manifold, x, c, curvature=1.0):
    """The distances written plainly in torch (autograd differentiates them)."""
    if manifold == "euclidean":
        return ((x - c) ** 2).sum(-1).sqrt()
    if manifold == "poincare":
        K = curvature
        a = 1 - K * (x * x).sum(-1)
        b = 1 - K * (c * c).sum(-1)
        z = 2 * K * ((x - c) ** 2).sum(-1) / (a * b)
        return torch.acosh(1 + z) / K ** 0.5
    u = x / x.norm(dim=-1, keepdim=True)
    v = c / c.norm(dim=-1, keepdim=True)
    return 2 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


def _points(shape, gen, dtype=torch.float64, radius=0.8, curvature=1.0):
    """Random points well inside the ball of curvature -K (any manifold accepts them)."""
    p = torch.randn(shape, dtype=torch.float64, generator=gen)
    r = torch.rand(shape[:-1] + (1,), dtype=torch.float64, generator=gen) * 0.9 + 0.1
    return (p / p.norm(dim=-1, keepdim=True) * r * radius / curvature ** 0.5).to(dtype)


def _dist(manifold, x, c, curvature=1.0, **kw):
    return mt.geometric_distance(x, c, manifold=manifold, curvature=curvature, **kw)


@pytest.mark.parametrize("name", DIST_BACKENDS)
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_distance_gradcheck(name, manifold):
    gen = torch.Generator().manual_seed(21 + MANIFOLDS.index(manifold))
    with _use(name):
        for cshape in ((4,), (5, 4)):
            x = _points((5, 4), gen).requires_grad_()
            c = _points(cshape, gen).requires_grad_()
            assert torch.autograd.gradcheck(lambda x, c: _dist(manifold, x, c), (x, c),
                                            eps=1e-6, atol=1e-7, rtol=1e-5)
        x = _points((3, 4), gen).requires_grad_()
        y = _points((5, 4), gen).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, y: mt.pairwise_distance(x, y, manifold=manifold), (x, y),
            eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", DIST_BACKENDS)
@pytest.mark.parametrize("manifold, curvature", [("euclidean", 1.0), ("poincare", 1.0),
                                                 ("poincare", 0.7), ("spherical", 1.0)])
def test_distance_gradient_matches_autograd(name, manifold, curvature):
    gen = torch.Generator().manual_seed(31 + MANIFOLDS.index(manifold))
    with _use(name):
        for xshape, cshape in (((5, 4), (4,)), ((5, 4), (5, 4)), ((2, 3, 6), (2, 1, 6)),
                               ((3, 6), (2, 1, 6))):
            x = _points(xshape, gen, curvature=curvature).requires_grad_()
            c = _points(cshape, gen, curvature=curvature).requires_grad_()
            y = _dist(manifold, x, c, curvature)
            up = torch.randn(y.shape, dtype=torch.float64, generator=gen)
            gx, gc = torch.autograd.grad(y, (x, c), up)
            xr, cr = x.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
            yr = dist_reference(manifold, xr, cr, curvature)
            gxr, gcr = torch.autograd.grad(yr, (xr, cr), up)
            assert gx.shape == x.shape and gc.shape == c.shape
            torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(gx, gxr, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(gc, gcr, rtol=1e-10, atol=1e-12)
        x = _points((3, 4), gen, curvature=curvature).requires_grad_()
        yy = _points((5, 4), gen, curvature=curvature).requires_grad_()
        y = mt.pairwise_distance(x, yy, manifold=manifold, curvature=curvature)
        assert y.shape == (3, 5)
        up = torch.randn((3, 5), dtype=torch.float64, generator=gen)
        gx, gy = torch.autograd.grad(y, (x, yy), up)
        xr, yr_ = x.detach().clone().requires_grad_(), yy.detach().clone().requires_grad_()
        ref = dist_reference(manifold, xr[:, None, :], yr_[None, :, :], curvature)
        gxr, gyr = torch.autograd.grad(ref, (xr, yr_), up)
        torch.testing.assert_close(gx, gxr, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gy, gyr, rtol=1e-10, atol=1e-12)


def test_pairwise_backward_in_blocks(monkeypatch):
    """The pairwise backward in several row blocks equals the one-block result."""
    gen = torch.Generator().manual_seed(37)
    x, y = _points((7, 3), gen), _points((5, 3), gen)
    up = torch.randn((7, 5), dtype=torch.float64, generator=gen)
    for manifold in MANIFOLDS:
        grads = []
        for block in (1 << 22, 2 * 5 * 3):
            monkeypatch.setattr(_distances, "_PAIRWISE_BLOCK", block)
            xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
            grads.append(torch.autograd.grad(
                mt.pairwise_distance(xx, yy, manifold=manifold), (xx, yy), up))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_distance_float32_gradient_close_to_float64(manifold):
    gen = torch.Generator().manual_seed(41 + MANIFOLDS.index(manifold))
    x64, c64 = _points((1000, 64), gen), _points((1000, 64), gen)
    up = torch.randn((1000,), dtype=torch.float64, generator=gen)
    grads = {}
    for dt in (torch.float32, torch.float64):
        x, c = x64.to(dt).requires_grad_(), c64.to(dt).requires_grad_()
        grads[dt] = torch.autograd.grad(_dist(manifold, x, c), (x, c), up.to(dt))
        assert all(g.dtype == dt for g in grads[dt])
    for g64, g32 in zip(grads[torch.float64], grads[torch.float32]):
        assert float((g32.double() - g64).abs().max()) <= 1e-4 * float(g64.abs().max())


@pytest.mark.parametrize("name", DIST_BACKENDS)
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_distance_coincident_points_give_zero_gradient(name, manifold):
    gen = torch.Generator().manual_seed(43)
    with _use(name):
        for dt in (torch.float64, torch.float32):
            p = _points((4, 5), gen, dtype=dt)
            x, c = p.clone().requires_grad_(), p.clone().requires_grad_()
            y = _dist(manifold, x, c)
            gx, gc = torch.autograd.grad(y.sum(), (x, c))
            assert (y == 0).all()
            assert torch.isfinite(gx).all() and (gx == 0).all()
            assert torch.isfinite(gc).all() and (gc == 0).all()
            x, yy = p.clone().requires_grad_(), p[1:3].clone().requires_grad_()
            gx, gy = torch.autograd.grad(mt.pairwise_distance(x, yy, manifold=manifold).sum(),
                                         (x, yy))
            assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    if manifold == "spherical":   # antipodal (θ = π): 0 too
        x = p.double().clone().requires_grad_()
        c = (-2 * p.double()).requires_grad_()
        gx, gc = torch.autograd.grad(mt.spherical_distance(x, c).sum(), (x, c))
        assert (gx == 0).all() and (gc == 0).all()


def test_poincare_clip_and_nan_gradients():
    gen = torch.Generator().manual_seed(47)
    x = _points((6, 3), gen)
    x[1] *= 3 / x[1].norm()             # outside the ball
    c = _points((6, 3), gen)
    up = torch.randn((6,), dtype=torch.float64, generator=gen)
    xx, cc = x.clone().requires_grad_(), c.clone().requires_grad_()
    gx, gc = torch.autograd.grad(mt.poincare_distance(xx, cc, on_domain_error="clip"),
                                 (xx, cc), up)
    xr, cr = x.clone().requires_grad_(), c.clone().requires_grad_()
    rmax = 1 - 1e-5
    n = xr.norm(dim=-1, keepdim=True)
    xc = torch.where(n > rmax, xr * (rmax / n), xr)
    gxr, gcr = torch.autograd.grad(dist_reference("poincare", xc, cr), (xr, cr), up)
    torch.testing.assert_close(gx, gxr, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gc, gcr, rtol=1e-8, atol=1e-10)
    xx = x.clone().requires_grad_()
    y = mt.poincare_distance(xx, c, on_domain_error="nan")
    (gx,) = torch.autograd.grad(y, xx, up)
    assert torch.isnan(y[1]) and torch.isnan(gx[1]).all()
    assert torch.isfinite(gx[[0, 2, 3, 4, 5]]).all()
    with pytest.raises(DomainError, match=r"x\[1\]"):
        mt.poincare_distance(x.clone().requires_grad_(), c)


def test_distance_half_precision_in_and_out():
    gen = torch.Generator().manual_seed(53)
    for dt in (torch.float16, torch.bfloat16):
        for manifold in MANIFOLDS:
            x = _points((6, 4), gen).to(dt).requires_grad_()
            c = _points((4,), gen).to(dt).requires_grad_()
            y = _dist(manifold, x, c)
            assert y.dtype == dt
            y.float().sum().backward()
            assert x.grad.dtype == dt and c.grad.dtype == dt
            assert torch.isfinite(x.grad.float()).all() and torch.isfinite(c.grad.float()).all()
            yy = _points((3, 4), gen).to(dt).requires_grad_()
            p = mt.pairwise_distance(x.detach(), yy, manifold=manifold)
            assert p.dtype == dt
            p.float().sum().backward()
            assert yy.grad.dtype == dt


@pytest.mark.parametrize("fn, kw, err, name", [
    (mt.poincare_distance, {"curvature": 0.0}, ValueError, "curvature"),
    (mt.poincare_distance, {"on_domain_error": "ignore"}, ValueError, "on_domain_error"),
    (mt.spherical_distance, {"on_domain_error": "zero"}, ValueError, "on_domain_error"),
    (mt.geometric_distance, {"manifold": "hyperbolic"}, ValueError, "manifold"),
    (mt.geometric_distance, {"curvature": -1.0}, ValueError, "curvature"),
    (mt.pairwise_distance, {"manifold": "flat"}, ValueError, "manifold"),
])
def test_distance_bad_options_raise_naming_them(fn, kw, err, name):
    x = torch.rand((2, 3), requires_grad=True) * 0.1
    with pytest.raises(err, match=name):
        fn(x, x, **kw)


def test_distance_bad_inputs():
    with pytest.raises(TypeError, match="c must be a torch.Tensor"):
        mt.euclidean_distance(torch.ones(3), np.ones(3))
    with pytest.raises(mx.ShapeError):
        mt.euclidean_distance(torch.ones((2, 3)), torch.ones(4))
    with pytest.raises(mx.ShapeError):
        mt.pairwise_distance(torch.ones(3), torch.ones((2, 3)))


def test_opcheck_distance_ops():
    gen = torch.Generator().manual_seed(59)
    dist = torch.ops.mhc_array.distance.default
    pw = torch.ops.mhc_array.pairwise_distance.default
    x, c = _points((5, 4), gen), _points((5, 4), gen)
    xp = _points((4, 5), gen).t()
    cp = _points((4, 5), gen).t()
    assert not xp.is_contiguous() and not cp.is_contiguous()
    for xx, cc in ((x, c), (xp, cp), (x, c[0]), (xp, cp[1])):
        for manifold in MANIFOLDS:
            args = (xx.clone().requires_grad_(), cc.clone().requires_grad_(), manifold,
                    0.9, "raise")
            torch.library.opcheck(dist, args)
            if cc.ndim == 2:
                torch.library.opcheck(pw, args)


def test_distance_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(61)

    def loss(x, c, y, w):
        return ((mt.poincare_distance(x, c) * w).sum()
                + mt.pairwise_distance(x, y, manifold="spherical").sum())

    x, c, y = _points((4, 3), gen), _points((3,), gen), _points((2, 3), gen)
    w = torch.randn((4,), generator=gen, dtype=torch.float64)
    xe, ce = x.clone().requires_grad_(), c.clone().requires_grad_()
    xc, cc = x.clone().requires_grad_(), c.clone().requires_grad_()
    le = loss(xe, ce, y, w)
    le.backward()
    lc = torch.compile(loss, fullgraph=True)(xc, cc, y, w)
    lc.backward()
    torch.testing.assert_close(lc, le, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cc.grad, ce.grad, rtol=1e-12, atol=1e-12)


def test_native_backend_serves_distances():
    if not mx.config()["backends"]["native"]["available"]:
        pytest.skip("native backend unavailable")
    mx.reset_stats()
    x = torch.rand((4, 3), requires_grad=True)
    with mx.use_backend("native"):
        mt.euclidean_distance(x, x.detach().flip(0)).sum().backward()
        mt.pairwise_distance(x, x.detach()).sum().backward()
    st = mx.stats()
    assert "native" in st["euclidean_distance"]
    assert "native" in st["pairwise_distance"]
