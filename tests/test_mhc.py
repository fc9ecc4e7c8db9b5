"""The mHC connection (SPEC 2.3): mhc_pre, mhc_post and MHCLayer, both variants,
against the float64 transcription of the equations in reference.py."""

import numpy as np
import pytest

import mhc_array as mx
import reference as ref
from conftest import Lib, Unchanged, rng_for, run_in_threads

VARIANTS = ["paper", "deepseek-v4"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def params(rng, n, C, variant, dtype="float64", scale=1.0):
    """Parameters that make every coefficient depend visibly on the input."""
    k = (2 + n) * n
    w = rng.standard_normal((n * C, k)) * (3.0 / np.sqrt(n * C)) * scale
    if variant == "deepseek-v4":
        w = np.ascontiguousarray(w.T)
    bias = rng.standard_normal(k) * 0.5
    alpha = np.array([0.8, 0.6, 1.5])
    return tuple(a.astype(dtype) for a in (w, bias, alpha))


def check_pre(got, want, dtype, in_dtype=None):
    names = ("h_in", "h_pre", "h_post", "h_res")
    for name, g, w in zip(names, got, want):
        g = np.asarray(g, dtype=np.float64)
        np.testing.assert_allclose(g, w, **TOL[dtype], err_msg=name)


SHAPES = [(), (9,), (2, 3)]  # one token (n, C), T tokens, (B, S)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("batch", SHAPES, ids=["token", "T", "BS"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pre_and_post_against_the_equations(backend, variant, n, batch, dtype):
    rng = rng_for("pre", variant, n, batch, dtype)
    C = 37  # not a multiple of any vector width
    x = rng.standard_normal(batch + (n, C)).astype(dtype)
    w, b, a = params(rng, n, C, variant, dtype)
    keep = Unchanged(Lib("numpy"), x, w, b, a)
    got = mx.mhc_pre(x, w, b, a, variant=variant)
    want = ref.mhc_pre(x, w, b, a, variant=variant)
    for g, shape in zip(got, [batch + (C,), batch + (n,), batch + (n,), batch + (n, n)]):
        assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == shape
    check_pre(got, want, dtype)
    f = rng.standard_normal(batch + (C,)).astype(dtype)
    nxt = mx.mhc_post(x, f, got[2], got[3])
    assert nxt.dtype == dtype and nxt.shape == x.shape
    np.testing.assert_allclose(nxt, ref.mhc_post(x, f, got[2], got[3]), **TOL[dtype])
    keep.check()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_iterations(backend, variant, iterations):
    rng = rng_for("its", variant, iterations)
    x = rng.standard_normal((5, 4, 24))
    w, b, a = params(rng, 4, 24, variant)
    got = mx.mhc_pre(x, w, b, a, variant=variant, iterations=iterations)
    check_pre(got, ref.mhc_pre(x, w, b, a, variant=variant, iterations=iterations), "float64")


@pytest.mark.parametrize("variant", VARIANTS)
def test_eps_options(backend, variant):
    rng = rng_for("eps", variant)
    x = rng.standard_normal((6, 4, 16)) * 1e-3    # small streams: norm_eps matters
    w, b, a = params(rng, 4, 16, variant)
    for kw in (dict(norm_eps=1e-4), dict(hc_eps=1e-2), dict(norm_eps=0.0, hc_eps=0.0)):
        got = mx.mhc_pre(x, w, b, a, variant=variant, **kw)
        check_pre(got, ref.mhc_pre(x, w, b, a, variant=variant, **kw), "float64")


@pytest.mark.parametrize("variant", VARIANTS)
def test_libraries(backend, lib, variant):
    rng = rng_for("libs", variant, lib.name)
    x_np = rng.standard_normal((2, 3, 4, 19)).astype("float32")
    w, b, a = params(rng, 4, 19, variant, "float32")
    x = lib.asarray(x_np)
    got = mx.mhc_pre(x, lib.asarray(w), lib.asarray(b), lib.asarray(a), variant=variant)
    lib.check(got[0], "float32", (2, 3, 19))
    lib.check(got[3], "float32", (2, 3, 4, 4))
    check_pre([lib.to_numpy(g) for g in got], ref.mhc_pre(x_np, w, b, a, variant=variant),
              "float32")
    f = lib.asarray(rng.standard_normal((2, 3, 19)).astype("float32"))
    nxt = mx.mhc_post(x, f, got[2], got[3])
    lib.check(nxt, "float32", (2, 3, 4, 19))
    np.testing.assert_allclose(
        lib.to_numpy(nxt), ref.mhc_post(x_np, lib.to_numpy(f), lib.to_numpy(got[2]),
                                        lib.to_numpy(got[3])), **TOL["float32"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_activations_float32_coefficients(backend, variant, dtype):
    torch = pytest.importorskip("torch")
    rng = rng_for("half", variant, dtype)
    x32 = rng.standard_normal((7, 4, 40)).astype("float32")
    x = torch.from_numpy(x32).to(getattr(torch, dtype))
    w, b, a = params(rng, 4, 40, variant, "float32")
    h_in, h_pre, h_post, h_res = mx.mhc_pre(x, torch.from_numpy(w), torch.from_numpy(b),
                                            torch.from_numpy(a), variant=variant)
    assert h_in.dtype == getattr(torch, dtype)
    assert h_pre.dtype == h_post.dtype == h_res.dtype == torch.float32
    want = ref.mhc_pre(x.float().numpy(), w, b, a, variant=variant)
    np.testing.assert_allclose(h_res.numpy(), want[3], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(h_in.float().numpy(), want[0], rtol=1e-2, atol=1e-2)
    f = torch.from_numpy(rng.standard_normal((7, 40)).astype("float32")).to(x.dtype)
    nxt = mx.mhc_post(x, f, h_post, h_res)
    assert nxt.dtype == x.dtype
    want = ref.mhc_post(x.float().numpy(), f.float().numpy(), h_post.numpy(), h_res.numpy())
    np.testing.assert_allclose(nxt.float().numpy(), want, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- what the connection must do


def test_h_res_really_mixes_the_streams(backend):
    """A non-identity h_res changes the output, and exactly as h_res @ x: a
    permutation moves whole streams (a connection that skipped H_res would not)."""
    rng = rng_for("mix")
    x = rng.standard_normal((3, 4, 33))
    f = rng.standard_normal((3, 33))
    h_post = rng.uniform(0.5, 1.5, (3, 4))
    eye = np.broadcast_to(np.eye(4), (3, 4, 4)).copy()
    perm = np.broadcast_to(np.eye(4)[[2, 0, 3, 1]], (3, 4, 4)).copy()
    a = mx.mhc_post(x, f, h_post, eye)
    b = mx.mhc_post(x, f, h_post, perm)
    assert np.max(np.abs(a - b)) > 0.5
    np.testing.assert_allclose(b, x[:, [2, 0, 3, 1], :] + h_post[..., None] * f[:, None, :],
                               rtol=1e-12, atol=1e-12)
    # and mhc_pre's h_res is not the identity for generic parameters
    w, bias, alpha = params(rng, 4, 33, "paper")
    h_res = mx.mhc_pre(x, w, bias, alpha)[3]
    assert np.max(np.abs(h_res - eye)) > 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_coefficients_act_on_the_raw_streams(backend, variant):
    """The RMS norm only enters the coefficients: scaling x by s leaves them (up to
    norm_eps) unchanged and scales h_in and the mixed streams by s."""
    rng = rng_for("raw", variant)
    x = rng.standard_normal((4, 4, 29))
    w, b, a = params(rng, 4, 29, variant)
    small = mx.mhc_pre(x, w, b, a, variant=variant, norm_eps=0.0, hc_eps=0.0)
    big = mx.mhc_pre(1000 * x, w, b, a, variant=variant, norm_eps=0.0, hc_eps=0.0)
    for k in (1, 2, 3):
        np.testing.assert_allclose(big[k], small[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(big[0], 1000 * small[0], rtol=1e-12)
    # h_in is the h_pre-weighted sum of the raw streams, not of normalised ones
    np.testing.assert_allclose(small[0], np.einsum("ti,tic->tc", small[1], x), rtol=1e-12)
    nxt = mx.mhc_post(1000 * x, np.zeros((4, 29)), small[2], small[3])
    np.testing.assert_allclose(nxt, 1000 * np.einsum("tij,tjc->tic", small[3], x), rtol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_h_res_is_doubly_stochastic(backend, variant):
    rng = rng_for("ds", variant)
    x = rng.standard_normal((64, 4, 16))
    w, b, a = params(rng, 4, 16, variant, scale=0.3)
    h_res = mx.mhc_pre(x, w, b, a, variant=variant, iterations=100, hc_eps=0.0)[3]
    assert np.all(h_res >= 0)
    np.testing.assert_allclose(h_res.sum(-1), 1, atol=1e-9)
    np.testing.assert_allclose(h_res.sum(-2), 1, atol=1e-9)


def test_one_stream_is_a_gated_residual(backend):
    """n = 1: h_res = [[1]] and x_next = x + h_post f_out."""
    rng = rng_for("n1")
    x = rng.standard_normal((5, 1, 21))
    w, b, a = params(rng, 1, 21, "paper")
    h_in, h_pre, h_post, h_res = mx.mhc_pre(x, w, b, a)
    np.testing.assert_allclose(h_res, 1.0, rtol=1e-12)
    np.testing.assert_allclose(h_in, h_pre * x[:, 0, :], rtol=1e-12)
    f = rng.standard_normal((5, 21))
    np.testing.assert_allclose(mx.mhc_post(x, f, h_post, h_res),
                               x + h_post[..., None] * f[:, None, :], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_post_out_and_in_place(backend, dtype):
    rng = rng_for("postout", dtype)
    x = rng.standard_normal((6, 4, 35)).astype(dtype)
    f = rng.standard_normal(35).astype(dtype)          # one f_out for every token
    hp = rng.uniform(0, 2, (6, 4)).astype(dtype)
    hr = ref.sinkhorn(rng.uniform(0.1, 1, (6, 4, 4))).astype(dtype)
    want = ref.mhc_post(x, f, hp, hr)
    out = np.full_like(x, np.nan)
    r = mx.mhc_post(x, f, hp, hr, out=out)
    assert r is out
    np.testing.assert_allclose(out, want, **TOL[dtype])
    y = x.copy()
    r = mx.mhc_post(y, f, hp, hr, out=y)
    assert r is y
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_post_large_output_streams_past_the_cache(backend, dtype, offset):
    """Outputs over 32 MB are written with streaming stores after a peel to the
    vector boundary: out starting 0, 1 or 3 elements past an aligned address."""
    if backend == "array_api" and offset:
        pytest.skip("the streaming path is native; one array_api case is enough")
    rng = rng_for("stream", dtype, offset)
    tokens = 540 if dtype == "float32" else 270          # > 32 MB of output
    x = rng.standard_normal((tokens, 4, 4096)).astype(dtype)
    f = rng.standard_normal((tokens, 4096)).astype(dtype)
    hp = rng.uniform(0, 2, (tokens, 4)).astype(dtype)
    hr = rng.uniform(0, 1, (tokens, 4, 4)).astype(dtype)
    raw = np.empty(x.size + 64, dtype)
    start = (-raw.ctypes.data % 64) // raw.itemsize + offset
    out = raw[start:start + x.size].reshape(x.shape)
    assert mx.mhc_post(x, f, hp, hr, out=out) is out
    want = np.einsum("tij,tjc->tic", hr.astype(np.float64), x.astype(np.float64)) + \
        hp[..., None].astype(np.float64) * f[:, None, :]
    np.testing.assert_allclose(out, want, **TOL[dtype])


def test_post_out_torch(backend):
    torch = pytest.importorskip("torch")
    rng = rng_for("postout-torch")
    x = torch.from_numpy(rng.standard_normal((5, 4, 21)).astype("float32"))
    f = torch.from_numpy(rng.standard_normal((5, 21)).astype("float32"))
    hp = torch.from_numpy(rng.uniform(0, 2, (5, 4)).astype("float32"))
    hr = torch.from_numpy(ref.sinkhorn(rng.uniform(0.1, 1, (5, 4, 4))).astype("float32"))
    want = ref.mhc_post(x.numpy(), f.numpy(), hp.numpy(), hr.numpy())
    out = torch.full_like(x, float("nan"))
    assert mx.mhc_post(x, f, hp, hr, out=out) is out
    np.testing.assert_allclose(out.numpy(), want, **TOL["float32"])
    assert mx.mhc_post(x, f, hp, hr, out=x) is x
    np.testing.assert_allclose(x.numpy(), want, **TOL["float32"])


@pytest.mark.filterwarnings("ignore:mhc_array. native backend unavailable")
def test_more_streams_than_the_native_kernels_take():
    """n = 17 > 16: auto runs it on array_api (one warning), forcing native says why."""
    rng = rng_for("n17")
    x = rng.standard_normal((2, 17, 5))
    w, b, a = params(rng, 17, 5, "paper")
    if mx.config()["backends"]["native"]["available"]:
        with mx.use_backend("native"), pytest.raises(mx.BackendUnavailableError,
                                                     match="16 streams"):
            mx.mhc_pre(x, w, b, a)
    got = mx.mhc_pre(x, w, b, a, iterations=5)
    check_pre(got, ref.mhc_pre(x, w, b, a, iterations=5), "float64")


def test_non_contiguous_inputs(backend):
    rng = rng_for("strided")
    base = rng.standard_normal((5, 6, 40))
    x = base[:, 1:5, 3:38]                            # (5, 4, 35), strided
    w, b, a = params(rng, 4, 35, "paper")
    check_pre(mx.mhc_pre(x, w, b, a), ref.mhc_pre(x, w, b, a), "float64")
    f = rng.standard_normal((5, 70))[:, ::2]
    hp = rng.uniform(0, 2, (4, 5)).T
    hr = rng.uniform(0, 1, (5, 4, 4)).transpose(0, 2, 1)
    np.testing.assert_allclose(mx.mhc_post(x, f, hp, hr), ref.mhc_post(x, f, hp, hr),
                               rtol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_size_batch(backend, lib, variant):
    rng = rng_for("empty", variant)
    w, b, a = params(rng, 4, 8, variant, "float32")
    x = lib.asarray(np.zeros((0, 3, 4, 8), np.float32))
    got = mx.mhc_pre(x, lib.asarray(w), lib.asarray(b), lib.asarray(a), variant=variant)
    for g, shape in zip(got, [(0, 3, 8), (0, 3, 4), (0, 3, 4), (0, 3, 4, 4)]):
        lib.check(g, "float32", shape)
    lib.check(mx.mhc_post(x, got[0], got[2], got[3]), "float32", (0, 3, 4, 8))


def test_element_misaligned_parameters(backend):
    """float64 parameters 4 bytes off their alignment (NumPy allows it, C does not):
    copied, not refused or misread."""
    rng = rng_for("misaligned")
    x = rng.standard_normal((5, 4, 8))
    w, b, a = params(rng, 4, 8, "paper")
    views = []
    for arr in (w, b, a):
        raw = np.zeros(arr.nbytes + 8, np.uint8)
        v = raw[4:4 + arr.nbytes].view(np.float64).reshape(arr.shape)
        v[...] = arr
        assert not v.flags.aligned
        views.append(v)
    check_pre(mx.mhc_pre(x, *views), ref.mhc_pre(x, w, b, a), "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_copies_for_contiguous_input(dtype):
    if not mx.config()["backends"]["native"]["available"]:
        pytest.skip("native backend not built")
    rng = rng_for("zc", dtype)
    x = rng.standard_normal((8, 4, 64)).astype(dtype)
    w, b, a = params(rng, 4, 64, "paper", dtype)
    mx.reset_stats()
    with mx.use_backend("native"):
        h_in, _, h_post, h_res = mx.mhc_pre(x, w, b, a)
        mx.mhc_post(x, h_in, h_post, h_res)
    s = mx.stats()
    assert s["mhc_pre"]["native"]["copies"] == 0
    assert s["mhc_post"]["native"]["copies"] == 0


# ---------------------------------------------------------------- MHCLayer


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_starts_close_to_the_identity_residual(backend, variant):
    rng = rng_for("layer", variant)
    layer = mx.MHCLayer(4, 48, variant=variant, seed=0)
    h = rng.standard_normal((2, 5, 48)).astype("float32")
    x = layer.expand(h)
    assert x.shape == (2, 5, 4, 48) and np.all(x == h[..., None, :])

    def block(u):
        return np.tanh(u) * 0.5

    y = layer(x, block)
    want = x + block(h)[..., None, :]                 # every stream: h + F(h)
    np.testing.assert_allclose(y, want, rtol=0, atol=5e-3)
    h_in, h_pre, h_post, h_res = layer.pre(x)
    np.testing.assert_allclose(h_in, h, atol=5e-3)
    np.testing.assert_allclose(h_res, np.broadcast_to(np.eye(4), h_res.shape), atol=5e-3)
    np.testing.assert_allclose(layer.reduce(x), 4 * h, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_matches_the_functions(backend, lib, variant):
    layer = mx.MHCLayer(2, 16, variant=variant, iterations=7, seed=3)
    layer.alpha[:] = [0.5, 0.5, 1.0]
    rng = rng_for("layerfn", variant, lib.name)
    x_np = rng.standard_normal((3, 2, 16)).astype("float32")
    x = lib.asarray(x_np)
    got = [lib.to_numpy(g) for g in layer.pre(x)]
    check_pre(got, ref.mhc_pre(x_np, layer.phi, layer.bias, layer.alpha, iterations=7,
                               variant=variant), "float32")
    y = layer(x, lambda u: u * 2)
    lib.check(y, "float32", (3, 2, 16))
    want = ref.mhc_post(x_np, 2 * got[0], got[2], got[3])
    np.testing.assert_allclose(lib.to_numpy(y), want, **TOL["float32"])


def test_layer_workspace_shared_by_concurrent_calls():
    """One layer (one native workspace) called from 8 Python threads at once, each
    call split over helper threads: every result equals the stateless function's,
    bit for bit (the workspace only holds scratch)."""
    if not mx.config()["backends"]["native"]["available"]:
        pytest.skip("native backend not built")
    layer = mx.MHCLayer(4, 256, variant="deepseek-v4", seed=2)
    layer.alpha[:] = [0.5, 0.5, 1.0]
    rng = rng_for("ws")
    xs = [rng.standard_normal((64 + k, 4, 256)).astype("float32") for k in range(8)]
    with mx.use_backend("native"), mx.use_num_threads(2):
        wants = [mx.mhc_pre(x, layer.phi, layer.bias, layer.alpha, variant="deepseek-v4")
                 for x in xs]

    def worker(k):
        with mx.use_backend("native"), mx.use_num_threads(2):
            for _ in range(5):
                for g, w in zip(layer.pre(xs[k]), wants[k]):
                    np.testing.assert_array_equal(g, w)

    run_in_threads(worker, len(xs))
    assert layer._state.get("native") is not None  # the layer's native workspace


def test_layer_arguments():
    with pytest.raises(ValueError, match="n_streams"):
        mx.MHCLayer(0, 8)
    with pytest.raises(TypeError, match="dim"):
        mx.MHCLayer(4, 8.0)
    with pytest.raises(ValueError, match="variant"):
        mx.MHCLayer(4, 8, variant="v3")
    with pytest.raises(TypeError, match="dtype"):
        mx.MHCLayer(4, 8, dtype="int32")
    layer = mx.MHCLayer(4, 8, dtype="float64", seed=1)
    assert layer.phi.dtype == np.float64 and layer.phi.shape == (32, 24)
    assert mx.MHCLayer(4, 8, variant="deepseek-v4").phi.shape == (24, 32)
    with pytest.raises(mx.ShapeError, match="x must have shape"):
        layer.pre(np.zeros((3, 4, 9)))
    with pytest.raises(mx.ShapeError, match="h must have shape"):
        layer.expand(np.zeros(9))
    a, b = mx.MHCLayer(4, 8, seed=5), mx.MHCLayer(4, 8, seed=5)
    np.testing.assert_array_equal(a.phi, b.phi)
    assert "n_streams=4" in repr(a)


# ---------------------------------------------------------------- bad input


def test_errors_name_the_argument(backend):
    rng = rng_for("err")
    x = rng.standard_normal((3, 4, 8))
    w, b, a = params(rng, 4, 8, "paper")
    keep = Unchanged(Lib("numpy"), x, w, b, a)
    with pytest.raises(mx.ShapeError, match=r"phi must have shape \(32, 24\)"):
        mx.mhc_pre(x, w[:-1], b, a)
    with pytest.raises(mx.ShapeError, match=r"fn must have shape \(24, 32\)"):
        mx.mhc_pre(x, w, b, a, variant="deepseek-v4")
    with pytest.raises(mx.ShapeError, match="bias"):
        mx.mhc_pre(x, w, b[:-1], a)
    with pytest.raises(mx.ShapeError, match="alpha"):
        mx.mhc_pre(x, w, b, a[:2])
    with pytest.raises(mx.ShapeError, match="x must have shape"):
        mx.mhc_pre(x[0, 0], w, b, a)
    with pytest.raises(mx.UnsupportedDTypeError, match="x"):
        mx.mhc_pre(x.astype(complex), w, b, a)
    with pytest.raises(mx.UnsupportedDTypeError, match="phi"):
        mx.mhc_pre(x, w.astype(complex), b, a)
    with pytest.raises(ValueError, match="variant"):
        mx.mhc_pre(x, w, b, a, variant="v4")
    with pytest.raises(TypeError, match="iterations"):
        mx.mhc_pre(x, w, b, a, iterations=2.0)
    with pytest.raises(ValueError, match="norm_eps"):
        mx.mhc_pre(x, w, b, a, norm_eps=-1.0)
    with pytest.raises(TypeError, match="x must be an array"):
        mx.mhc_pre(object(), w, b, a)
    with pytest.raises(mx.ShapeError, match=r"phi must have shape \(1, 3\)"):
        mx.mhc_pre([[1.0]], w, b, a)   # a nested list is taken as NumPy takes it (SPEC 2)
    f = np.zeros((3, 8))
    hp, hr = np.ones((3, 4)), np.ones((3, 4, 4))
    with pytest.raises(mx.ShapeError, match="f_out"):
        mx.mhc_post(x, f[:, :5], hp, hr)
    with pytest.raises(mx.ShapeError, match="h_post"):
        mx.mhc_post(x, f, hp[:, :3], hr)
    with pytest.raises(mx.ShapeError, match="h_res"):
        mx.mhc_post(x, f, hp, hr[:, :3])
    with pytest.raises(mx.ShapeError, match="f_out"):
        mx.mhc_post(x, np.zeros((2, 8)), hp, hr)
    with pytest.raises(mx.ShapeError, match="out"):
        mx.mhc_post(x, f, hp, hr, out=np.zeros((3, 4, 7)))
    with pytest.raises(TypeError, match="out"):
        mx.mhc_post(x, f, hp, hr, out=np.zeros((3, 4, 8), np.float32))
    keep.check()


def test_mixed_libraries():
    torch = pytest.importorskip("torch")
    rng = rng_for("mixed")
    x = rng.standard_normal((3, 4, 8))
    w, b, a = params(rng, 4, 8, "paper")
    with pytest.raises(TypeError, match="phi"):
        mx.mhc_pre(torch.from_numpy(x), w, b, a)


# ---------------------------------------------------------------- the V4 reference itself


@pytest.mark.parametrize("n", [1, 4])
def test_against_transformers_deepseek_v4(n):
    """HuggingFace transformers' DeepseekV4HyperConnection with the same parameters
    (when transformers with DeepSeek-V4 is installed): pre, post, comb and the
    collapsed input agree within 1e-6 in float32; the decoder layer's expansion
    (comb^T @ streams) equals mhc_post."""
    torch = pytest.importorskip("torch")
    try:
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as m4
        from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    except ImportError:
        pytest.skip("transformers with DeepSeek-V4 is not installed")
    C = 64
    cfg = DeepseekV4Config(hidden_size=C, hc_mult=n, hc_sinkhorn_iters=20, hc_eps=1e-6,
                           rms_norm_eps=1e-6)
    hc = m4.DeepseekV4HyperConnection(cfg)
    rng = rng_for("hf", n)
    w, b, a = params(rng, n, C, "deepseek-v4", "float32")
    with torch.no_grad():
        hc.fn.copy_(torch.from_numpy(w))
        hc.base.copy_(torch.from_numpy(b))
        hc.scale.copy_(torch.from_numpy(a))
        x = torch.from_numpy(rng.standard_normal((2, 5, n, C)).astype("float32"))
        post, comb, collapsed = hc(x)
        f = torch.from_numpy(rng.standard_normal((2, 5, C)).astype("float32"))
        hf_next = post.unsqueeze(-1) * f.unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), x)
    h_in, h_pre, h_post, h_res = mx.mhc_pre(x, hc.fn.detach(), hc.base.detach(),
                                            hc.scale.detach(), variant="deepseek-v4")
    np.testing.assert_allclose(h_post.numpy(), post.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_res.numpy(), comb.transpose(-1, -2).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_in.numpy(), collapsed.numpy(), rtol=1e-6, atol=1e-6)
    nxt = mx.mhc_post(x, f, h_post, h_res)
    # comb's 1e-6 differences are multiplied by n streams of O(1) values here
    np.testing.assert_allclose(nxt.numpy(), hf_next.numpy(), rtol=1e-6, atol=1e-5)
