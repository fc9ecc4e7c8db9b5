"""mhc_array.torch: the differentiable Sinkhorn-Knopp (SPEC 2.7) -- gradients
against torch autograd through a plain loop, gradcheck at every backend and ISA
level, the custom ops under opcheck and torch.compile."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mhc_array as mx  # noqa: E402
import mhc_array.torch as mt  # noqa: E402
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
