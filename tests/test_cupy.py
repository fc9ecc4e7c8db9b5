"""The cupy backend on a real GPU: CuPy arrays and PyTorch CUDA tensors through
every public function, against the float64 references. These tests skip, with
the reason, where CuPy or a CUDA device is missing (CI has none: there the
kernels' results are checked on the CPU by tests/test_cuda_harness.py). The host
path (modules, kernel functions and stream wrappers kept per device) is tested
everywhere, with a fake cupy module."""

import numpy as np
import pytest
import reference as ref
from conftest import DIST_TOL, SINK_TOL, rng_for

import mhc_array as mx
from mhc_array.backends import cupy as cb
from mhc_array.errors import BackendUnavailableError, DomainError

MHC_TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def test_forcing_cupy_for_a_cpu_array_says_why():
    """Runs everywhere: a CPU array cannot be served by the cupy backend."""
    with mx.use_backend("cupy"):
        with pytest.raises(BackendUnavailableError, match="cupy"):
            mx.sinkhorn_knopp(np.ones((2, 3, 3)))


def _device_or_skip():
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"CuPy cannot use CUDA here: {exc}")
    if count < 1:
        pytest.skip("no CUDA device")
    return cupy


class CupyLib:
    name = "cupy"

    def __init__(self):
        self.cp = _device_or_skip()

    def asarray(self, a):
        return self.cp.asarray(np.array(a, copy=True))

    def to_numpy(self, r):
        assert isinstance(r, self.cp.ndarray), type(r)
        return self.cp.asnumpy(r)


class TorchCudaLib:
    name = "torch"

    def __init__(self):
        _device_or_skip()
        self.torch = pytest.importorskip("torch")
        if not self.torch.cuda.is_available():
            pytest.skip("torch has no CUDA here")

    def asarray(self, a):
        return self.torch.from_numpy(np.array(a, copy=True)).cuda()

    def to_numpy(self, r):
        assert isinstance(r, self.torch.Tensor) and r.is_cuda, type(r)
        return r.detach().cpu().numpy()


@pytest.fixture(params=["cupy", "torch"])
def glib(request):
    return CupyLib() if request.param == "cupy" else TorchCudaLib()


def _served_by_cupy(name):
    used = mx.stats()[name]
    assert set(used) == {"cupy"}, used


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["rows-first", "cols-first"])
@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("shape", [(64, 4, 4), (9, 3, 5), (3, 40, 33)], ids=str)
def test_sinkhorn(glib, shape, logits, order, dtype):
    rng = rng_for("gpu-sk", shape, logits, order, dtype)
    x_np = (rng.standard_normal(shape) if logits else rng.uniform(0, 1, shape)).astype(dtype)
    x_np[1] = np.nan                       # one NaN matrix: the others untouched
    mx.reset_stats()
    with mx.use_backend("cupy"):
        got = glib.to_numpy(mx.sinkhorn_knopp(glib.asarray(x_np), logits=logits, order=order))
    _served_by_cupy("sinkhorn_knopp")
    want = ref.sinkhorn(x_np, logits=logits, order=order)
    assert np.isnan(got[1]).all()
    keep = np.arange(shape[0]) != 1
    np.testing.assert_allclose(got[keep], want[keep], **SINK_TOL[dtype])


def test_sinkhorn_targets_tau_and_out(glib):
    rng = rng_for("gpu-sk-targets")
    x_np = rng.uniform(0, 1, (5, 3, 4))
    rs = rng.uniform(0.5, 2, (5, 3))
    cs = np.full(4, 1.0) * rs.sum(-1, keepdims=True) / 4
    x, r, c = glib.asarray(x_np), glib.asarray(rs), glib.asarray(cs)
    with mx.use_backend("cupy"):
        got = mx.sinkhorn_knopp(x, row_sums=r, col_sums=c, tau=0.1, iterations=9)
        np.testing.assert_allclose(glib.to_numpy(got),
                                   ref.sinkhorn(x_np, row_sums=rs, col_sums=cs, tau=0.1,
                                                iterations=9), **SINK_TOL["float64"])
        res = mx.sinkhorn_knopp(x, out=x)          # in place
        assert res is x
    np.testing.assert_allclose(glib.to_numpy(x), ref.sinkhorn(x_np), **SINK_TOL["float64"])


@pytest.mark.parametrize("logits", [False, True])
def test_sinkhorn_backward(glib, logits):
    from mhc_array._api import SINKHORN_BACKWARD
    rng = rng_for("gpu-sk-bwd", logits)
    x_np = rng.standard_normal((2, 3, 4)) if logits else rng.uniform(0.2, 1, (2, 3, 4))
    up = rng.standard_normal(x_np.shape)
    h, want = 1e-6, np.zeros_like(x_np)
    kw = dict(iterations=4, tau=0.05, logits=logits, order="cols-first")
    for idx in np.ndindex(x_np.shape):
        a, b = x_np.copy(), x_np.copy()
        a[idx] += h
        b[idx] -= h
        want[idx] = np.sum(up * (ref.sinkhorn(a, **kw) - ref.sinkhorn(b, **kw))) / (2 * h)
    with mx.use_backend("cupy"):
        got = SINKHORN_BACKWARD((glib.asarray(x_np), None, None, glib.asarray(up)),
                                (4, 0.05, logits, "cols-first"))
    np.testing.assert_allclose(glib.to_numpy(got), want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", ["euclidean", "poincare", "spherical"])
def test_distances_and_pairwise(glib, manifold, dtype):
    rng = rng_for("gpu-dist", manifold, dtype)
    make = {"euclidean": lambda s: rng.standard_normal(s + (16,)),
            "poincare": lambda s: ref.ball_points(rng, s, 16),
            "spherical": lambda s: ref.sphere_points(rng, s, 16)}[manifold]
    x_np, c_np, y_np = make((50,)).astype(dtype), make(()).astype(dtype), make((7,)).astype(dtype)
    mx.reset_stats()
    with mx.use_backend("cupy"):
        got = mx.geometric_distance(glib.asarray(x_np), glib.asarray(c_np), manifold=manifold)
        pw = mx.pairwise_distance(glib.asarray(x_np), glib.asarray(y_np), manifold=manifold)
    _served_by_cupy("geometric_distance")
    _served_by_cupy("pairwise_distance")
    extra = dict(atol=1e-15) if manifold == "spherical" else {}
    np.testing.assert_allclose(glib.to_numpy(got), ref.distance(manifold, x_np, c_np),
                               **{**DIST_TOL[dtype], **extra})
    np.testing.assert_allclose(glib.to_numpy(pw), ref.pairwise(manifold, x_np, y_np),
                               **{**DIST_TOL[dtype], **extra})


def test_domain_errors(glib):
    x_np = np.zeros((4, 3))
    x_np[2] = [1, 1, 0]
    with mx.use_backend("cupy"):
        with pytest.raises(DomainError) as e:
            mx.poincare_distance(glib.asarray(x_np), glib.asarray(np.zeros(3)))
        assert e.value.index == (2,)
        got = mx.poincare_distance(glib.asarray(x_np), glib.asarray(np.zeros(3)),
                                   on_domain_error="nan")
        assert np.isnan(glib.to_numpy(got)[2])
        with pytest.raises(DomainError):
            mx.spherical_distance(glib.asarray(x_np), glib.asarray(np.ones(3)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_mhc_pre_post(glib, variant, dtype):
    rng = rng_for("gpu-mhc", variant, dtype)
    n, C = 4, 64
    K = (2 + n) * n
    x_np = rng.standard_normal((3, 5, n, C)).astype(dtype)
    w = (rng.standard_normal((n * C, K) if variant == "paper" else (K, n * C)) * 0.1)
    b, a = rng.standard_normal(K) * 0.1, np.array([0.8, 0.5, 1.3])
    w, b, a = (v.astype(dtype) for v in (w, b, a))
    mx.reset_stats()
    with mx.use_backend("cupy"):
        h = mx.mhc_pre(*(glib.asarray(v) for v in (x_np, w, b, a)), variant=variant)
        nxt = mx.mhc_post(glib.asarray(x_np), h[0], h[2], h[3])
    _served_by_cupy("mhc_pre")
    _served_by_cupy("mhc_post")
    want = ref.mhc_pre(x_np, w, b, a, variant=variant)
    for g, wv in zip(h, want):
        np.testing.assert_allclose(glib.to_numpy(g), wv, **MHC_TOL[dtype])
    np.testing.assert_allclose(glib.to_numpy(nxt), ref.mhc_post(x_np, *(want[k] for k in
                                                                         (0, 2, 3))),
                               **MHC_TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_mhc_post_pre(glib, variant, dtype):
    """The fused boundary on the GPU: x_next and the next pre step as post then pre
    of the references; out= x updates the residual in place."""
    rng = rng_for("gpu-post-pre", variant, dtype)
    n, C = 4, 300
    K = (2 + n) * n
    x_np = rng.standard_normal((3, 5, n, C)).astype(dtype)
    f = rng.standard_normal((3, 5, C)).astype(dtype)
    hp, hr = rng.uniform(0, 2, (3, 5, n)).astype(dtype), rng.uniform(0, 1, (3, 5, n, n))
    w = (rng.standard_normal((n * C, K) if variant == "paper" else (K, n * C)) * 0.1)
    b, a = rng.standard_normal(K) * 0.1, np.array([0.8, 0.5, 1.3])
    hr, w, b, a = (v.astype(dtype) for v in (hr, w, b, a))
    nxt = ref.mhc_post(x_np, f, hp, hr)
    want = (nxt, *ref.mhc_pre(nxt, w, b, a, variant=variant))
    mx.reset_stats()
    with mx.use_backend("cupy"):
        xg = glib.asarray(x_np)
        args = [glib.asarray(v) for v in (f, hp, hr, w, b, a)]
        got = mx.mhc_post_pre(xg, *args, variant=variant)
        np.testing.assert_array_equal(glib.to_numpy(xg), x_np)
        inplace = mx.mhc_post_pre(xg, *args, variant=variant, out=xg)
    _served_by_cupy("mhc_post_pre")
    assert inplace[0] is xg
    for res in (got, inplace):
        for g, wv in zip(res, want):
            np.testing.assert_allclose(glib.to_numpy(g), wv, **MHC_TOL[dtype])


@pytest.mark.parametrize("mode", ["nan", "clip"])
def test_distances_capture_in_a_cuda_graph(mode):
    """The "nan" and "clip" paths read nothing back from the device: a torch CUDA
    graph captures the call, and its replays compute the distances of the inputs'
    new values (a warm-up call first fills CuPy's memory pool, as torch asks of
    any captured work)."""
    lib = TorchCudaLib()
    torch = lib.torch
    rng = rng_for("gpu-graph", mode)
    x = torch.from_numpy(rng.uniform(-0.3, 0.3, (257, 33))).cuda()
    c = torch.from_numpy(rng.uniform(-0.3, 0.3, 33)).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), mx.use_backend("cupy"):
        del_me = mx.poincare_distance(x, c, on_domain_error=mode)
    torch.cuda.current_stream().wait_stream(side)
    del del_me
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), mx.use_backend("cupy"):
        out = mx.poincare_distance(x, c, on_domain_error=mode)
    for scale in (0.5, 1.0):                  # 1.0: about half the points leave the ball
        x_np = rng.uniform(-0.3, 0.3, (257, 33)) * scale
        x.copy_(torch.from_numpy(x_np))
        graph.replay()
        torch.cuda.synchronize()
        want = ref.poincare(ref.clip_to_ball(x_np) if mode == "clip" else x_np,
                            c.cpu().numpy()).astype(np.float64)
        np.testing.assert_allclose(out.cpu().numpy(), want, rtol=1e-12)


def _aa(name, *arrays, **kw):
    """The array_api backend's function in NumPy float64: the reference."""
    from mhc_array.backends import array_api as aa

    class Call:
        def copied(self, nbytes):
            pass
    f64 = [None if a is None else np.asarray(a, np.float64) for a in arrays]
    return getattr(aa, name)(np, *f64, call=Call(), **kw)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(4099, 4, 4), (301, 3, 5)], ids=str)
def test_sinkhorn_backward_small_matrices(glib, shape, dtype):
    """The one-thread-per-matrix backward (20 iterations, both orders, logits)."""
    from mhc_array._api import SINKHORN_BACKWARD
    rng = rng_for("gpu-sk-bwd-small", shape, dtype)
    for logits, order in ((False, "rows-first"), (True, "cols-first")):
        x_np = (rng.standard_normal(shape) if logits else
                rng.uniform(0.05, 1, shape)).astype(dtype)
        up = rng.standard_normal(shape).astype(dtype)
        mx.reset_stats()
        with mx.use_backend("cupy"):
            got = glib.to_numpy(SINKHORN_BACKWARD((glib.asarray(x_np), None, None,
                                                   glib.asarray(up)),
                                                  (20, 0.0, logits, order)))
        _served_by_cupy("sinkhorn_backward")
        want = _aa("sinkhorn_backward", x_np, None, None, up, iterations=20, tau=0.0,
                   logits=logits, order=order)
        tol = (1e-9, 1e-11) if dtype == "float64" else (2e-3, 2e-4)
        np.testing.assert_allclose(got, want, rtol=tol[0], atol=tol[1] * np.abs(want).max())


def _mhc_bwd_tol(dtype, want):
    rtol, atol = (1e-9, 1e-11) if dtype == "float64" else (2e-3, 2e-4)
    return dict(rtol=rtol, atol=atol * max(np.abs(want).max(), 1e-3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("n,C,missing", [(4, 64, ""), (3, 37, "r"), (16, 5, "ipq")])
def test_mhc_pre_backward(glib, n, C, missing, variant, dtype):
    """The record mhc_array.torch's autograd calls, on the GPU: (g_x, gz, y, gp) per
    token; upstream gradients named in ``missing`` (i, p, q, r) passed as None."""
    from mhc_array._mhc import MHC_PRE_BACKWARD
    rng = rng_for("gpu-mhc-bwd", n, C, variant, dtype)
    K = (2 + n) * n
    x_np = rng.standard_normal((3, 5, n, C)).astype(dtype)
    w = rng.standard_normal((n * C, K) if variant == "paper" else (K, n * C)) * 0.1
    b, a = rng.standard_normal(K) * 0.1, np.array([0.8, 0.5, 1.3])
    w, b, a = (v.astype(dtype) for v in (w, b, a))
    shapes = {"i": (C,), "p": (n,), "q": (n,), "r": (n, n)}
    ups = [None if k in missing else rng.standard_normal((3, 5) + shapes[k]).astype(dtype)
           for k in "ipqr"]
    opts = (20, 1e-6, variant, 1e-3)
    mx.reset_stats()
    with mx.use_backend("cupy"):
        got = MHC_PRE_BACKWARD(tuple(None if v is None else glib.asarray(v)
                                     for v in (x_np, w, b, a, *ups)), opts)
        again = MHC_PRE_BACKWARD(tuple(None if v is None else glib.asarray(v)
                                       for v in (x_np, w, b, a, *ups)), opts)
    _served_by_cupy("mhc_pre_backward")
    want = _aa("mhc_pre_backward", x_np, w, b, a, *ups, iterations=20, norm_eps=1e-6,
               variant=variant, hc_eps=1e-3)
    for g, g2, wv in zip(got, again, want):
        g, g2 = glib.to_numpy(g), glib.to_numpy(g2)
        np.testing.assert_array_equal(g, g2)          # deterministic: no atomics
        np.testing.assert_allclose(g, wv, **_mhc_bwd_tol(dtype, wv))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mhc_post_backward(glib, dtype):
    from mhc_array._mhc import MHC_POST_BACKWARD
    rng = rng_for("gpu-mhc-post-bwd", dtype)
    n, C = 4, 300
    x_np = rng.standard_normal((3, 5, n, C)).astype(dtype)
    g_np = rng.standard_normal(x_np.shape).astype(dtype)
    f = rng.standard_normal((3, 5, C)).astype(dtype)
    hp = rng.uniform(0, 2, (3, 5, n)).astype(dtype)
    hr = rng.uniform(0, 1, (3, 5, n, n)).astype(dtype)
    mx.reset_stats()
    with mx.use_backend("cupy"):
        got = MHC_POST_BACKWARD(tuple(glib.asarray(v) for v in (x_np, f, hp, hr, g_np)), ())
    _served_by_cupy("mhc_post_backward")
    want = _aa("mhc_post_backward", x_np, f, hp, hr, g_np)
    for gv, wv in zip(got, want):
        np.testing.assert_allclose(glib.to_numpy(gv), wv, **_mhc_bwd_tol(dtype, wv))


@pytest.mark.parametrize("variant", ["paper", "deepseek-v4"])
def test_torch_mhc_autograd_on_cuda(variant):
    """mhc_array.torch's mHC connection on CUDA tensors, forward and backward through
    the cupy kernels, against the same on CPU tensors (the native backend)."""
    lib = TorchCudaLib()
    torch = lib.torch
    import mhc_array.torch as mt
    rng = rng_for("gpu-torch-mhc", variant)
    n, C = 4, 48
    K = (2 + n) * n
    x_np = rng.standard_normal((2, 3, n, C))
    w = rng.standard_normal((n * C, K) if variant == "paper" else (K, n * C)) * 0.1
    b, a = rng.standard_normal(K) * 0.1, np.array([0.8, 0.5, 1.3])
    f_np = rng.standard_normal((2, 3, C))
    grads = {}
    for dev in ("cpu", "cuda"):
        ts = [torch.tensor(v, device=dev, requires_grad=True) for v in (x_np, w, b, a, f_np)]
        mx.reset_stats()
        h_in, h_pre, h_post, h_res = mt.mhc_pre(*ts[:4], variant=variant)
        out = mt.mhc_post(ts[0], ts[4] * h_in, h_post, h_res)
        (out.square().sum() + h_pre.sum()).backward()
        grads[dev] = [t.grad.detach().cpu().numpy() for t in ts]
        if dev == "cuda":
            _served_by_cupy("mhc_pre_backward")
            _served_by_cupy("mhc_post_backward")
    for g, want in zip(grads["cuda"], grads["cpu"]):
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-11 * np.abs(want).max())


def test_auto_sends_cuda_arrays_to_cupy(glib):
    x = glib.asarray(np.random.default_rng(0).uniform(0, 1, (8, 4, 4)))
    mx.reset_stats()
    mx.sinkhorn_knopp(x)
    _served_by_cupy("sinkhorn_knopp")


def test_torch_runs_on_its_current_stream():
    """A tensor written on a side stream and used on it: the kernels are ordered
    after the write without any synchronisation by the caller."""
    lib = TorchCudaLib()
    torch = lib.torch
    s = torch.cuda.Stream()
    x_np = np.random.default_rng(1).uniform(0, 1, (4096, 4, 4))
    with torch.cuda.stream(s):
        x = torch.empty((4096, 4, 4), dtype=torch.float64, device="cuda")
        x.copy_(torch.from_numpy(x_np).pin_memory(), non_blocking=True)
        with mx.use_backend("cupy"):
            got = mx.sinkhorn_knopp(x)
        got = got.cpu()
    np.testing.assert_allclose(got.numpy(), ref.sinkhorn(x_np), **SINK_TOL["float64"])


def test_out_of_memory_is_a_clear_error():
    """A result larger than any GPU (2**36 float64): a MemoryError naming the backend,
    and the device stays usable."""
    cupy = _device_or_skip()
    x = cupy.zeros((1 << 18, 1))
    with mx.use_backend("cupy"):
        with pytest.raises(MemoryError, match="GPU memory"):
            mx.pairwise_distance(x, x)
        assert float(mx.euclidean_distance(x[:4], x[0]).sum()) == 0.0


# ---------------------------------------------------------------- the host path (no GPU)

class _FakeCupy:
    """Stands in for the cupy module: records what the host path asks of it (modules
    compiled, functions looked up, launches, streams wrapped and entered)."""

    def __init__(self):
        import types
        fake = self
        self.compiled, self.lookups, self.launches = [], [], []
        self.wrapped, self.entered, self.device = [], [], None

        class Ctx:
            def __init__(self, what):
                self.what = what

            def __enter__(self):
                fake.entered.append(self.what)

            def __exit__(self, *exc):
                return False

        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                fake.device = self.index

            def __exit__(self, *exc):
                fake.device = None

        class RawModule:
            def __init__(self, code, options):
                self.file = next(f for f in cb.SOURCES if cb.source(f) == code)
                fake.compiled.append((self.file, fake.device))

            def get_function(self, name):
                fake.lookups.append((name, fake.device))
                return lambda grid, block, args, shared_mem: fake.launches.append(
                    (name, fake.device))

        def external(ptr, device):
            fake.wrapped.append((device, ptr))
            return Ctx(("stream", device, ptr))

        class OutOfMemoryError(Exception):
            pass
        self.RawModule, self.ndarray = RawModule, type(None)
        self.cuda = types.SimpleNamespace(
            Device=Device, ExternalStream=external, Stream=types.SimpleNamespace(
                null=Ctx("null stream")),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))



@pytest.fixture
def fake_cupy(monkeypatch):
    """A fake cupy module (sys.modules) and empty host caches for the test."""
    import sys
    fake = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for cache in ("_modules", "_engines", "_streams"):
        monkeypatch.setattr(cb, cache, {})
    return fake


def test_kernels_compile_once_per_file_and_device(fake_cupy):
    """A module per (file, device), a function lookup per (kernel, device), and every
    launch reaches the kernel (no GPU: a fake cupy module records the calls)."""
    def launch(device, name):
        fake_cupy.device = device          # _call makes the device current
        cb._cupy_engine(device, fake_cupy).launch(name, 1, cb.BLOCK, [], 0)
    for device in (0, 1, 0, 1):
        launch(device, "mhc_sk_4x4_f32")
        launch(device, "mhc_sk_small_f32")
        launch(device, "mhc_dist_f32")
        launch(device, "mhc_pre_f64")
    assert cb._cupy_engine(0, fake_cupy) is cb._cupy_engine(0, fake_cupy)
    assert cb._cupy_engine(0, fake_cupy) is not cb._cupy_engine(1, fake_cupy)
    assert sorted(fake_cupy.compiled) == sorted((f, d) for f in cb.SOURCES for d in (0, 1))
    assert sorted(fake_cupy.lookups) == sorted(
        (k, d) for k in ("mhc_sk_4x4_f32", "mhc_sk_small_f32", "mhc_dist_f32", "mhc_pre_f64")
        for d in (0, 1))
    assert len(fake_cupy.launches) == 16
    assert all(name.startswith("mhc") and dev in (0, 1) for name, dev in fake_cupy.launches)


def test_kernel_files():
    assert [cb._kernel_file(k) for k in ("mhc_sk_block_f32", "mhc_sk_bwd_f64",
                                         "mhc_dist_f32", "mhc_post_bwd_f32",
                                         "mhc_pre_bwd_coef4_f64")] == \
        ["sinkhorn.cu", "sinkhorn.cu", "distance.cu", "mhc.cu", "mhc.cu"]


class _FakeTensor:
    """What _call reads of a torch CUDA tensor: its module, DLPack device and .device."""
    __module__ = "torch"

    def __init__(self, index):
        import types
        self.device = types.SimpleNamespace(index=index)

    def __dlpack_device__(self):
        return (2, self.device.index)


def test_torch_streams_are_wrapped_once_per_device_and_pointer(fake_cupy, monkeypatch):
    """_call runs the body on the device of the tensor and in torch's current stream,
    wrapped once per (device, stream pointer); pointer 0 is the legacy default stream."""
    import sys
    import types
    current = {0: 0xA000, 1: 0xB000}
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
        current_stream=lambda device: types.SimpleNamespace(cuda_stream=current[device.index])))
    monkeypatch.setitem(sys.modules, "torch", torch)
    seen = []

    def body(eng, to_cupy):
        seen.append((fake_cupy.device, fake_cupy.entered[-1], eng))
        return len(seen)
    for _ in range(3):
        for dev in (0, 1):
            cb._call(_FakeTensor(dev), body)
    assert fake_cupy.wrapped == [(0, 0xA000), (1, 0xB000)]
    assert [s[:2] for s in seen[:2]] == [(0, ("stream", 0, 0xA000)), (1, ("stream", 1, 0xB000))]
    assert seen[0][2] is seen[2][2] and seen[0][2] is not seen[1][2]   # an engine per device
    current[0] = 0xC000                                 # torch.cuda.stream(another) on 0
    cb._call(_FakeTensor(0), body)
    assert fake_cupy.wrapped[-1] == (0, 0xC000) and seen[-1][1] == ("stream", 0, 0xC000)
    current[0] = 0
    cb._call(_FakeTensor(0), body)
    assert seen[-1][1] == "null stream" and len(fake_cupy.wrapped) == 3


def test_stream_wrappers_kept_are_bounded(fake_cupy):
    for ptr in range(1, 3 * cb.STREAMS_KEPT):
        cb._external_stream(fake_cupy, ptr, 0)
    assert len(cb._streams) <= cb.STREAMS_KEPT
    cb._external_stream(fake_cupy, 3 * cb.STREAMS_KEPT - 1, 0)     # the last one is kept
    assert fake_cupy.wrapped.count((0, 3 * cb.STREAMS_KEPT - 1)) == 1
