"""mhc_array.torch.mhc_post_pre and the modules' post_pre: the fused layer boundary
with gradients for every input, against the composition of the differentiable post
and pre steps (themselves tested against float64 references and gradcheck), by
gradcheck in float64, under torch.compile(fullgraph=True) and torch.library.opcheck."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mhc_array.torch as mt  # noqa: E402
import reference as ref  # noqa: E402

VARIANTS = ["paper", "deepseek-v4"]


def _inputs(variant, dtype=torch.float64, tokens=3, n=4, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = (2 + n) * n

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()
    x, f = r(tokens, n, C), r(tokens, C)
    hp = (torch.rand(tokens, n, generator=g, dtype=dtype) * 2).requires_grad_()
    hr = torch.softmax(torch.randn(tokens, n, n, generator=g, dtype=dtype), -1).requires_grad_()
    w = r(n * C, K, scale=0.5) if variant == "paper" else r(K, n * C, scale=0.5)
    return x, f, hp, hr, w, r(K, scale=0.5), torch.tensor([0.8, 0.6, 1.5], dtype=dtype,
                                                         requires_grad=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_the_equations_and_the_composition(variant):
    ins = _inputs(variant)
    got = mt.mhc_post_pre(*ins, variant=variant)
    nxt = ref.mhc_post(*(t.detach().numpy() for t in ins[:4]))
    want = (nxt, *ref.mhc_pre(nxt, *(t.detach().numpy() for t in ins[4:]), variant=variant))
    for gt, w in zip(got, want):
        np.testing.assert_allclose(gt.detach().numpy(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_the_composition(variant):
    ins = _inputs(variant, seed=1)
    seeds = [torch.randn_like(t) for t in mt.mhc_post_pre(*ins, variant=variant)]

    def loss(outs):
        return sum((o * s).sum() for o, s in zip(outs, seeds))
    fused = torch.autograd.grad(loss(mt.mhc_post_pre(*ins, variant=variant)), ins)
    nxt = mt.mhc_post(*ins[:4])
    comp = torch.autograd.grad(loss((nxt, *mt.mhc_pre(nxt, *ins[4:], variant=variant))), ins)
    for a, b in zip(fused, comp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant):
    ins = _inputs(variant, tokens=2, C=3, seed=2)
    assert torch.autograd.gradcheck(lambda *a: mt.mhc_post_pre(*a, variant=variant), ins,
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_compiles_fullgraph_and_opcheck():
    ins = _inputs("paper", dtype=torch.float32, seed=3)
    f = torch.compile(lambda *a: mt.mhc_post_pre(*a)[1].sum(), fullgraph=True)
    torch.testing.assert_close(f(*ins), mt.mhc_post_pre(*ins)[1].sum())
    from mhc_array.torch._mhc import _mhc_post_pre_op
    torch.library.opcheck(_mhc_post_pre_op, (*[t.detach() for t in ins], 20, 1e-6, "paper",
                                             1e-6))


def test_module_post_pre():
    a, b = mt.MHCConnection(4, 8, seed=0, dtype=torch.float64), \
        mt.MHCConnection(4, 8, seed=1, dtype=torch.float64)
    x = torch.randn(5, 4, 8, dtype=torch.float64)
    h_in, _, hp, hr = a.pre(x)
    f = torch.tanh(h_in)
    got = b.post_pre(x, f, hp, hr)
    nxt = b.post(x, f, hp, hr)
    for g, w in zip(got, (nxt, *b.pre(nxt))):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_v4_module_post_pre():
    first = mt.DeepseekV4Connection(4, 8, init=True, dtype=torch.float64)
    second = mt.DeepseekV4Connection(4, 8, init=True, dtype=torch.float64)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    post, comb, collapsed = first(x)
    f = torch.tanh(collapsed)
    nxt, post2, comb2, collapsed2 = second.post_pre(x, f, post, comb)
    want_next = comb.transpose(-1, -2) @ x + post.unsqueeze(-1) * f.unsqueeze(-2)   # V4's post
    torch.testing.assert_close(nxt, want_next, rtol=1e-12, atol=1e-12)
    for g, w in zip((post2, comb2, collapsed2), second(want_next)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
