"""Exact Ollivier-Ricci curvature (SPEC 2.4, ``method="exact"``, the default): kappa
against an exact linear program (SciPy's HiGHS) and POT's ``ot.emd2`` to 1e-9 on
many graphs, every alpha, at every backend and ISA level; the two exact kernels
(``mhc_ot_exact_f64``, ``mhc_unit_w1_f64``) and their ABI's refusals."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import cdist

import mhc_array as mx
from conftest import native_available
from test_curvature import (GRAPHS, adjacency, binary_tree_edges, cycle, grid, knn_adjacency,
                            lp_kappa, max_error, weighted_random)

ot = pytest.importorskip("ot", reason="POT (a test dependency) not installed")

EXACT = 1e-9


def emd_kappa(A, alpha, D=None):
    """{(u, v): kappa} with W1 from POT's ``ot.emd2`` (network simplex) on the dense
    (supports x supports) block -- as GraphRicciCurvature's OTD computes it."""
    A = np.asarray(A, dtype=np.float64)
    if D is None:
        D = shortest_path(sp.csr_array(A), directed=False)
    out = {}
    for u, v in zip(*np.nonzero(np.triu(A))):
        sup = []
        for x in (u, v):
            nb = np.flatnonzero(A[x])
            s = np.concatenate([[x], nb]) if alpha > 0 else nb
            m = np.full(len(nb), (1 - alpha) / len(nb))
            sup.append((s, np.concatenate([[alpha], m]) if alpha > 0 else m))
        (sx, mx_), (sy, my) = sup
        w = ot.emd2(mx_, my, D[np.ix_(sx, sy)])
        out[(int(u), int(v))] = 1 - w / D[u, v]
    return out


def random_geometric(n, radius, seed):
    pts = np.random.default_rng(seed).random((n, 2))
    D = cdist(pts, pts)
    A = ((D < radius) & (D > 0)).astype(float)
    return A


def disconnected():
    A = np.zeros((12, 12))
    A[:5, :5] = cycle(5)
    A[5:, 5:] = grid(1, 7)
    return A


def knn_graph_weighted(seed=3, n=30, k=4):
    pts = np.random.default_rng(seed).standard_normal((n, 5))
    return knn_adjacency(pts, k)


def hypercube(dim):
    n = 1 << dim
    A = np.zeros((n, n))
    for v in range(n):
        for b in range(dim):
            A[v, v ^ (1 << b)] = 1
    return A


def complete_bipartite(p, q):
    A = np.zeros((p + q, p + q))
    A[:p, p:] = 1
    return A + A.T


MORE = dict(GRAPHS, **{
    "cycle5": cycle(5), "grid34": grid(3, 4), "tree_big": adjacency(binary_tree_edges(12, 4)),
    "complete7": np.ones((7, 7)) - np.eye(7), "weighted2": weighted_random(15, 7),
    "geometric": random_geometric(40, 0.3, 1), "knn": knn_graph_weighted(),
    "disconnected": disconnected(), "constant_length": 2.5 * grid(3, 3),
    "star": adjacency(np.array([(0, i) for i in range(1, 9)])),
    "hypercube4": hypercube(4), "bipartite35": complete_bipartite(3, 5)})


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("name", sorted(MORE))
def test_exact_matches_linear_programming_and_emd(name, alpha, backend):
    A = MORE[name]
    edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, alpha=alpha)
    assert max_error(edges, kappa, lp_kappa(A, alpha)) < EXACT
    assert max_error(edges, kappa, emd_kappa(A, alpha)) < EXACT


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7])
def test_exact_points_match_linear_programming(alpha, backend):
    """Points: costs and d(u, v) the points' distances (not graph paths)."""
    pts = np.random.default_rng(3).standard_normal((30, 4))
    A = knn_adjacency(pts, 4)
    D = cdist(pts, pts)
    edges, kappa = mx.ollivier_ricci_curvature(pts, k=4, alpha=alpha)
    assert max_error(edges, kappa, lp_kappa(A, alpha, D=D)) < EXACT
    assert max_error(edges, kappa, emd_kappa(A, alpha, D=D)) < EXACT


def test_exact_is_the_default_and_sinkhorn_a_bound():
    A = MORE["geometric"]
    e1, exact = mx.ollivier_ricci_curvature(None, graph=A)
    e2, same = mx.ollivier_ricci_curvature(None, graph=A, method="exact")
    e3, ent = mx.ollivier_ricci_curvature(None, graph=A, method="sinkhorn", reg=1e-3)
    np.testing.assert_array_equal(exact, same)
    assert np.all(ent <= exact + 1e-12)         # entropic W1 is an upper bound
    assert np.max(exact - ent) < 1e-2
    with pytest.raises(ValueError, match="method"):
        mx.ollivier_ricci_curvature(None, graph=A, method="emd")
    s = mx.estimate_curvature(None, graph=A)
    assert s["suggested"] in ("euclidean", "spherical", "poincare")


def test_networkx_forms_and_multigraph_refused():
    nx = pytest.importorskip("networkx")
    G = nx.random_geometric_graph(60, 0.25, seed=2)
    A = nx.to_numpy_array(G, nodelist=list(G.nodes()))
    edges, kappa = mx.ollivier_ricci_curvature(G)
    assert max_error(edges, kappa, emd_kappa(A, 0.5)) < EXACT
    with pytest.raises(ValueError, match="multigraph"):
        mx.ollivier_ricci_curvature(nx.MultiGraph([(0, 1), (0, 1), (1, 2)]))


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
def test_threads_give_the_same_kappa():
    A = random_geometric(300, 0.12, 5)
    W = A * np.random.default_rng(1).uniform(0.5, 2, A.shape)
    W = np.triu(W, 1)
    W = W + W.T
    for graph in (A, W):
        with mx.use_num_threads(1):
            _, k1 = mx.ollivier_ricci_curvature(None, graph=graph)
        with mx.use_num_threads(2):
            _, k2 = mx.ollivier_ricci_curvature(None, graph=graph)
        np.testing.assert_array_equal(k1, k2)


# ---------------------------------------------------------------- the kernels

def _native():
    from mhc_array._native import ffi, lib
    return ffi, lib


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
def test_ot_exact_random_problems_match_emd():
    """Random dense problems (not metric): the solver alone, against ot.emd2."""
    from mhc_array.curvature._kernels import OT_EXACT
    rng = np.random.default_rng(0)
    costs, mus, mvs, rp, cp, want = [], [], [], [0], [0], []
    for _ in range(300):
        n, m = rng.integers(1, 12, 2)
        C = rng.random((n, m)) * rng.choice([1, 10, 1e-3])
        C[rng.random((n, m)) < 0.2] = rng.integers(0, 3)     # ties
        a, b = rng.random(n), rng.random(m)
        a[rng.random(n) < 0.2] = 0
        a = a / a.sum() if a.sum() else np.full(n, 1 / n)
        b = b / b.sum()
        costs.append(C.ravel())
        mus.append(a)
        mvs.append(b)
        rp.append(rp[-1] + n)
        cp.append(cp[-1] + m)
        want.append(ot.emd2(a, b, C))
    args = (np.concatenate(costs), np.concatenate(mus), np.concatenate(mvs),
            np.array(rp), np.array(cp))
    for backend in ("native", "array_api"):
        with mx.use_backend(backend):
            w = OT_EXACT(args, (False,))
        np.testing.assert_allclose(w, want, rtol=0, atol=1e-12)


def _random_problems(rng, count, most):
    """Degenerate transport problems: costs with many ties (integers 0..3, or few
    distinct values), masses with zeros and equal values, sides of 1 to ``most``."""
    costs, mus, mvs, rp, cp = [], [], [], [0], [0]
    for _ in range(count):
        n, m = rng.integers(1, most + 1, 2)
        if rng.random() < 0.5:
            C = rng.integers(0, 4, (n, m)).astype(float)
        else:
            C = np.round(rng.random((n, m)) * 10, int(rng.integers(0, 3)))
        a = rng.integers(0, 3, n).astype(float) if rng.random() < 0.5 else rng.random(n)
        b = rng.integers(0, 3, m).astype(float) if rng.random() < 0.5 else rng.random(m)
        a[0] += a.sum() == 0
        b[-1] += b.sum() == 0
        costs.append(C.ravel())
        mus.append(a / a.sum())
        mvs.append(b / b.sum())
        rp.append(rp[-1] + n)
        cp.append(cp[-1] + m)
    return (np.concatenate(costs), np.concatenate(mus), np.concatenate(mvs), np.array(rp),
            np.array(cp))


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
@pytest.mark.parametrize("most", [3, 12, 40, 150])
def test_ot_exact_degenerate_problems_match_emd(most):
    """The network simplex on ties, zero masses, equal masses, one-row and
    one-column problems and (150) problems of a few hundred nodes, against ot.emd2."""
    from mhc_array.curvature._kernels import OT_EXACT
    rng = np.random.default_rng(most)
    args = _random_problems(rng, 400 if most < 100 else 40, most)
    cost, mu, mv, rp, cp = args
    want, off = [], 0
    for e in range(len(rp) - 1):
        n, m = rp[e + 1] - rp[e], cp[e + 1] - cp[e]
        want.append(ot.emd2(mu[rp[e]:rp[e + 1]], mv[cp[e]:cp[e + 1]],
                            cost[off:off + n * m].reshape(n, m), numItermax=10 ** 7))
        off += n * m
    with mx.use_backend("native"):
        w = OT_EXACT(args, (False,))
    np.testing.assert_allclose(w, want, rtol=0, atol=1e-12)
    with mx.use_num_threads(2), mx.use_backend("native"):
        np.testing.assert_array_equal(OT_EXACT(args, (False,)), w)


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
def test_ot_exact_abi_refuses_bad_arguments():
    ffi, lib = _native()
    C, mu, mv, w = np.ones(4), np.full(2, 0.5), np.full(2, 0.5), np.full(1, 42.0)
    d = lambda a: ffi.from_buffer("double[]", a)  # noqa: E731
    i64 = lambda a: ffi.from_buffer("int64_t[]", np.asarray(a, np.int64))  # noqa: E731
    err = ffi.new("int64_t *")
    good = dict(cost=d(C), mu=d(mu), mv=d(mv), rptr=i64([0, 2]), cptr=i64([0, 2]), batch=1,
                metric=0, w=d(w), n_threads=1, err_index=err)

    def call(**over):
        return lib.mhc_ot_exact_f64(*dict(good, **over).values())
    assert call(batch=-1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(metric=2) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(n_threads=-1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(rptr=i64([1, 2])) == lib.MHC_ERR_INVALID_DIMENSION
    for name in ("cost", "mu", "mv", "rptr", "cptr", "w"):
        assert call(**{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER, name
    assert call(mu=d(np.array([0.5, 0.6]))) == lib.MHC_ERR_DOMAIN and err[0] == 0
    assert call(cost=d(np.array([1.0, np.nan, 1, 1]))) == lib.MHC_ERR_DOMAIN
    np.testing.assert_array_equal(w, 42.0)
    assert call(batch=0) == lib.MHC_OK
    assert call() == lib.MHC_OK and w[0] == 1.0
    assert call(cost=d(np.array([0.0, 1, 1, 0])), metric=1) == lib.MHC_OK and w[0] == 0.0


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
def test_unit_w1_abi_refuses_bad_arguments():
    ffi, lib = _native()
    csr = sp.csr_array(cycle(6))
    i64 = lambda a: ffi.from_buffer("int64_t[]", np.asarray(a, np.int64))  # noqa: E731
    w = np.full(2, 42.0)
    err = ffi.new("int64_t *")
    good = dict(indptr=i64(csr.indptr), indices=i64(csr.indices), n=6, U=i64([0, 1]),
                V=i64([1, 2]), edges=2, alpha=0.5, w=ffi.from_buffer("double[]", w),
                n_threads=1, err_index=err)

    def call(**over):
        return lib.mhc_unit_w1_f64(*dict(good, **over).values())
    assert call(n=-1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(alpha=1.0) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(alpha=float("nan")) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(U=i64([0, 6])) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(indices=i64(np.r_[csr.indices[:-1], 9])) == lib.MHC_ERR_INVALID_DIMENSION
    for name in ("indptr", "indices", "U", "V", "w"):
        assert call(**{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER, name
    np.testing.assert_array_equal(w, 42.0)
    assert call(V=i64([1, 3])) == lib.MHC_ERR_DOMAIN and err[0] == 1   # 1 - 3: no edge
    assert call(V=i64([0, 2])) == lib.MHC_ERR_DOMAIN and err[0] == 0   # a self loop
    multi = i64([0, 3, 5, 7, 9, 11, 13])                                # 0: 1, 1, 5
    assert call(indptr=multi, indices=i64([1, 1, 5, 0, 2, 1, 3, 2, 4, 3, 5, 4, 0])) == \
        lib.MHC_ERR_DOMAIN and err[0] == 0
    assert call(edges=0) == lib.MHC_OK
    assert call() == lib.MHC_OK
    np.testing.assert_allclose(w, 1.0)       # a 6-cycle is flat: W1 = d(u, v)


@pytest.mark.parametrize("elements", ["table, one chunk", "table, chunks", "searches"])
@pytest.mark.parametrize("name", ["weighted2", "knn", "disconnected", "tree_big"])
def test_both_exact_paths_match_linear_programming(name, elements, monkeypatch, backend):
    """The two exact pipelines of _ricci: one table of all distances (graphs of N^2 <=
    CHUNK_ELEMENTS), its supports in one chunk or several; and per chunk of edges the
    searches and a cost array (larger graphs; forced here by a small budget)."""
    from mhc_array.curvature import _ricci
    A = MORE[name]
    n = A.shape[0]
    budget = {"table, one chunk": _ricci.CHUNK_ELEMENTS, "table, chunks": n * n,
              "searches": n * n - 1}[elements]
    monkeypatch.setattr(_ricci, "CHUNK_ELEMENTS", budget)
    for alpha in (0.0, 0.5):
        edges, kappa = mx.ollivier_ricci_curvature(None, graph=A, alpha=alpha)
        assert max_error(edges, kappa, lp_kappa(A, alpha)) < EXACT
    pts = np.random.default_rng(5).standard_normal((n, 3))
    edges, kappa = mx.ollivier_ricci_curvature(pts, k=3)
    want = emd_kappa(knn_adjacency(pts, 3), 0.5, D=cdist(pts, pts))
    assert max_error(edges, kappa, want) < EXACT


def _table_problems(rng, count, npts):
    """Random transport problems on npts points: rows and columns drawn from the
    points (repeats allowed), masses with zeros; the table a metric (Euclidean)."""
    pts = rng.standard_normal((npts, 3))
    table = cdist(pts, pts)
    X, Y, mu, mv, rp, cp = [], [], [], [], [0], [0]
    for _ in range(count):
        n, m = rng.integers(1, 9, 2)
        X.append(rng.integers(0, npts, n))
        Y.append(rng.integers(0, npts, m))
        a, b = rng.random(n), rng.random(m)
        a[rng.random(n) < 0.2] = 0
        a = a / a.sum() if a.sum() else np.full(n, 1 / n)
        mu.append(a)
        mv.append(b / b.sum())
        rp.append(rp[-1] + n)
        cp.append(cp[-1] + m)
    cat = np.concatenate
    return table, cat(X), cat(Y), cat(mu), cat(mv), np.array(rp), np.array(cp)


def test_ot_exact_table_matches_emd(backend):
    """Costs read from a table: W1 against ot.emd2 on the gathered costs, with and
    without the metric cancellation; the inputs untouched."""
    from mhc_array.curvature._kernels import OT_EXACT_TABLE
    args = _table_problems(np.random.default_rng(1), 200, 25)
    table, X, Y, mu, mv, rp, cp = args
    want = [ot.emd2(mu[rp[e]:rp[e + 1]], mv[cp[e]:cp[e + 1]],
                    table[np.ix_(X[rp[e]:rp[e + 1]], Y[cp[e]:cp[e + 1]])])
            for e in range(len(rp) - 1)]
    copies = [a.copy() for a in args]
    for metric in (False, True):
        np.testing.assert_allclose(OT_EXACT_TABLE(args, (metric,)), want, rtol=0, atol=1e-12)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_ot_exact_table_refuses_bad_input(backend):
    from mhc_array.curvature._kernels import OT_EXACT_TABLE
    table, X, Y, mu, mv, rp, cp = _table_problems(np.random.default_rng(2), 3, 6)
    with pytest.raises(mx.ShapeError, match="square"):
        OT_EXACT_TABLE((table[:, :5], X, Y, mu, mv, rp, cp), (True,))
    with pytest.raises(mx.ShapeError, match=r"\[0, 6\)"):
        OT_EXACT_TABLE((table, np.r_[X[:-1], 6], Y, mu, mv, rp, cp), (True,))
    with pytest.raises(mx.ShapeError, match="offset tables"):
        OT_EXACT_TABLE((table, X, Y, mu, mv[:-1], rp, cp), (True,))
    bad = table.copy()
    bad[X[0], :] = np.inf
    with pytest.raises(mx.DomainError, match="transport problem 0"):
        OT_EXACT_TABLE((bad, X, Y, mu, mv, rp, cp), (True,))
    with pytest.raises(mx.DomainError, match="equal totals"):
        OT_EXACT_TABLE((table, X, Y, 2 * mu, mv, rp, cp), (True,))


@pytest.mark.skipif(not native_available(), reason="native backend unavailable")
def test_ot_exact_table_abi_refuses_bad_arguments():
    ffi, lib = _native()
    table = np.array([[0.0, 1], [1, 0]])
    mu, mv, w = np.full(2, 0.5), np.full(2, 0.5), np.full(1, 42.0)
    d = lambda a: ffi.from_buffer("double[]", a)  # noqa: E731
    i64 = lambda a: ffi.from_buffer("int64_t[]", np.asarray(a, np.int64))  # noqa: E731
    err = ffi.new("int64_t *")
    good = dict(table=d(table), nt=2, X=i64([0, 0]), Y=i64([1, 1]), mu=d(mu), mv=d(mv),
                rptr=i64([0, 2]), cptr=i64([0, 2]), batch=1, metric=1, w=d(w), n_threads=1,
                err_index=err)

    def call(**over):
        return lib.mhc_ot_exact_table_f64(*dict(good, **over).values())
    assert call(batch=-1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(nt=-1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(nt=1 << 32) == lib.MHC_ERR_INVALID_DIMENSION          # nt * nt overflows
    assert call(metric=2) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(X=i64([0, 2])) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(Y=i64([-1, 1])) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(cptr=i64([1, 2])) == lib.MHC_ERR_INVALID_DIMENSION
    for name in ("table", "X", "Y", "mu", "mv", "rptr", "cptr", "w"):
        assert call(**{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER, name
    assert call(mu=d(np.array([0.5, 0.6]))) == lib.MHC_ERR_DOMAIN and err[0] == 0
    np.testing.assert_array_equal(w, 42.0)
    assert call(table=d(np.array([[0.0, np.nan], [1, 0]]))) == lib.MHC_ERR_DOMAIN
    assert call(batch=0) == lib.MHC_OK
    assert call() == lib.MHC_OK and w[0] == 1.0
    assert call(Y=i64([0, 1])) == lib.MHC_OK and w[0] == 0.5        # half stays at 0
