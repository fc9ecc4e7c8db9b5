"""Ollivier-Ricci curvature of a point cloud's k-NN graph (or of a given graph), and
the manifold it suggests (SPEC 2.4). See docs/curvature.md.

Not a record of the pipeline: a composite of public functions. The k-NN graph is
built with ``pairwise_distance`` in row blocks, the transport problems are solved
with the batched ``sinkhorn_knopp`` (one small matrix per edge, grouped by size),
shortest paths with ``scipy.sparse.csgraph.dijkstra`` on local subgraphs.
NumPy in, NumPy out in this first version.
"""

import math
import numbers

import numpy as np

from ._api import MANIFOLDS, pairwise_distance, sinkhorn_knopp
from .errors import DomainError, ShapeError

__all__ = ["estimate_curvature", "ollivier_ricci_curvature"]

#: rows of points per ``pairwise_distance`` block when building the k-NN graph
KNN_BLOCK = 1024
#: at most this many edges' transport problems are held at once
EDGE_CHUNK = 8192
#: sources per Dijkstra search (sorted by how far each must search)
DIJKSTRA_SOURCES = 256
#: below this ``reg`` the plain-domain kernel ``exp(-C/eps)`` loses entries to
#: underflow and Sinkhorn converges slowly: a log-domain loop (NumPy) is used
LOG_DOMAIN_BELOW = 1e-3
#: epsilon scaling: each stage's reg at most this many times below the last
STAGE_RATIO = 3.0
#: Sinkhorn stops early when every row sum is this close (relative) to its target,
#: checked every CHECK_EVERY iterations
TOLERANCE = 1e-7
#: ... and this close in the stages before the last
STAGE_TOLERANCE = 1e-4
CHECK_EVERY = 50

#: thresholds of ``estimate_curvature`` on the median kappa (see docs/curvature.md)
NEGATIVE_BELOW = -0.1
POSITIVE_ABOVE = 0.25
RULE = (f"median kappa (edges at degree-1 vertices left out) < {NEGATIVE_BELOW} -> "
        f"'poincare'; > {POSITIVE_ABOVE} -> 'spherical'; otherwise 'euclidean'. Calibrated "
        f"at alpha=0.5 on trees (about -1/3), flat 4-neighbour grids (0) and coarse sphere "
        f"samples (about 0.3-0.4); dense k-NN samples (k/N large) and sample boundaries "
        f"push kappa up whatever the geometry, so 'spherical' needs a flat control at the "
        f"same N and k (docs/curvature.md)")


# ---------------------------------------------------------------- arguments

def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        rng = f">= {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{name} must be {rng}; got {value}")
    return value


def _check_real(name, value, low, high=None, *, open_low=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    bad = (not math.isfinite(value) or value < low or (open_low and value == low)
           or (high is not None and value >= high))
    if bad:
        rng = ("> " if open_low else ">= ") + f"{low}" + (f" and < {high}" if high else "")
        raise ValueError(f"{name} must be a finite number {rng}; got {value!r}")
    return value


def _as_points(points):
    if not isinstance(points, np.ndarray):
        try:
            points = np.from_dlpack(points)
        except Exception:  # noqa: BLE001 - not a DLPack array: try the plain way
            points = np.asarray(points)
    if points.dtype.kind == "c":
        raise TypeError(f"points must be real; got dtype {points.dtype}")
    if points.dtype.kind not in "fiub":
        raise TypeError(f"points must be a real array; got dtype {points.dtype}")
    if points.ndim != 2:
        raise ShapeError(f"points must have shape (N, d); got shape {points.shape}")
    points = np.ascontiguousarray(points, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        raise DomainError("points must be finite; it has NaN or infinite entries",
                          argument="points")
    return points


# ---------------------------------------------------------------- graphs

def _knn_graph(points, k, manifold, curvature):
    """Symmetric k-NN graph as (edges (E, 2) u < v, lengths (E,)); never N x N."""
    n = points.shape[0]
    rows, cols, vals = [], [], []
    for start in range(0, n, KNN_BLOCK):
        block = points[start:start + KNN_BLOCK]
        d = np.asarray(pairwise_distance(block, points, manifold=manifold,
                                         curvature=curvature), dtype=np.float64)
        b = d.shape[0]
        d[np.arange(b), start + np.arange(b)] = np.inf  # no self loops
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(start, start + b), k))
        cols.append(idx.ravel())
        vals.append(np.take_along_axis(d, idx, axis=1).ravel())
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    u, v = np.minimum(r, c), np.maximum(r, c)
    return _dedupe(u, v, w, n)


def _dedupe(u, v, w, n):
    key = u.astype(np.int64) * n + v
    key, first = np.unique(key, return_index=True)
    return np.stack([key // n, key % n], axis=1).astype(np.int64), w[first]


def _given_graph(graph):
    """``graph`` as (edges u < v, weights, N)."""
    import scipy.sparse as sp
    if isinstance(graph, tuple):
        if len(graph) != 2:
            raise ValueError("graph as a tuple must be (edges (E, 2), weights (E,)); "
                             f"got a tuple of {len(graph)} items")
        edges = np.asarray(graph[0])
        weights = np.asarray(graph[1], dtype=np.float64)
        if edges.ndim != 2 or edges.shape[1] != 2 or edges.dtype.kind not in "iu":
            raise ShapeError("graph edges must be an integer array of shape (E, 2); got "
                             f"shape {edges.shape} dtype {edges.dtype}")
        if weights.shape != (edges.shape[0],):
            raise ShapeError(f"graph weights must have shape ({edges.shape[0]},); got "
                             f"shape {weights.shape}")
        if edges.size and edges.min() < 0:
            raise ValueError("graph edges must be node indices >= 0")
        n = int(edges.max()) + 1 if edges.size else 0
        u, v, w = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64), weights
    else:
        if sp.issparse(graph):
            a = sp.coo_array(graph)
        else:
            dense = np.asarray(graph)
            if dense.ndim != 2:
                raise ShapeError(f"graph adjacency must be a 2-D matrix; got shape {dense.shape}")
            a = sp.coo_array(dense)
        if a.shape[0] != a.shape[1]:
            raise ShapeError(f"graph adjacency must be square; got shape {a.shape}")
        n = a.shape[0]
        nz = a.data != 0
        u, v, w = a.row[nz].astype(np.int64), a.col[nz].astype(np.int64), \
            np.asarray(a.data[nz], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DomainError("graph weights must be finite and > 0", argument="graph")
    keep = u != v
    u, v, w = u[keep], v[keep], w[keep]
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    order = np.lexsort((w, hi, lo))  # duplicates: keep the shortest
    edges, w = _dedupe(lo[order], hi[order], w[order], max(n, 1))
    return edges, w, n


# ---------------------------------------------------------------- transport

def _sinkhorn_w1(C, mu, mv, reg, iterations):
    """Entropic W1 of (g, n, m) cost matrices: sum(P * C) of the plan rounded onto
    the transport polytope (an upper bound of the exact W1)."""
    scale = C.max(axis=(1, 2), keepdims=True) - C.min(axis=(1, 2), keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    # reduced costs (row then column minima removed): the same Sinkhorn solution
    # (a diagonal scaling of the kernel), but every row and column keeps an entry
    # exp(0) = 1, so none underflows to all zeros; Z in [0, 1]
    Z = C - C.min(axis=2, keepdims=True)
    Z = (Z - Z.min(axis=1, keepdims=True)) / scale
    # epsilon scaling: solve at reg 0.1, ... down to reg (STAGE_RATIO apart), each
    # stage started from the previous one's dual potentials: plain Sinkhorn at a
    # small reg alone converges very slowly
    stages = _stages(reg)
    if reg >= LOG_DOMAIN_BELOW:
        P, prev = None, None
        for r in stages:
            # P = exp((f + g - Z) / prev) with potentials f, g in units of Z: the
            # next stage starts from exp((f + g - Z) / r) = P ** (prev / r)
            K = np.exp(-Z / r) if P is None else P ** (prev / r)
            P = K.copy()
            active = np.arange(len(P))
            done = 0
            tol = TOLERANCE if r == reg else STAGE_TOLERANCE
            while done < iterations and len(active):  # each matrix stops once its rows'
                step = min(CHECK_EVERY, iterations - done)  # sums are met
                Q = np.asarray(sinkhorn_knopp(P[active], row_sums=mu[active],
                                              col_sums=mv[active], iterations=step))
                P[active] = Q
                done += step
                active = active[~_converged(Q, mu[active], tol)]
            prev = r
    else:
        P = _log_sinkhorn(Z, mu, mv, stages, iterations)
    P = np.where(np.isfinite(P), P, 0.0)
    P = _round_plan(P, mu, mv)
    return np.sum(P * C, axis=(1, 2))


def _converged(P, mu, tolerance):
    """Per matrix: rows' sums within ``tolerance`` (relative) of their targets
    (columns are exact after a rows-first iteration)."""
    return np.all(np.abs(P.sum(axis=2) - mu) <= tolerance * mu, axis=1)


def _stages(reg):
    """The regularisations of epsilon scaling: from 0.1 down to ``reg``, each stage
    at most STAGE_RATIO times smaller than the last."""
    if reg >= 0.1:
        return [reg]
    count = math.ceil(math.log(0.1 / reg) / math.log(STAGE_RATIO))
    return [0.1 * (reg / 0.1) ** (i / count) for i in range(count)] + [reg]


def _log_sinkhorn(Z, mu, mv, stages, iterations):
    """Sinkhorn in the log domain on ``exp(-Z / r)`` for each ``r`` of ``stages``
    (rows first, then columns), the potentials (in units of Z) carried over."""
    with np.errstate(divide="ignore"):
        lmu, lmv = np.log(mu), np.log(mv)
    F = np.zeros(Z.shape[:2])
    G = np.zeros((Z.shape[0], Z.shape[2]))
    for r in stages:
        for i in range(iterations):
            F = r * (lmu - _lse((G[:, None, :] - Z) / r, axis=2))
            G = r * (lmv - _lse((F[:, :, None] - Z) / r, axis=1))
            if (i + 1) % CHECK_EVERY == 0 and np.all(_converged(
                    np.exp((F[:, :, None] + G[:, None, :] - Z) / r), mu,
                    TOLERANCE if r == stages[-1] else STAGE_TOLERANCE)):
                break
    return np.exp((F[:, :, None] + G[:, None, :] - Z) / stages[-1])


def _lse(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis)


def _round_plan(P, r, c):
    """Altschuler-Weed-Rigollet rounding: a plan with exactly the marginals r, c."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.minimum(np.where(P.sum(2) > 0, r / P.sum(2), 0.0), 1.0)
        P = P * x[:, :, None]
        y = np.minimum(np.where(P.sum(1) > 0, c / P.sum(1), 0.0), 1.0)
        P = P * y[:, None, :]
    er = r - P.sum(2)
    ec = c - P.sum(1)
    tot = er.sum(1)
    tot = np.where(tot > 0, tot, 1.0)
    return P + er[:, :, None] * ec[:, None, :] / tot[:, None, None]


# ---------------------------------------------------------------- curvature

def _chunk_distances(adj, indptr, indices, maxw, cu, cv, cw, dijkstra):
    """Shortest-path distances d(x, y) for x in supp(u), y in supp(v) of the edges
    (cu, cv) of lengths cw, as a lookup ``(x, y) -> d``; memory ~ the pairs needed.

    d(x, y) <= w(x, u) + w(u, v) + maxw[v] =: need[x] bounds every cost asked of the
    source x, so each source's search stops there (``limit=``), and a path that
    short stays in the ball of that radius around the sources: Dijkstra runs on
    that subgraph only, a few sources of similar ``need`` at a time.
    """
    n = adj.shape[0]
    reach_u = np.zeros(n)
    np.maximum.at(reach_u, cu, cw + maxw[cv])          # from u itself
    us = np.unique(cu)
    deg = indptr[us + 1] - indptr[us]
    rows = np.repeat(us, deg)
    first = np.repeat(np.cumsum(deg) - deg, deg)
    offs = np.repeat(indptr[us], deg) + (np.arange(deg.sum()) - first)
    need = reach_u.copy()
    np.maximum.at(need, indices[offs], adj.data[offs] + reach_u[rows])  # from u's neighbours
    sources = np.flatnonzero(need > 0)
    sources = sources[np.argsort(need[sources], kind="stable")]
    keys, vals = [], []
    for start in range(0, len(sources), DIJKSTRA_SOURCES):
        batch = np.sort(sources[start:start + DIJKSTRA_SOURCES])
        limit = float(need[batch].max()) * (1 + 1e-9)
        reach = dijkstra(adj, directed=False, indices=batch, limit=limit, min_only=True)
        ball = np.flatnonzero(np.isfinite(reach))
        local = np.full(n, -1, dtype=np.int64)
        local[ball] = np.arange(len(ball))
        D = dijkstra(adj[ball][:, ball], directed=False, indices=local[batch], limit=limit)
        r, c = np.nonzero(np.isfinite(D))
        keys.append(batch[r].astype(np.int64) * n + ball[c])
        vals.append(D[r, c])
    keys, vals = np.concatenate(keys), np.concatenate(vals)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]

    def lookup(x, y):
        key = x.astype(np.int64) * n + y
        i = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        found = keys[i] == key
        if not np.all(found):  # cannot happen: need[] bounds every distance asked
            raise RuntimeError("internal error: a shortest-path distance was not computed")
        return vals[i]
    return lookup


def _curvature_of_graph(edges, weights, n, alpha, reg, iterations):
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra
    E = edges.shape[0]
    kappa = np.full(E, np.nan)
    if E == 0:
        return kappa
    u_all, v_all = edges[:, 0], edges[:, 1]
    adj = sp.csr_array((np.concatenate([weights, weights]),
                        (np.concatenate([u_all, v_all]), np.concatenate([v_all, u_all]))),
                       shape=(n, n))
    adj.sort_indices()
    indptr, indices = adj.indptr, adj.indices
    deg = np.diff(indptr)
    maxw = np.zeros(n)
    np.maximum.at(maxw, np.repeat(np.arange(n), deg), adj.data)
    own = 1 if alpha > 0 else 0  # u itself in its support (mass alpha)

    def support(nodes, size):
        """(len(nodes), size): [node] + neighbours (or neighbours only)."""
        out = np.empty((len(nodes), size), dtype=np.int64)
        if own:
            out[:, 0] = nodes
        offs = indptr[nodes][:, None] + np.arange(size - own)[None, :]
        out[:, own:] = indices[offs]
        return out

    def masses(nodes, size):
        m = np.empty((len(nodes), size))
        m[:, own:] = ((1 - alpha) / deg[nodes])[:, None]
        if own:
            m[:, 0] = alpha
        return m

    for start in range(0, E, EDGE_CHUNK):
        cu, cv = u_all[start:start + EDGE_CHUNK], v_all[start:start + EDGE_CHUNK]
        cw = weights[start:start + EDGE_CHUNK]
        lookup = _chunk_distances(adj, indptr, indices, maxw, cu, cv, cw, dijkstra)
        nu, nv = deg[cu] + own, deg[cv] + own
        groups = {}
        for i, key in enumerate(zip(nu.tolist(), nv.tolist())):
            groups.setdefault(key, []).append(i)
        for (a, b), members in groups.items():
            members = np.asarray(members)
            gu, gv = cu[members], cv[members]
            su, sv = support(gu, a), support(gv, b)
            C = lookup(su[:, :, None], sv[:, None, :])
            duv = lookup(gu, gv)
            W = _sinkhorn_w1(C, masses(gu, a), masses(gv, b), reg, iterations)
            kappa[start + members] = 1.0 - W / duv
    return kappa


def ollivier_ricci_curvature(points, /, *, k=10, alpha=0.5, manifold="euclidean",
                             curvature=1.0, reg=0.01, iterations=2000, graph=None):
    """Ollivier-Ricci curvature of every edge of the symmetric k-NN graph of
    ``points (N, d)`` (or of ``graph``).

    ``kappa(u, v) = 1 - W1(m_u, m_v) / d(u, v)`` with ``m_u`` the mass ``alpha`` at
    ``u`` and ``(1 - alpha) / deg(u)`` on each neighbour of ``u``. Costs are graph
    shortest-path distances (edge lengths = the manifold's distance), and ``d(u, v)``
    is the shortest-path distance too (not the edge's own length: the two differ
    when a detour through other points is shorter). W1 is entropic optimal
    transport, solved with the batched ``sinkhorn_knopp`` (edges grouped by their
    supports' sizes), regularisation ``reg`` relative to each edge's largest cost;
    the plan is rounded onto the exact marginals, so W1 is an upper bound of the
    exact one (kappa a lower bound) and tends to it as ``reg`` shrinks (about 1e-2
    of kappa at ``reg=1e-3``). For ``reg < 1e-3`` the plain kernel would underflow:
    a log-domain loop in NumPy is used instead (slower).

    Parameters
    ----------
    points : array (N, d), real
        Any library's array (converted with DLPack / ``np.asarray``); may be None
        when ``graph`` is given (it is ignored then).
    k : int, 1 <= k < N
        Neighbours per point; the graph is symmetrised (an edge if either point is
        among the other's k nearest).
    alpha : float in [0, 1)
        Laziness: the mass kept at the vertex.
    manifold, curvature : as in ``pairwise_distance``.
    reg : float > 0
        Entropic regularisation, relative to the edge's largest cost.
    iterations : int >= 1
        Sinkhorn iterations.
    graph : (edges (E, 2), weights (E,)), or a dense or SciPy-sparse adjacency
        matrix (nonzero = edge length), optional. Replaces the k-NN graph.

    Returns ``(edges (E, 2) int64 with u < v, sorted; kappa (E,) float64)``, NumPy
    arrays (whatever the input library, in this version). Edges of zero length
    (duplicate points) have kappa NaN.
    """
    alpha = _check_real("alpha", alpha, 0.0, 1.0)
    reg = _check_real("reg", reg, 0.0, open_low=True)
    iterations = _check_int("iterations", iterations, 1)
    if not (isinstance(manifold, str) and manifold in MANIFOLDS):
        raise ValueError(f"manifold must be one of {', '.join(map(repr, MANIFOLDS))}; "
                         f"got {manifold!r}")
    curvature = _check_real("curvature", curvature, 0.0, open_low=True)
    if graph is not None:
        edges, weights, n = _given_graph(graph)
    else:
        if points is None:
            raise TypeError("points must be an (N, d) array when graph is not given")
        points = _as_points(points)
        n = points.shape[0]
        if n < 2:
            raise ShapeError(f"points must have at least 2 rows; got shape {points.shape}")
        k = _check_int("k", k, 1, n)
        edges, weights = _knn_graph(points, k, manifold, curvature)
    zero = weights <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = _curvature_of_graph(edges[~zero], weights[~zero], n, alpha, reg, iterations)
    out = np.full(edges.shape[0], np.nan)
    out[~zero] = kappa
    return edges, out


def estimate_curvature(points, /, **options):
    """Summary of ``ollivier_ricci_curvature(points, **options)`` and the manifold it
    suggests.

    Edges at a vertex of degree 1 (the leaves of a given graph; a k-NN graph has
    none) are left out of the summary: their kappa measures the graph's end, not
    its curvature (a tree's leaf edges have kappa = 1/3 at ``alpha=0.5``).

    Returns a dict: ``mean``, ``median``, ``quantiles`` (a dict {5, 25, 75, 95} ->
    kappa at that percent), ``edges`` (their number), ``suggested`` ("poincare" when
    the median kappa is clearly negative, "spherical" when clearly positive, else
    "euclidean") and ``rule`` (the thresholds, as a string). The thresholds are
    calibrated for the default ``alpha=0.5``; dense k-NN samples push kappa up, so a
    "euclidean" answer does not rule out mild negative curvature (docs/curvature.md).
    """
    edges, kappa = ollivier_ricci_curvature(points, **options)
    deg = np.bincount(edges.ravel()) if edges.size else np.zeros(0, np.int64)
    leaf = (deg[edges[:, 0]] == 1) | (deg[edges[:, 1]] == 1) if edges.size else \
        np.zeros(0, bool)
    kappa = kappa[np.isfinite(kappa) & ~leaf]
    if kappa.size == 0:
        raise ValueError("the graph has no edge of positive length between vertices of "
                         "degree >= 2: no curvature to estimate")
    median = float(np.median(kappa))
    q = np.percentile(kappa, [5, 25, 75, 95])
    if median < NEGATIVE_BELOW:
        suggested = "poincare"
    elif median > POSITIVE_ABOVE:
        suggested = "spherical"
    else:
        suggested = "euclidean"
    return {"mean": float(np.mean(kappa)), "median": median,
            "quantiles": {p: float(x) for p, x in zip((5, 25, 75, 95), q)},
            "edges": int(kappa.size), "suggested": suggested, "rule": RULE}
