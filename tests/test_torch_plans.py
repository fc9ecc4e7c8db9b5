"""The decode path of mhc_array.torch: eager calls without gradients on CPU tensors
run the C kernels on the tensors' memory through cached plans (backends/native.py
``torch_plan``). Checked against the float64 equations (tests/reference.py), with
stats() showing which path served, and the calls the plans decline (other
layouts, dtypes, gradients) still correct through the general path."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mhc_array as mx  # noqa: E402
import mhc_array.torch as mt  # noqa: E402
import reference as ref  # noqa: E402
from conftest import cpu_supports, native_available  # noqa: E402

pytestmark = pytest.mark.skipif(not native_available(), reason="the native backend is not built")


def _params(variant, n, C, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    K = (2 + n) * n
    phi = torch.randn((n * C, K) if variant == "paper" else (K, n * C), generator=g,
                      dtype=torch.float64) * 0.05
    bias = torch.randn(K, generator=g, dtype=torch.float64) * 0.3
    alpha = torch.tensor([0.7, 0.4, 0.9], dtype=torch.float64)
    return phi.to(dtype), bias.to(dtype), alpha.to(dtype)


def _np64(*ts):
    return [t.detach().to(torch.float64).numpy() for t in ts]


def _ref_pre(x, phi, bias, alpha, variant):
    xs, p, b, a = _np64(x, phi, bias, alpha)
    return ref.mhc_pre(xs, p, b, a, variant=variant)


def _native_calls(name):
    return mx.stats().get(name, {}).get("native", {"calls": 0})


@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_pre_under_no_grad_matches_the_equations(variant, dtype):
    n, C = 4, 40
    params = _params(variant, n, C, dtype=torch.float64 if dtype == torch.float64
                     else torch.float32)
    x = torch.randn(2, 3, n, C, dtype=torch.float64).to(dtype)
    x_before = x.clone()
    mx.reset_stats()
    with torch.no_grad():
        out = mt.mhc_pre(x, *params, variant=variant)
    want = _ref_pre(x, *params, variant)
    assert out[0].dtype == dtype and out[0].shape == (2, 3, C)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert all(o.dtype == cdt for o in out[1:])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for got, w in zip(out, want):
        np.testing.assert_allclose(got.to(torch.float64).numpy(), w, rtol=tol, atol=tol)
    assert torch.equal(x, x_before)
    s = _native_calls("mhc_pre")
    assert s["calls"] == 1
    # bfloat16 streams are read as they are (mhc_hc_pre_bf16): no copy either
    assert s["zero_copy_calls"] == 1


@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_post_and_post_pre_under_no_grad_in_bfloat16(variant):
    n, C = 4, 24
    params = _params(variant, n, C)
    x = torch.randn(5, n, C).to(torch.bfloat16)
    f_out = torch.randn(5, C).to(torch.bfloat16)
    h_post = torch.rand(5, n) * 2
    h_res = torch.rand(5, n, n)
    xs, fs, hp, hr = _np64(x, f_out, h_post, h_res)
    want_next = ref.mhc_post(xs, fs, hp, hr)
    with torch.no_grad():
        nxt = mt.mhc_post(x, f_out, h_post, h_res)
        fused = mt.mhc_post_pre(x, f_out, h_post, h_res, *params, variant=variant)
    assert nxt.dtype == torch.bfloat16 and fused[0].dtype == torch.bfloat16
    np.testing.assert_allclose(nxt.double().numpy(), want_next, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(fused[0].double().numpy(), want_next, rtol=1e-2, atol=1e-2)
    # the pre step of the fused call sees x_next in float32, before its bfloat16 rounding
    want = ref.mhc_pre(want_next, *_np64(*params), variant=variant)
    for got, w in zip(fused[1:], want):
        np.testing.assert_allclose(got.double().numpy(), w, rtol=2e-2, atol=2e-2)


def test_declined_calls_are_still_right():
    """Layouts and dtypes the plans do not take go the general way, with the same
    results: a transposed (non-contiguous) projection, float64 parameters beside
    float32 streams, and parameters that require gradients outside no_grad."""
    n, C = 4, 16
    phi, bias, alpha = _params("paper", n, C)
    x = torch.randn(3, n, C)
    want = _ref_pre(x, phi, bias, alpha, "paper")
    with torch.no_grad():
        strided = mt.mhc_pre(x, phi.T.contiguous().T, bias, alpha)
        mixed = mt.mhc_pre(x, phi.double(), bias.double(), alpha.double())
    phi_g = phi.clone().requires_grad_(True)
    graded = mt.mhc_pre(x, phi_g, bias, alpha)
    graded[0].sum().backward()
    assert phi_g.grad is not None
    for out in (strided, mixed, graded):
        for got, w in zip(out, want):
            np.testing.assert_allclose(got.detach().double().numpy(), w, rtol=1e-5, atol=1e-5)


def test_module_decode_matches_the_equations_and_follows_its_parameters():
    n, C = 4, 32
    m = mt.DeepseekV4Connection(n, C, init=True)
    x = torch.randn(1, 1, n, C).to(torch.bfloat16)
    with torch.no_grad():
        post, comb, collapsed = m(x)
        m.fn.mul_(1.5)                     # in place: the next call must see it
        post2, comb2, collapsed2 = m(x)
    for got, p in (((post, comb, collapsed), m.fn / 1.5), ((post2, comb2, collapsed2), m.fn)):
        h_in, h_pre, h_post, h_res = _ref_pre(x, p, m.base, m.scale, "deepseek-v4")
        np.testing.assert_allclose(got[0].numpy(), h_post, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1].numpy(), np.swapaxes(h_res, -1, -2), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(got[2].double().numpy(), h_in, rtol=1e-2, atol=1e-2)
    assert not torch.allclose(post, post2)


def test_forced_backends_and_levels_are_honoured():
    """The plans are keyed by the configuration: array_api forced computes in torch
    (no native call), each ISA level forced gives the same values."""
    n, C = 4, 20
    params = _params("paper", n, C)
    x = torch.randn(4, n, C)
    want = _ref_pre(x, *params, "paper")
    mx.reset_stats()
    with torch.no_grad(), mx.use_backend("array_api"):
        out = mt.mhc_pre(x, *params)
    assert _native_calls("mhc_pre")["calls"] == 0
    np.testing.assert_allclose(out[0].double().numpy(), want[0], rtol=1e-5, atol=1e-5)
    for level in ("avx512", "avx2", "sse", "portable"):
        if not cpu_supports(level):
            continue
        with torch.no_grad(), mx.use_isa(level):
            out = mt.mhc_pre(x, *params)
        np.testing.assert_allclose(out[0].double().numpy(), want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["transposed", "broadcast", "batch-transposed", "gapped"])
def test_post_with_coefficients_in_other_layouts_is_served_and_right(layout):
    """The fused layer forward passes V4's comb transposed (a view): the bfloat16
    kernel reads the coefficients through their strides (no copy), as it reads a
    broadcast; a batch whose tokens are not one stride apart takes the general path.
    Each bit for bit the float32 kernel's values on contiguous copies, rounded."""
    n, C = 4, 40
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, n, C, generator=g).to(torch.bfloat16)
    f_out = torch.randn(2, 3, C, generator=g).to(torch.bfloat16)
    post, comb = torch.rand(2, 3, n, generator=g) * 2, torch.rand(2, 3, n, n, generator=g)
    h_res = {"transposed": comb.transpose(-1, -2),
             "broadcast": comb[:1, :1].transpose(-1, -2).expand(2, 3, n, n),
             "batch-transposed": comb.transpose(0, 1).transpose(-1, -2).contiguous()
             .transpose(0, 1),
             "gapped": torch.rand(2, 5, n, n, generator=g)[:, :3]}[layout]
    assert not h_res.is_contiguous()
    mx.reset_stats()
    with torch.no_grad():
        got = mt.mhc_post(x, f_out, post, h_res)
        want = mt.mhc_post(x.float(), f_out.float(), post, h_res.contiguous())
    assert torch.equal(got.view(torch.int16), want.to(torch.bfloat16).view(torch.int16))
    np.testing.assert_allclose(got.double().numpy(), ref.mhc_post(*_np64(x, f_out, post, h_res)),
                               rtol=1e-2, atol=1e-2)
    s = _native_calls("mhc_post")
    assert s["calls"] == 2
    if layout in ("transposed", "broadcast"):
        assert s["zero_copy_calls"] == 2     # the bfloat16 kernel through the strides
    else:
        assert s["zero_copy_calls"] == 1     # copied to float32 on the general path


def test_v4_module_projects_from_its_prepared_rows_from_16_tokens():
    """From ROWS_MIN_TOKENS tokens, eager and without gradients, DeepseekV4Connection
    projects from fn transposed once per version of the Parameter (rows layout): the
    same values as the equations, one native call, refreshed when fn changes in place
    or is reassigned; the fused post_pre takes the same path."""
    from mhc_array.torch._modules import ROWS_MIN_TOKENS
    n, C, T = 4, 48, ROWS_MIN_TOKENS + 4
    m = mt.DeepseekV4Connection(n, C, init=True)
    with torch.no_grad():
        m.base.normal_(0, 0.3)
    x = torch.randn(2, T, n, C)

    def check(out, fn):
        h_in, h_pre, h_post, h_res = _ref_pre(x, fn, m.base, m.scale, "deepseek-v4")
        np.testing.assert_allclose(out[0].double().numpy(), h_post, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[1].double().numpy(), np.swapaxes(h_res, -1, -2),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[2].double().numpy(), h_in, rtol=1e-5, atol=1e-5)

    mx.reset_stats()
    with torch.no_grad():
        first = m(x)
    assert _native_calls("mhc_pre")["calls"] == 1
    check(first, m.fn)
    prepared = m.__dict__["_fn_rows"][1]
    assert prepared.shape == (n * C, (2 + n) * n) and prepared.is_contiguous()
    with torch.no_grad():
        m.fn.mul_(-0.5)                   # in place: a new version
        check(m(x), m.fn)
        m.fn = torch.nn.Parameter(torch.randn_like(m.fn) * 0.05)    # reassigned
        check(m(x), m.fn)
    assert m.__dict__["_fn_rows"][1] is not prepared
    # the fused boundary through the module, against post then pre in float64
    f_out, post, comb = torch.randn(2, T, C), torch.rand(2, T, n) * 2, torch.rand(2, T, n, n)
    with torch.no_grad():
        nxt, post2, comb2, collapsed = m.post_pre(x, f_out, post, comb)
    want_next = ref.mhc_post(*_np64(x, f_out, post, comb.transpose(-1, -2)))
    np.testing.assert_allclose(nxt.double().numpy(), want_next, rtol=1e-5, atol=1e-5)
    h_in, _, h_post, h_res = ref.mhc_pre(want_next, *_np64(m.fn, m.base, m.scale),
                                         variant="deepseek-v4")
    np.testing.assert_allclose(collapsed.double().numpy(), h_in, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(comb2.double().numpy(), np.swapaxes(h_res, -1, -2), rtol=1e-5,
                               atol=1e-5)
    # with gradients, and below ROWS_MIN_TOKENS tokens, the usual path (no prepared copy)
    small = mt.DeepseekV4Connection(n, C, init=True)
    with torch.no_grad():
        small(x[:1, :ROWS_MIN_TOKENS - 1])
    small(x)[2].sum().backward()
    assert "_fn_rows" not in small.__dict__ and small.fn.grad is not None


def test_post_on_bfloat16_streams_copies_nothing():
    """bfloat16 streams and f_out go to the bfloat16 kernel as they are: a zero-copy
    call, bfloat16 out, the float32 kernel's values rounded once."""
    n, C = 4, 72
    x = torch.randn(2, 3, n, C).to(torch.bfloat16)
    f_out = torch.randn(2, 3, C).to(torch.bfloat16)
    post, h_res = torch.rand(2, 3, n) * 2, torch.rand(2, 3, n, n)
    mx.reset_stats()
    with torch.no_grad():
        got = mt.mhc_post(x, f_out, post, h_res)
    s = _native_calls("mhc_post")
    assert s["calls"] == 1 and s["zero_copy_calls"] == 1
    assert got.dtype == torch.bfloat16
    with torch.no_grad():
        want = mt.mhc_post(x.float(), f_out.float(), post, h_res).to(torch.bfloat16)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_no_grad_calls_with_parameters_take_the_plan_without_gradients():
    """Under no_grad the Parameters of a module (which require gradients) go to the
    plan as they are: one native zero-copy call, results that record no graph and
    share no memory with the inputs."""
    n, C = 4, 24
    m = mt.MHCConnection(n, C, seed=0)
    x = torch.randn(3, n, C)
    mx.reset_stats()
    with torch.no_grad():
        out = m.pre(x)
        nxt = m.post(x, out[0], out[2], out[3])
    for name in ("mhc_pre", "mhc_post"):
        s = _native_calls(name)
        assert s["calls"] == 1 and s["zero_copy_calls"] == 1, name
    assert all(o.grad_fn is None and not o.requires_grad for o in (*out, nxt))
    storages = {t.untyped_storage().data_ptr() for t in (x, m.phi, m.bias, m.alpha)}
    assert not storages & {o.untyped_storage().data_ptr() for o in (*out, nxt)}
    want = _ref_pre(x, m.phi, m.bias, m.alpha, "paper")
    for got, w in zip(out, want):
        np.testing.assert_allclose(got.double().numpy(), w, rtol=1e-5, atol=1e-5)
    # with gradients recorded the same call goes through the custom op and back
    out = m.pre(x)
    out[0].sum().backward()
    assert m.phi.grad is not None


def test_plan_follows_parameters_changed_in_place_or_replaced():
    """The plan remembers a parameter's checks by the object, its data pointer,
    version and shape: an in-place change, new memory behind the same Parameter
    (``.data``), and a parameter of another shape are each seen at the next call."""
    n, C = 4, 16
    phi, bias, alpha = _params("paper", n, C)
    x = torch.randn(2, n, C)

    def check(p, b, a):
        with torch.no_grad():
            got = mt.mhc_pre(x, p, b, a)
        for g, w in zip(got, _ref_pre(x, p, b, a, "paper")):
            np.testing.assert_allclose(g.double().numpy(), w, rtol=1e-5, atol=1e-5)

    check(phi, bias, alpha)
    with torch.no_grad():
        bias.mul_(-2.0)                              # in place: a new version
    check(phi, bias, alpha)
    phi.data = phi.data * 0.5                        # same object, new memory
    check(phi, bias, alpha)
    bias.data = torch.zeros(5)                       # same object, a shape refused
    with torch.no_grad(), pytest.raises(mx.ShapeError, match="bias"):
        mt.mhc_pre(x, phi, bias, alpha)


def test_no_grad_calls_still_refuse_bad_arguments():
    """The plan declines what it cannot take; the general path then names the
    argument, under no_grad as with gradients."""
    x = torch.randn(2, 4, 8)
    phi, bias, alpha = _params("paper", 4, 8)
    with torch.no_grad():
        with pytest.raises(mx.ShapeError, match="phi"):
            mt.mhc_pre(x, phi[:-1], bias, alpha)
        with pytest.raises(ValueError, match="variant"):
            mt.mhc_pre(x, phi, bias, alpha, variant="v3")
        with pytest.raises(TypeError, match="alpha"):
            mt.mhc_pre(x, phi, bias, [1.0, 1.0, 1.0])
        with pytest.raises(TypeError, match="x"):
            mt.mhc_pre(x.numpy(), phi, bias, alpha)
        with pytest.raises(TypeError, match="torch.Tensor"):
            mt.mhc_pre(x.numpy(), phi.numpy(), bias.numpy(), alpha.numpy())
        with pytest.raises(mx.ShapeError, match="h_res"):
            mt.mhc_post(x, x[:, 0], alpha.new_ones(2, 4), alpha.new_ones(2, 3, 3))
        with pytest.raises(TypeError, match="h_post"):
            mt.mhc_post(x, x[:, 0], [1.0] * 4, alpha.new_ones(2, 4, 4))
        with pytest.raises(mx.ShapeError, match="phi"):
            mt.mhc_post_pre(x, x[:, 0], alpha.new_ones(2, 4), alpha.new_ones(2, 4, 4),
                            phi[:-1], bias, alpha)


@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_post_pre_on_bfloat16_streams_copies_nothing(variant):
    """bfloat16 streams and f_out go to mhc_hc_post_pre_bf16 as they are: a zero-copy
    call whose x_next and h_in are the float32 path's rounded once, the coefficients
    the same bit for bit."""
    n, C = 4, 72
    params = _params(variant, n, C)
    x = torch.randn(2, 3, n, C).to(torch.bfloat16)
    f_out = torch.randn(2, 3, C).to(torch.bfloat16)
    post, h_res = torch.rand(2, 3, n) * 2, torch.rand(2, 3, n, n)
    mx.reset_stats()
    with torch.no_grad():
        got = mt.mhc_post_pre(x, f_out, post, h_res, *params, variant=variant)
    s = _native_calls("mhc_post_pre")
    assert s["calls"] == 1 and s["zero_copy_calls"] == 1
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    with torch.no_grad():
        want = mt.mhc_post_pre(x.float(), f_out.float(), post, h_res, *params, variant=variant)
    for g, w in zip(got[:2], want[:2]):
        assert torch.equal(g.view(torch.int16), w.to(torch.bfloat16).view(torch.int16))
    for g, w in zip(got[2:], want[2:]):
        assert torch.equal(g, w)
