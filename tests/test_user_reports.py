"""What users tripped on, each as it was reported: a test that failed before the
fix and passes after it (the references are the float64 equations of
tests/reference.py, NumPy or the eager call)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import mhc_array as mx
import reference as ref


# ---------------------------------------------------------------- MHCLayer parameters

def _as(lib, a):
    if lib == "numpy":
        return a
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(a.copy())
    xp = pytest.importorskip("array_api_strict")
    return xp.asarray(a)


def _np(r):
    return np.asarray(r.numpy() if hasattr(r, "numpy") and not isinstance(r, np.ndarray)
                      else np.from_dlpack(r) if not isinstance(r, np.ndarray) else r)


@pytest.mark.parametrize("lib", ["numpy", "torch", "array_api_strict"])
def test_layer_uses_its_current_parameters(lib):
    """Reassigning a parameter, or changing it in place, changes the next result for
    every library (torch inputs once kept a stale converted copy)."""
    layer = mx.MHCLayer(4, 8, seed=0, dtype="float64")
    x = np.random.default_rng(1).standard_normal((3, 4, 8))
    t = _as(lib, x)

    def check():
        got = layer.pre(t)
        want = ref.mhc_pre(x, layer.phi, layer.bias, layer.alpha)
        for g, w in zip(got, want):
            np.testing.assert_allclose(_np(g), w, rtol=1e-10, atol=1e-12)
        return _np(got[3])

    first = check()
    layer.alpha = np.array([1.0, 1.0, 3.0])          # reassigned
    layer.phi = layer.phi * 40.0
    second = check()
    layer.bias[8:] = 0.0                              # changed in place: h_res mixes
    third = check()
    assert np.abs(second - first).max() > 1e-3 and np.abs(third - second).max() > 1e-3
    assert layer.n_streams == layer.n == 4


# ---------------------------------------------------------------- torch.compile

def test_compiled_plain_functions_equal_eager():
    torch = pytest.importorskip("torch")
    t = torch.randn(64, 4, 4, dtype=torch.float64)
    f = torch.compile(lambda t: mx.sinkhorn_knopp(t, logits=True))
    np.testing.assert_allclose(f(t).numpy(), ref.sinkhorn(t.numpy(), logits=True),
                               rtol=1e-12, atol=1e-14)
    layer = mx.MHCLayer(4, 8, seed=0)
    x = torch.randn(2, 3, 4, 8)
    g = torch.compile(lambda x: layer(x, torch.tanh))
    torch.testing.assert_close(g(x), layer(x, torch.tanh), rtol=0, atol=0)
    d = torch.compile(lambda a, b: mx.poincare_distance(a, b) * 2)
    a = torch.rand(5, 3, dtype=torch.float64) * 0.2
    np.testing.assert_allclose(d(a, a[0]).numpy(), 2 * ref.poincare(a.numpy(), a[0].numpy()),
                               rtol=1e-12)


def test_compile_registration_when_torch_comes_after_mhc_array():
    """mhc_array imported first, torch later: the first torch tensor registers the
    frontend with Dynamo, so a compiled call still only breaks the graph."""
    pytest.importorskip("torch")
    code = ("import mhc_array as mx, numpy as np\n"
            "mx.sinkhorn_knopp(np.ones((2, 3, 3)))\n"
            "import torch\n"
            "mx.sinkhorn_knopp(torch.ones(2, 3, 3))\n"
            "f = torch.compile(lambda t: mx.sinkhorn_knopp(t, logits=True))\n"
            "t = torch.randn(8, 4, 4)\n"
            "assert torch.equal(f(t), mx.sinkhorn_knopp(t, logits=True))\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_torch_warning_for_tensors_that_require_grad():
    """torch warns once per process (so in a fresh one) when torch.asarray copies a
    tensor that requires grad: the plain functions must not."""
    pytest.importorskip("torch")
    code = ("import torch, mhc_array as mx\n"
            "t = torch.rand(8, 4, 4, requires_grad=True)\n"
            "mx.sinkhorn_knopp(t, logits=True)\n"
            "r = mx.sinkhorn_knopp(t, row_sums=torch.ones(4))\n"
            "r.sum().backward()\n"
            "mx.project_to_manifold(t[0], manifold='euclidean')\n"
            "mx.MHCLayer(1, 4).expand(t[0])\n"
            "print(t.grad.shape)\n")
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "torch.Size([8, 4, 4])", out.stderr


# ---------------------------------------------------------------- Dask

def test_dask_errors_name_the_global_index():
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(0).random((10, 3)) * 0.1
    x[4] = 1.0
    with pytest.raises(mx.DomainError, match=r"^x\[4\] lies outside") as info:
        mx.poincare_distance(da.from_array(x, chunks=(3, 3)), np.zeros(3)).compute()
    assert info.value.index == (4,)
    s = np.random.default_rng(1).random((2, 6, 3, 3))
    s[1, 4, 2, 1] = -1.0
    with pytest.raises(mx.DomainError, match=r"^x\[1, 4, 2, 1\] is negative"):
        mx.sinkhorn_knopp(da.from_array(s, chunks=(1, 2, 3, 3))).compute()
    c = np.zeros((10, 3))
    c[7] = 2.0   # the second argument, chunked differently
    with pytest.raises(mx.DomainError, match=r"^c\[7\] lies outside"):
        mx.poincare_distance(x[:, :] * 0, da.from_array(c, chunks=(4, 3))).compute()


def test_dask_with_a_numpy_first_argument():
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(0).standard_normal((12, 5))
    c = np.random.default_rng(1).standard_normal(5)
    lazy = mx.euclidean_distance(x, da.from_array(c))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), ref.euclidean(x, c), rtol=1e-12)


def test_chunk_warning_is_exported():
    assert issubclass(mx.ChunkWarning, RuntimeWarning)
    da = pytest.importorskip("dask.array")
    with pytest.warns(mx.ChunkWarning):
        mx.euclidean_distance(da.ones((4, 6), chunks=(2, 3)), np.ones(6))


# ---------------------------------------------------------------- NumPy habits

def test_lists_and_scalars_are_taken_as_numpy_takes_them():
    x = np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_allclose(mx.euclidean_distance(x, [0.0, 0.0]),
                               ref.euclidean(x, np.zeros(2)), rtol=1e-12)
    np.testing.assert_allclose(mx.sinkhorn_knopp([[1.0, 2.0], [3.0, 4.0]], iterations=50),
                               ref.sinkhorn(np.array([[1.0, 2.0], [3.0, 4.0]]), iterations=50),
                               rtol=1e-12)
    torch = pytest.importorskip("torch")
    r = mx.euclidean_distance(torch.from_numpy(x), [0.0, 0.0])   # the call's library
    assert isinstance(r, torch.Tensor) and r.dtype == torch.float64
    assert isinstance(mx.sinkhorn_knopp([np.ones((2, 3)), np.ones((3, 3))]), list)  # ragged


def test_domain_error_says_how_to_clip():
    with pytest.raises(mx.DomainError, match="on_domain_error='clip'"):
        mx.poincare_distance(np.array([[2.0, 0.0]]), np.zeros(2))


# ---------------------------------------------------------------- curvature of graphs

def _tuple_form(G):
    nodes = list(G.nodes())
    index = {v: i for i, v in enumerate(nodes)}
    E = np.array([(index[u], index[v]) for u, v in G.edges()])
    W = np.array([w for _, _, w in G.edges(data="weight", default=1.0)])
    return E, W


@pytest.mark.parametrize("weighted", [False, True])
def test_networkx_graphs(weighted):
    nx = pytest.importorskip("networkx")
    G = nx.karate_club_graph()          # integer labels, a "weight" attribute on edges
    if not weighted:
        G = nx.Graph(G.edges())
    G = nx.relabel_nodes(G, {v: f"member {v}" for v in G.nodes()})   # string labels
    want_e, want_k = mx.ollivier_ricci_curvature(graph=_tuple_form(G), reg=1e-3)
    for call in (lambda: mx.ollivier_ricci_curvature(G, reg=1e-3),
                 lambda: mx.ollivier_ricci_curvature(graph=G, reg=1e-3)):
        e, k = call()
        np.testing.assert_array_equal(e, want_e)
        np.testing.assert_allclose(k, want_k, rtol=0, atol=1e-12)
    nodes = list(G.nodes())   # edges index list(G.nodes()): every one is an edge of G
    assert all(G.has_edge(nodes[u], nodes[v]) for u, v in e)
    if not weighted:   # an edge list means unit lengths
        e2, k2 = mx.ollivier_ricci_curvature(graph=[tuple(p) for p in e])
        np.testing.assert_allclose(k2, mx.ollivier_ricci_curvature(graph=G)[1], atol=1e-12)
    assert "suggested" in mx.estimate_curvature(graph=G)


def test_an_edge_array_is_an_edge_list_not_an_adjacency():
    ring = np.array([[i, (i + 1) % 6] for i in range(6)])      # (6, 2): a 6-cycle
    e, k = mx.ollivier_ricci_curvature(graph=ring, alpha=0.0, reg=1e-3)
    assert e.shape == (6, 2)
    np.testing.assert_allclose(k, 0.0, atol=2e-2)           # cycles of length >= 6: kappa 0


def test_networkx_refusals():
    nx = pytest.importorskip("networkx")
    with pytest.raises(ValueError, match="multigraph"):
        mx.ollivier_ricci_curvature(graph=nx.MultiGraph([(0, 1), (0, 1)]))
    with pytest.raises(ValueError, match="undirected"):
        mx.ollivier_ricci_curvature(graph=nx.DiGraph([(0, 1)]))


def test_curvature_of_dask_points_is_dask():
    da = pytest.importorskip("dask.array")
    p = np.random.default_rng(0).random((40, 3))
    e, k = mx.ollivier_ricci_curvature(da.from_array(p, chunks=(10, 3)), k=5)
    assert isinstance(e, da.Array) and isinstance(k, da.Array)
    np.testing.assert_allclose(k.compute(), mx.ollivier_ricci_curvature(p, k=5)[1], atol=1e-12)


# ---------------------------------------------------------------- nn.Module conventions

def test_connection_follows_module_conventions():
    torch = pytest.importorskip("torch")
    import mhc_array.torch as mt
    torch.manual_seed(0)
    a = mt.MHCConnection(4, 8)
    torch.manual_seed(0)
    b = mt.MHCConnection(4, 8)
    c = mt.MHCConnection(4, 8)
    assert torch.equal(a.phi, b.phi) and not torch.equal(a.phi, c.phi)   # torch's generator
    seeded = mt.MHCConnection(4, 8, seed=3)                               # seed= as MHCLayer
    np.testing.assert_allclose(seeded.phi.detach().numpy(), mx.MHCLayer(4, 8, seed=3).phi,
                               rtol=1e-6)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert mt.MHCConnection(4, 8).phi.dtype == torch.float64
    finally:
        torch.set_default_dtype(old)
    assert mt.MHCConnection(4, 8, dtype=torch.float64).bias.dtype == torch.float64
    meta = mt.MHCConnection(4, 8, device="meta")
    assert meta.phi.is_meta
    real = meta.to_empty(device="cpu")
    real.reset_parameters()
    layer = mx.MHCLayer(4, 8, dtype="float64")
    np.testing.assert_allclose(real.bias.detach().numpy(), layer.bias, rtol=1e-6)
    np.testing.assert_allclose(real.alpha.detach().numpy(), layer.alpha, rtol=1e-6)
    assert float(real.phi.detach().abs().max()) < 0.1   # small noise, not garbage
    for cls, names in ((mt.DeepseekV4Connection, ("fn", "base", "scale")),
                       (mt.DeepseekV4Head, ("hc_fn", "hc_base", "hc_scale"))):
        m = cls(4, 8, device="meta").to_empty(device="cpu")
        m.reset_parameters()
        fn, base, scale = (getattr(m, k).detach() for k in names)
        assert torch.all(base == 0) and torch.all(scale == 1) and 0 < fn.std() < 0.1


# ---------------------------------------------------------------- the docs' scripts

def test_distributed_example_runs_as_a_script(tmp_path):
    """docs/distributed.md's example saved as a file and run: the process-based
    cluster re-imports the script, which needs the __main__ guard it shows."""
    pytest.importorskip("distributed")
    import pathlib
    import re
    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "distributed.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    assert 'if __name__ == "__main__":' in code
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[:2] == ["Array (200000,) (20,)", "True"], out.stdout


# ---------------------------------------------------------------- the command line

def test_bench_only_matching_nothing_is_an_error():
    out = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--quick", "--only",
                          "zzz"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no workload matches" in out.stderr


def test_info_json_has_the_versions():
    import json
    out = subprocess.run([sys.executable, "-m", "mhc_array", "info", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["numpy"] == np.__version__ and "torch" in info["versions"]
    assert "dask" in info["versions"] and info["version"] == mx.__version__
