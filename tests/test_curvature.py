"""Ollivier-Ricci curvature (SPEC 2.4) against an exact linear-programming W1,
known values, the manifold suggestion and argument errors."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import cdist

import mhc_array as mx
import reference as ref
from mhc_array.backends import _transport
from mhc_array.curvature import _graph, _ricci

# ---------------------------------------------------------------- exact reference

def lp_kappa(A, alpha, D=None):
    """{(u, v): kappa} of every edge of the weighted adjacency ``A`` (dense, 0 = no
    edge): W1 by linear programming over the transport plans, all-pairs shortest
    paths as costs, d(u, v) the shortest-path distance -- or, given ``D``, the
    metric D for both (points: their distances)."""
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    if D is None:
        D = shortest_path(sp.csr_array(A), directed=False)

    def measure(x):
        p = np.zeros(n)
        nb = np.flatnonzero(A[x])
        p[nb] = (1 - alpha) / len(nb)
        p[x] += alpha
        return p

    out = {}
    for u in range(n):
        for v in range(u + 1, n):
            if A[u, v] == 0:
                continue
            out[(u, v)] = 1 - ref.transport_w1(D, measure(u), measure(v)) / D[u, v]
    return out


def cycle(n):
    A = np.zeros((n, n))
    i = np.arange(n)
    A[i, (i + 1) % n] = A[(i + 1) % n, i] = 1
    return A


def grid(r, c):
    A = np.zeros((r * c, r * c))
    for i in range(r):
        for j in range(c):
            if i + 1 < r:
                A[i * c + j, (i + 1) * c + j] = 1
            if j + 1 < c:
                A[i * c + j, i * c + j + 1] = 1
    return A + A.T


def binary_tree_edges(internal, seed=0):
    """A random binary tree: ``internal`` times, a random leaf gets two children."""
    rng = np.random.default_rng(seed)
    edges, leaves, n = [], [0], 1
    for _ in range(internal):
        p = leaves.pop(int(rng.integers(len(leaves))))
        edges += [(p, n), (p, n + 1)]
        leaves += [n, n + 1]
        n += 2
    return np.array(edges)


def adjacency(edges, weights=None, n=None):
    n = int(edges.max()) + 1 if n is None else n
    A = np.zeros((n, n))
    w = np.ones(len(edges)) if weights is None else weights
    A[edges[:, 0], edges[:, 1]] = w
    A[edges[:, 1], edges[:, 0]] = w
    return A


def weighted_random(n=12, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.uniform(0.5, 2, (n, n)) * (rng.random((n, n)) < 0.4)
    W = np.triu(W, 1)
    W[np.arange(n - 1), np.arange(1, n)] = 1.0  # connected
    return W + W.T


def knn_adjacency(points, k):
    D = cdist(points, points)
    np.fill_diagonal(D, np.inf)
    A = np.zeros_like(D)
    idx = np.argsort(D, axis=1)[:, :k]
    r = np.repeat(np.arange(len(points)), k)
    A[r, idx.ravel()] = D[r, idx.ravel()]
    return np.maximum(A, A.T)


GRAPHS = {
    "cycle": cycle(8),
    "grid": grid(4, 4),
    "tree": adjacency(binary_tree_edges(6)),
    "complete": np.ones((5, 5)) - np.eye(5),
    "weighted": weighted_random(),
}


def max_error(edges, kappa, ref):
    got = dict(zip(map(tuple, edges.tolist()), kappa))
    assert set(got) == set(ref)
    return max(abs(got[e] - ref[e]) for e in ref)


# ---------------------------------------------------------------- against the LP

@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_matches_linear_programming(name, alpha):
    A = GRAPHS[name]
    ref = lp_kappa(A, alpha)
    errors = {}
    for reg in (1e-1, 1e-3):
        edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, alpha=alpha, method="sinkhorn", reg=reg)
        assert edges.dtype == np.int64 and kappa.dtype == np.float64
        assert np.all(edges[:, 0] < edges[:, 1])
        errors[reg] = max_error(edges, kappa, ref)
    assert errors[1e-3] < 1e-2, errors
    assert errors[1e-3] <= errors[1e-1] + 1e-12, errors


def test_knn_graph_of_points_matches_linear_programming():
    """Points: the k-NN graph's supports, costs and d(u, v) the points' distances."""
    pts = np.random.default_rng(3).random((25, 2))
    A = knn_adjacency(pts, 4)
    ref = lp_kappa(A, 0.5, D=cdist(pts, pts))
    edges, kappa = mx.ollivier_ricci_curvature(pts, k=4, method="sinkhorn", reg=1e-3)
    assert max_error(edges, kappa, ref) < 1e-2
    e01, k01 = mx.ollivier_ricci_curvature(pts, k=4, method="sinkhorn", reg=1e-1)
    assert max_error(edges, kappa, ref) < max_error(e01, k01, ref)


def test_reg_below_1e_3_is_tighter():
    """Epsilon scaling in the scaled domain: no underflow at reg = 1e-4."""
    A = GRAPHS["weighted"]
    ref = lp_kappa(A, 0.5)
    edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, method="sinkhorn", reg=1e-4, iterations=300)
    assert max_error(edges, kappa, ref) < 1e-3


@pytest.mark.parametrize("backend", ["auto", "array_api"])
def test_knn_in_blocks_and_graph_forms_agree(monkeypatch, backend):
    mx.set_backend(backend)
    pts = np.random.default_rng(4).standard_normal((40, 3))
    e1, k1 = mx.ollivier_ricci_curvature(pts, k=5)
    A = knn_adjacency(pts, 5)
    g1 = mx.ollivier_ricci_curvature(None, graph=A)
    monkeypatch.setattr(_graph, "KNN_BLOCK", 7)
    monkeypatch.setattr(_ricci, "EDGE_CHUNK", 11)
    monkeypatch.setattr(_transport, "POINT_ELEMENTS", 100)
    monkeypatch.setattr(_transport, "GATHER_ELEMENTS", 30)
    monkeypatch.setattr(_transport, "DIST_ELEMENTS", 100)
    e2, k2 = mx.ollivier_ricci_curvature(pts.tolist(), k=5)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(k1, k2, atol=1e-5)  # batches stop at other times
    # the same graph given in each form (costs: shortest paths, not the points')
    for graph in (sp.csr_array(A), (e1, A[e1[:, 0], e1[:, 1]])):
        e3, k3 = mx.ollivier_ricci_curvature(None, graph=graph)
        np.testing.assert_array_equal(g1[0], e3)
        np.testing.assert_array_equal(e1, e3)
        np.testing.assert_allclose(g1[1], k3, atol=1e-5)


def test_other_manifolds_run():
    rng = np.random.default_rng(5)
    ball = rng.standard_normal((30, 2)) * 0.2
    edges, kappa = mx.ollivier_ricci_curvature(ball, k=4, manifold="poincare", curvature=2.0)
    assert np.all(np.isfinite(kappa)) and len(edges) >= 30 * 4 // 2
    s = rng.standard_normal((30, 3))
    edges, kappa = mx.ollivier_ricci_curvature(s, k=4, manifold="spherical")
    assert np.all(np.isfinite(kappa))



# ---------------------------------------------------------------- kernels and backends

KERNELS = ("graph_costs", "point_costs", "ot_w1", "ot_exact", "ot_exact_table", "unit_w1")


def _curvature_calls():
    """{kernel record: {backend: calls}} of stats() for the curvature kernels."""
    counted = mx.stats()
    return {name: {b: v["calls"] for b, v in counted.get(name, {}).items()}
            for name in KERNELS}


def test_stats_count_the_curvature_kernels_per_backend():
    """The kernels are records of the pipeline: stats() counts each call under the
    backend that ran it (one call of each per chunk of edges)."""
    pts = np.random.default_rng(6).standard_normal((30, 3))
    ran = "native" if mx.config()["backends"]["native"]["available"] else "array_api"
    mx.reset_stats()
    with mx.use_backend("auto"):
        kw = dict(method="sinkhorn")
        mx.ollivier_ricci_curvature(pts, k=4, **kw)                     # point costs, W1
        mx.ollivier_ricci_curvature(None, graph=cycle(8), **kw)         # graph costs, W1
        mx.ollivier_ricci_curvature(None, graph=cycle(8), alpha=0.0, **kw)  # + d(u, v)
    assert _curvature_calls() == {"graph_costs": {ran: 3}, "point_costs": {ran: 1},
                                  "ot_w1": {ran: 3}, "ot_exact": {}, "ot_exact_table": {},
                                  "unit_w1": {}}
    mx.reset_stats()
    with mx.use_backend("auto"):                           # exact: the default
        mx.ollivier_ricci_curvature(pts, k=4)                   # the points' table, exact W1
        mx.ollivier_ricci_curvature(None, graph=cycle(8))       # unit lengths: one call
        mx.ollivier_ricci_curvature(None, graph=GRAPHS["weighted"])  # the graph's table
    assert _curvature_calls() == {"graph_costs": {ran: 1}, "point_costs": {ran: 1},
                                  "ot_w1": {}, "ot_exact": {}, "ot_exact_table": {ran: 2},
                                  "unit_w1": {ran: 1}}
    mx.reset_stats()
    with mx.use_backend("array_api"):
        mx.ollivier_ricci_curvature(pts, k=4, method="sinkhorn")
    calls = _curvature_calls()
    assert calls["point_costs"]["array_api"] == calls["ot_w1"]["array_api"] == 1


@pytest.mark.parametrize("backend", ["auto", "native", "array_api"])
def test_use_backend_chooses_the_kernels(backend):
    """The backend in force runs the kernels: native for auto and native (where the
    compiled module is), array_api when it is chosen; both give kappa within the
    paths' tolerance of the exact LP."""
    native = mx.config()["backends"]["native"]["available"]
    if backend == "native" and not native:
        pytest.skip("native backend unavailable")
    ran = "native" if native and backend != "array_api" else "array_api"
    A = GRAPHS["weighted"]
    ref = lp_kappa(A, 0.5)
    mx.reset_stats()
    with mx.use_backend(backend):
        edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, method="sinkhorn", reg=1e-3)
    assert _curvature_calls() == {"graph_costs": {ran: 1}, "point_costs": {}, "ot_w1": {ran: 1},
                                  "ot_exact": {}, "ot_exact_table": {}, "unit_w1": {}}
    assert max_error(edges, kappa, ref) < 1e-2


# ---------------------------------------------------------------- known values

@pytest.mark.parametrize("n", [4, 5, 8])
def test_complete_graph(n):
    """K_n, alpha = 0: m_u and m_v share n-2 atoms; 1/(n-1) moves from v to u, so
    W1 = 1/(n-1) and kappa = (n-2)/(n-1)."""
    edges, kappa = mx.ollivier_ricci_curvature(None, graph=np.ones((n, n)) - np.eye(n),
                                               alpha=0.0, reg=1e-3)
    assert len(edges) == n * (n - 1) // 2
    np.testing.assert_allclose(kappa, (n - 2) / (n - 1), atol=1e-3)


@pytest.mark.parametrize("n", [6, 7, 10])
def test_cycle_is_flat(n):
    _, kappa = mx.ollivier_ricci_curvature(None, graph=cycle(n), alpha=0.0, reg=1e-3)
    np.testing.assert_allclose(kappa, 0.0, atol=1e-3)


def test_tree_internal_edges_negative_leaf_edges_not():
    edges = binary_tree_edges(15, seed=2)
    deg = np.bincount(edges.ravel())
    e, kappa = mx.ollivier_ricci_curvature(None, graph=(edges, np.ones(len(edges))),
                                           reg=1e-3)
    leaf = (deg[e[:, 0]] == 1) | (deg[e[:, 1]] == 1)
    internal = (deg[e[:, 0]] == 3) & (deg[e[:, 1]] == 3)
    assert internal.sum() > 3 and leaf.sum() > 3
    np.testing.assert_allclose(kappa[internal], -1 / 3, atol=1e-3)  # degrees 3, 3
    assert np.all(kappa[leaf] > 0)  # alpha = 0.5: 1/3 at a degree-3 parent
    _, k0 = mx.ollivier_ricci_curvature(None, graph=(edges, np.ones(len(edges))), alpha=0.0,
                                        reg=1e-3)
    assert np.all(k0[internal] < -0.5) and np.allclose(k0[leaf], 0.0, atol=1e-3)


# ---------------------------------------------------------------- the suggestion

def fibonacci_sphere(n):
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]


def test_estimate_sphere_spherical():
    """A coarse sphere sample (neighbourhoods of about a third of the sphere)."""
    r = mx.estimate_curvature(fibonacci_sphere(20), k=12)
    assert r["suggested"] == "spherical", r
    assert set(r["quantiles"]) == {5, 25, 75, 95}
    assert r["quantiles"][5] <= r["quantiles"][25] <= r["median"] <= r["quantiles"][75]
    assert "spherical" in r["rule"] and "poincare" in r["rule"]


def test_estimate_flat_grid_euclidean():
    g = np.stack(np.meshgrid(np.arange(15.0), np.arange(15.0)), -1).reshape(-1, 2)
    r = mx.estimate_curvature(g, k=4)
    assert r["suggested"] == "euclidean", r
    assert abs(r["median"]) < 1e-2


def test_estimate_tree_poincare():
    edges = binary_tree_edges(60, seed=1)
    r = mx.estimate_curvature(None, graph=(edges, np.ones(len(edges))))
    assert r["suggested"] == "poincare", r
    assert r["median"] < -0.2


# ---------------------------------------------------------------- errors

def test_bad_arguments_are_named():
    pts = np.random.default_rng(0).random((10, 2))
    f = mx.ollivier_ricci_curvature
    for kw, exc, name in [
        ({"k": 0}, ValueError, "k"), ({"k": 10}, ValueError, "k"),
        ({"k": 2.0}, TypeError, "k"), ({"alpha": 1.0}, ValueError, "alpha"),
        ({"alpha": -0.1}, ValueError, "alpha"), ({"reg": 0.0}, ValueError, "reg"),
        ({"reg": "x"}, TypeError, "reg"), ({"iterations": 0}, ValueError, "iterations"),
        ({"manifold": "hyperbolic"}, ValueError, "manifold"),
    ]:
        with pytest.raises(exc, match=name):
            f(pts, **kw)
    with pytest.raises(ValueError, match="points"):
        f(pts[0])
    with pytest.raises(TypeError, match="points"):
        f(pts.astype(np.complex128))
    with pytest.raises(ValueError, match="points"):
        f(np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, 2.0]]), k=1)
    with pytest.raises(ValueError, match="graph"):
        f(None, graph=-np.ones((3, 3)))
    with pytest.raises(ValueError, match="graph"):
        f(None, graph=np.ones((3, 4)))
    with pytest.raises(ValueError, match="alpha"):
        mx.estimate_curvature(pts, alpha=2)


# ---------------------------------------------------------------- GraphRicciCurvature

@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_against_graph_ricci_curvature_and_the_lp(name):
    """GraphRicciCurvature with ``exp_power=0`` (its default spreads a vertex's
    mass over its neighbours by exp(-length^2); 0 spreads it evenly, like ours).
    The exact LP is the reference for both: GraphRicciCurvature's exact method
    (POT's ot.emd2) agrees with it, ours within the 1e-2 of reg=1e-3."""
    pytest.importorskip("GraphRicciCurvature",
                        reason="GraphRicciCurvature not installed (not a dependency: "
                               "0.6.1 pins scipy<=1.13.1)")
    nx = pytest.importorskip("networkx")
    from GraphRicciCurvature.OllivierRicci import OllivierRicci
    A = GRAPHS[name]
    ref = lp_kappa(A, 0.5)
    G = nx.Graph()
    G.add_nodes_from(range(A.shape[0]))
    r, c = np.nonzero(np.triu(A))
    G.add_weighted_edges_from(zip(r.tolist(), c.tolist(), A[r, c].tolist()))
    grc = OllivierRicci(G, alpha=0.5, method="OTD", exp_power=0, proc=1, verbose="ERROR")
    theirs = {tuple(sorted(map(int, e))): k for e, k in grc.compute_ricci_curvature_edges().items()}
    assert set(theirs) == set(ref)
    assert max(abs(theirs[e] - ref[e]) for e in ref) < 1e-6
    edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, alpha=0.5, method="sinkhorn", reg=1e-3)
    ours = dict(zip(map(tuple, edges.tolist()), kappa))
    assert max(abs(ours[e] - theirs[e]) for e in ref) < 1e-2


def test_bench_curvature_says_skipped_without_graph_ricci_curvature(monkeypatch, capsys):
    from mhc_array.bench import _curvature as _curvature_bench
    monkeypatch.setattr(_curvature_bench, "grc_available", lambda: "ModuleNotFoundError: x")
    assert _curvature_bench.run(cases=()) == 0
    assert "skipped: GraphRicciCurvature not installed" in capsys.readouterr().out


def test_results_in_the_callers_library():
    """Torch points (requiring grad, so not exportable through DLPack as they are):
    torch results, equal to the NumPy call's; estimate_curvature summarises them."""
    torch = pytest.importorskip("torch")
    pts = np.random.default_rng(4).standard_normal((40, 3))
    e_np, k_np = mx.ollivier_ricci_curvature(pts, k=5)
    t = torch.tensor(pts, requires_grad=True)
    e_t, k_t = mx.ollivier_ricci_curvature(t, k=5)
    assert isinstance(e_t, torch.Tensor) and isinstance(k_t, torch.Tensor)
    assert e_t.dtype == torch.int64 and k_t.dtype == torch.float64
    np.testing.assert_array_equal(e_t.numpy(), e_np)
    np.testing.assert_array_equal(k_t.numpy(), k_np)
    assert mx.estimate_curvature(t, k=5)["median"] == mx.estimate_curvature(pts, k=5)["median"]


@pytest.mark.parametrize("manifold", ["poincare", "spherical"])
def test_points_on_other_manifolds_match_linear_programming(manifold):
    """Costs of points are the chosen manifold's distances (not graph paths)."""
    rng = np.random.default_rng(8)
    pts = rng.standard_normal((20, 3))
    if manifold == "poincare":
        pts *= 0.8 / np.linalg.norm(pts, axis=1).max()
    D = np.asarray(mx.pairwise_distance(pts, pts, manifold=manifold))
    np.fill_diagonal(D, 0.0)
    Dk = D.copy()
    np.fill_diagonal(Dk, np.inf)
    A = np.zeros_like(D)
    idx = np.argsort(Dk, axis=1)[:, :4]
    r = np.repeat(np.arange(len(pts)), 4)
    A[r, idx.ravel()] = D[r, idx.ravel()]
    A = np.maximum(A, A.T)
    ref = lp_kappa(A, 0.5, D=D)
    edges, kappa = mx.ollivier_ricci_curvature(pts, k=4, manifold=manifold, method="sinkhorn", reg=1e-3)
    assert max_error(edges, kappa, ref) < 1e-2
