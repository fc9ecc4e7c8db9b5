"""Ollivier-Ricci curvature of a point cloud's k-NN graph (or of a given graph), and
the manifold it suggests (SPEC 2.4). See docs/curvature.md.

Not a record of the pipeline: a composite. The k-NN graph is built with
``pairwise_distance`` in row blocks. With the native backend (``auto`` or
``native`` in force), each chunk of edges is one ragged batch: costs by the native
graph-costs (bounded Dijkstra searches) or point-costs (manifold distances) kernel,
W1 by the native batched transport kernel (``backends/native.py``: ``graph_costs``,
``point_costs``, ``ot_w1``). Otherwise the problems are padded into batches of one
shape for the public ``sinkhorn_knopp``, costs from bounded
``scipy.sparse.csgraph.dijkstra`` searches or ``geometric_distance``. Results in the
points' library (NumPy for a given graph).
"""

import math
import numbers

import numpy as np

from ._api import MANIFOLDS, geometric_distance, pairwise_distance, sinkhorn_knopp
from .errors import DomainError, ShapeError

__all__ = ["estimate_curvature", "ollivier_ricci_curvature"]

#: rows of points per ``pairwise_distance`` block when building the k-NN graph
KNN_BLOCK = 1024
#: at most this many edges, and this many (padded) transport-plan entries, per chunk
#: of edges whose costs are gathered together
EDGE_CHUNK = 1 << 20
CHUNK_ELEMENTS = 1 << 24
#: ... and at most this many plan entries in one Sinkhorn batch
EDGE_ELEMENTS = 1 << 21
#: Dijkstra searches: at most this many dense distance entries (sources x N) at once
DIST_ELEMENTS = 1 << 22
#: point costs: at most this many coordinates (edges x a x b x d) per distance call
POINT_ELEMENTS = 1 << 22
#: epsilon scaling: each stage's reg at most this many times below the last
STAGE_RATIO = 3.0
#: a matrix leaves the Sinkhorn loop when its marginals are this close (L1, the
#: total mass is 1) to their targets (the rounded plan's cost then moves by at
#: most this times the largest cost: measured 5e-4 of W1 for unit lengths) ...
TOLERANCE = 1e-3
#: ... and this close in the stages before the last (a warm start only)
STAGE_TOLERANCE = 1e-2
#: iterations before the first check; the interval doubles up to CHECK_EVERY
FIRST_CHECK = 4
CHECK_EVERY = 64

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


def _host(a):
    """A NumPy view or copy of any library's array: DLPack where it works (CPU
    arrays, no copy), else the library's own way to the host (a torch tensor that
    requires grad or lives on a GPU, a CuPy array), else np.asarray."""
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.from_dlpack(a)
    except Exception:  # noqa: BLE001 - not exportable as is: the library's own way
        pass
    if hasattr(a, "detach") and hasattr(a, "cpu"):     # torch
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def _like(points, edges, kappa):
    """(edges, kappa) in the library and on the device of ``points`` (NumPy when the
    points are NumPy or were not given)."""
    if points is None or isinstance(points, np.ndarray) or not hasattr(points, "__dlpack__"):
        return edges, kappa
    from ._dispatch import common_namespace, device_of
    xp, _ = common_namespace((("points", points),))
    dev = device_of(points)
    try:
        return xp.asarray(edges, device=dev), xp.asarray(kappa, device=dev)
    except TypeError:   # a namespace without device=
        return xp.asarray(edges), xp.asarray(kappa)


def _as_points(points):
    points = _host(points)
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

def _pad_to(x, base):
    """``x`` rounded up to a multiple of ``base`` below 4 * base, of a quarter of its
    power of two above (padding waste <= 25 %, few distinct sizes)."""
    x = np.maximum(x, 1)
    step = np.maximum(base, 2 ** np.floor(np.log2(x)).astype(np.int64) // 4)
    return -(-x // step) * step


def _sinkhorn_w1(C, mu, mv, reg, iterations):
    """Entropic W1 of a batch of (g, a, b) cost matrices with masses mu (g, a) and
    mv (g, b): sum(P * C) of the plan rounded onto the transport polytope (an upper
    bound of the exact W1). Zero masses are padding: their rows / columns of the
    plan stay 0 (a row whose sum is 0 stays 0 in ``sinkhorn_knopp``)."""
    valid = (mu > 0)[:, :, None] & (mv > 0)[:, None, :]
    big = np.where(valid, C, np.inf)
    low = np.where(valid, C, -np.inf)
    # reduced costs (row then column minima removed): the same Sinkhorn solution
    # (a diagonal scaling of the kernel), but every row and column keeps an entry
    # exp(0) = 1; scaled by the cost range so that ``reg`` is relative, Z in [0, 1]
    cmin = big.min(axis=(1, 2), keepdims=True)
    scale = low.max(axis=(1, 2), keepdims=True) - cmin
    scale = np.where(scale > 0, scale, 1.0)
    m = big.min(axis=2, keepdims=True)
    Z = big - np.where(np.isfinite(m), m, 0.0)         # inf on padding
    m = Z.min(axis=1, keepdims=True)
    Z -= np.where(np.isfinite(m), m, 0.0)
    Z /= scale
    del big, low
    # epsilon scaling: stages from reg 0.1 down to reg (STAGE_RATIO apart). Each
    # stage starts from the last one's plan P = exp((f + g - Z) / prev) (the
    # potentials absorbed, the "scaled domain"): exp((f + g - Z) / r) = P ** (prev / r),
    # so the entries the plan needs stay near the masses' size whatever ``reg``,
    # and none underflows the way exp(-Z / reg) does for reg << 1
    P, prev = None, None
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for r in _stages(reg):
            if P is None:
                P = np.exp(Z * (-1.0 / r))
            else:
                np.power(P, prev / r, out=P)
            P[~valid] = 0.0
            _iterate(P, mu, mv, iterations, TOLERANCE if r == reg else STAGE_TOLERANCE)
            prev = r
    del Z, valid
    P = _round_plan(P, mu, mv)
    return np.einsum("gab,gab->g", P, np.where(np.isfinite(C), C, 0.0))


def _iterate(P, mu, mv, iterations, tolerance):
    """Sinkhorn on the batch P in place (rows first) until each matrix's row sums
    are within ``tolerance`` (L1, the total mass is 1) of ``mu`` or ``iterations``
    are done; converged matrices leave the active set."""
    active = None  # all
    Pa, ra, ca = P, mu, mv
    done, step = 0, FIRST_CHECK
    while done < iterations:
        step = min(step, iterations - done)
        sinkhorn_knopp(Pa, row_sums=ra, col_sums=ca, iterations=step, out=Pa)
        done += step
        err = np.abs(Pa.sum(axis=2) - ra).sum(axis=1)
        more = ~(err <= tolerance)
        if not more.any():
            break
        if not more.all():
            if active is None:
                active = np.flatnonzero(more)
            else:
                P[active] = Pa
                active = active[more]
            Pa, ra, ca = P[active], mu[active], mv[active]
        step = min(2 * step, CHECK_EVERY)
    if active is not None:
        P[active] = Pa


def _stages(reg):
    """The regularisations of epsilon scaling: from 0.1 down to ``reg``, each stage
    at most STAGE_RATIO times smaller than the last."""
    if reg >= 0.1:
        return [reg]
    count = math.ceil(math.log(0.1 / reg) / math.log(STAGE_RATIO))
    return [0.1 * (reg / 0.1) ** (i / count) for i in range(count)] + [reg]


def _round_plan(P, r, c):
    """Altschuler-Weed-Rigollet rounding: a plan with exactly the marginals r, c."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = P.sum(2)
        x = np.minimum(np.where(s > 0, r / s, 0.0), 1.0)
        P *= x[:, :, None]
        s = P.sum(1)
        y = np.minimum(np.where(s > 0, c / s, 0.0), 1.0)
        P *= y[:, None, :]
    er = r - P.sum(2)
    ec = c - P.sum(1)
    tot = er.sum(1)
    tot = np.where(tot > 0, tot, 1.0)
    P += er[:, :, None] * (ec / tot[:, None])[:, None, :]
    return P


# ---------------------------------------------------------------- curvature

def _curvature_of_graph(edges, weights, n, alpha, reg, iterations, coords=None):
    """kappa of every edge: by the native kernels (``_curvature_native``) where the
    backend in force allows, else transport problems padded into batches of one
    shape, their costs gathered from bounded SciPy Dijkstra searches (a given graph)
    or the manifold distances between the supports' points (``coords = (points,
    manifold, curvature)``, a k-NN graph whose edge lengths are those distances), W1
    by ``_sinkhorn_w1`` (the public ``sinkhorn_knopp``)."""
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
    native = _native()
    if native is not None:
        return _curvature_native(native, adj, edges, weights, alpha, reg, iterations, coords)
    indptr, indices, data = adj.indptr, adj.indices, adj.data
    deg = np.diff(indptr)
    maxw = np.zeros(n)
    np.maximum.at(maxw, np.repeat(np.arange(n), deg), data)
    own = 1 if alpha > 0 else 0  # u itself in its support (mass alpha)
    size = deg + own

    def support(nodes, width):
        """(len(nodes), width) supports ([node] + neighbours, or neighbours only)
        padded with the support's first vertex, their masses (0 on padding) and
        the lengths of the edges node-vertex (0 for the node itself)."""
        count = size[nodes]
        j = np.arange(width)[None, :]
        real = j < count[:, None]
        offs = indptr[nodes][:, None] + np.clip(j - own, 0, (count - own - 1)[:, None])
        out, length = indices[offs], data[offs]
        mass = np.where(real, ((1 - alpha) / deg[nodes])[:, None], 0.0)
        if own:
            out[:, 0], length[:, 0], mass[:, 0] = nodes, 0.0, alpha
        return np.where(real, out, out[:, :1]), np.where(real, length, 0.0), mass

    # Each transport problem is padded to (rows, cols): cols a multiple of 16 (the
    # batched kernel's fast widths), the larger support as the columns; the edges of
    # one padded shape are one batch. Chunks of edges (in their u-sorted order, so
    # that a chunk's supports overlap) hold at most CHUNK_ELEMENTS plan entries.
    flip_all = size[u_all] > size[v_all]
    p_all = np.where(flip_all, v_all, u_all)
    q_all = np.where(flip_all, u_all, v_all)
    rows_all, cols_all = _pad_to(size[p_all], 4), _pad_to(size[q_all], 16)
    ends = np.cumsum(rows_all * cols_all)
    start = 0
    while start < E:
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - rows_all[start] *
                                                  cols_all[start] + CHUNK_ELEMENTS, "right")))
        stop = min(stop, start + EDGE_CHUNK)
        _chunk(slice(start, stop), p_all, q_all, rows_all, cols_all, weights, maxw, n,
               support, adj, dijkstra, kappa, alpha, reg, iterations, coords)
        start = stop
    return kappa


def _point_costs(groups, w, coords):
    """Costs of point supports: the manifold distances between the supports' points,
    by ``geometric_distance`` over (edges, a, b) broadcasts in blocks of at most
    POINT_ELEMENTS coordinates; d(u, v) is the edge's length (that distance)."""
    points, manifold, curvature = coords
    d = points.shape[1]
    for members, X, Y, mp, mq, C, duv in groups:
        a, b = X.shape[1], Y.shape[1]
        step = max(1, POINT_ELEMENTS // (a * b * d))
        for s in range(0, len(members), step):
            C[s:s + step] = geometric_distance(points[X[s:s + step]][:, :, None, :],
                                               points[Y[s:s + step]][:, None, :, :],
                                               manifold=manifold, curvature=curvature)
        duv[:] = w[members]


def _chunk(sl, p_all, q_all, rows_all, cols_all, weights, maxw, n, support, adj, dijkstra,
           kappa, alpha, reg, iterations, coords=None):
    base = sl.start
    p, q, w = p_all[sl], q_all[sl], weights[sl]
    rows, cols = rows_all[sl], cols_all[sl]
    key = rows * (int(cols.max()) + 1) + cols
    order = np.argsort(key, kind="stable")
    groups = []
    need = np.zeros(n)
    if coords is None:
        np.maximum.at(need, p, w)  # d(p, q) <= w(p, q): p is always a source
    for members in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        a, b = int(rows[members[0]]), int(cols[members[0]])
        X, wx, mp = support(p[members], a)
        Y, _, mq = support(q[members], b)
        if coords is None:
            # every cost asked of the source x is d(x, y) <= w(x, p) + w(p, q) + maxw[q]
            np.maximum.at(need, X.ravel(),
                          (wx + (w[members] + maxw[q[members]])[:, None]).ravel())
        groups.append([members, X, Y, mp, mq, np.empty((len(members), a, b)),
                       np.empty(len(members))])
    if coords is not None:  # points: no search (need stays 0, no Dijkstra source)
        _point_costs(groups, w, coords)
    else:
        _graph_costs_scipy(groups, p, q, need, n, adj, dijkstra)
    for members, X, Y, mp, mq, C, duv in groups:
        if not np.all(np.isfinite(C)) or not np.all(np.isfinite(duv)):
            # cannot happen: need[] bounds every distance asked
            raise RuntimeError("internal error: a shortest-path distance was not computed")
        a, b = C.shape[1:]
        step = max(1, EDGE_ELEMENTS // (a * b))
        for s in range(0, len(members), step):
            W = _sinkhorn_w1(C[s:s + step], mp[s:s + step], mq[s:s + step], reg, iterations)
            kappa[base + members[s:s + step]] = 1.0 - W / duv[s:s + step]


def _graph_costs_scipy(groups, p, q, need, n, adj, dijkstra):
    """Costs of a given graph without the native module: bounded SciPy Dijkstra
    searches from the sources (sorted by how far each must search), a batch of dense
    rows (DIST_ELEMENTS at most) at a time; every cost is gathered from the rows of
    its source."""
    sources = np.flatnonzero(need > 0)
    sources = sources[np.argsort(need[sources], kind="stable")]
    per = max(1, DIST_ELEMENTS // max(n, 1))
    batch_of = np.full(n, -1, dtype=np.int64)
    local = np.zeros(n, dtype=np.int64)
    count = -(-len(sources) // per)
    batch_of[sources] = np.arange(len(sources)) // per
    local[sources] = np.arange(len(sources)) % per
    splits = []
    for members, X, Y, *_ in groups:
        bid = batch_of[X.ravel()]
        o = np.argsort(bid, kind="stable")
        pb = batch_of[p[members]]
        po = np.argsort(pb, kind="stable")
        splits.append((o, np.searchsorted(bid[o], np.arange(count + 1)),
                       po, np.searchsorted(pb[po], np.arange(count + 1))))
    for j in range(count):
        batch = sources[j * per:(j + 1) * per]
        limit = float(need[batch].max()) * (1 + 1e-9)
        D = dijkstra(adj, directed=False, indices=batch, limit=limit)
        for (members, X, Y, mp, mq, C, duv), (o, cut, po, pcut) in zip(groups, splits):
            r = o[cut[j]:cut[j + 1]]
            if len(r):
                a = X.shape[1]
                e = r // a
                C.reshape(-1, C.shape[2])[r] = D[local[X.ravel()[r]][:, None], Y[e]]
            r = po[pcut[j]:pcut[j + 1]]
            if len(r):
                duv[r] = D[local[p[members[r]]], q[members[r]]]


def _native():
    """The native backend module when the backend in force may use it (``auto`` or
    ``native``) and it is there, else None."""
    from ._config import current
    if current()[0] in ("auto", "native"):
        from .backends import native
        if native.UNAVAILABLE is None:
            return native
    return None


def _curvature_native(native, adj, edges, weights, alpha, reg, iterations, coords):
    """kappa of every edge by the native kernels, without padding: per chunk of
    edges (at most CHUNK_ELEMENTS cost entries), the supports as ragged lists, their
    costs in one call (bounded Dijkstra searches, or the points' manifold
    distances), W1 of every edge in one call of the batched transport kernel."""
    from ._config import current
    _, isa, threads = current()
    indptr, indices = adj.indptr, adj.indices
    deg = np.diff(indptr)
    own = 1 if alpha > 0 else 0
    size = deg + own
    u_all, v_all = edges[:, 0], edges[:, 1]
    E = edges.shape[0]
    kappa = np.empty(E)
    work = size[u_all] * size[v_all]
    ends = np.cumsum(work)

    def supports(nodes):
        """[node] + neighbours (or the neighbours only) of each node, one after the
        other, their offset table and their masses."""
        ptr = np.concatenate([[0], np.cumsum(size[nodes])])
        seg = np.repeat(np.arange(len(nodes)), size[nodes])
        local = np.arange(ptr[-1]) - ptr[seg]
        first = indptr[nodes][seg]
        verts = indices[first + np.maximum(local - own, 0)]
        mass = (1 - alpha) / deg[nodes][seg]
        if own:
            verts = np.where(local == 0, nodes[seg], verts)
            mass = np.where(local == 0, alpha, mass)
        return verts, ptr, mass

    start = 0
    while start < E:
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - work[start] +
                                                  CHUNK_ELEMENTS, "right")))
        sl = slice(start, stop)
        p, q = u_all[sl], v_all[sl]
        X, xptr, mp = supports(p)
        Y, yptr, mq = supports(q)
        cost = np.empty(int(work[sl].sum()))
        if coords is not None:
            points, manifold, curvature = coords
            native.point_costs(points, manifold, curvature, X, xptr, Y, yptr, isa=isa,
                               threads=threads, out=cost)
            duv = weights[sl]                   # the edge's length: that distance
        else:
            native.graph_costs(indptr, indices, adj.data, X, xptr, Y, yptr, threads=threads,
                               out=cost)
            if own:                             # p and q head their supports
                duv = cost[np.concatenate([[0], np.cumsum(work[sl])[:-1]])]
            else:
                one = np.arange(len(p) + 1)
                duv = native.graph_costs(indptr, indices, adj.data, p, one, q, one,
                                         threads=threads)
            if not np.all(np.isfinite(cost)):   # cannot happen: p and q are adjacent
                raise RuntimeError("internal error: a shortest-path distance is missing")
        W, _ = native.ot_w1(cost, mp, mq, xptr, yptr, reg=reg, iterations=iterations,
                            tolerance=TOLERANCE, relax=True, isa=isa, threads=threads)
        kappa[sl] = 1.0 - W / duv
        start = stop
    return kappa


def ollivier_ricci_curvature(points, /, *, k=10, alpha=0.5, manifold="euclidean",
                             curvature=1.0, reg=0.01, iterations=2000, graph=None):
    """Ollivier-Ricci curvature of every edge of the symmetric k-NN graph of
    ``points (N, d)`` (or of ``graph``).

    ``kappa(u, v) = 1 - W1(m_u, m_v) / d(u, v)`` with ``m_u`` the mass ``alpha`` at
    ``u`` and ``(1 - alpha) / deg(u)`` on each neighbour of ``u``. Costs are graph
    shortest-path distances (edge lengths = the manifold's distance), and ``d(u, v)``
    is the shortest-path distance too (not the edge's own length: the two differ
    when a detour through other points is shorter); for points, costs and d(u, v)
    are the manifold's distances. W1 is entropic optimal transport by Sinkhorn-Knopp,
    regularisation ``reg`` relative to each edge's cost range, with epsilon scaling
    (stages from 0.1 down to ``reg``, each started from the last one's potentials, so
    a small ``reg`` does not underflow): all edges in one ragged batch of the native
    transport kernel (``auto`` / ``native`` backend), or padded batches of the
    public ``sinkhorn_knopp`` (``array_api``). The plan is rounded onto the exact
    marginals, so W1 is an upper bound of the exact one (kappa a lower bound) and
    tends to it as ``reg`` shrinks (within 1e-2 of kappa at ``reg=1e-3``).

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
        Sinkhorn iterations per stage of epsilon scaling, at most (a problem stops
        earlier once its marginals are within 1e-3).
    graph : (edges (E, 2), weights (E,)), or a dense or SciPy-sparse adjacency
        matrix (nonzero = edge length), optional. Replaces the k-NN graph.

    Returns ``(edges (E, 2) int64 with u < v, sorted; kappa (E,) float64)`` in the
    library and on the device of ``points`` (NumPy for a given ``graph``); the
    computation itself runs on the CPU (the points are copied to the host when they
    live on a GPU). Edges of zero length (duplicate points) have kappa NaN.

    Examples
    --------
    >>> edges, kappa = mx.ollivier_ricci_curvature(None, graph=np.ones((4, 4)) - np.eye(4),
    ...                                            alpha=0.0, reg=1e-3)
    >>> len(edges), bool(np.allclose(kappa, 2 / 3, atol=1e-3))  # K_4: (n-2)/(n-1)
    (6, True)
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
        caller = coords = None
    else:
        if points is None:
            raise TypeError("points must be an (N, d) array when graph is not given")
        caller = points
        points = _as_points(points)
        n = points.shape[0]
        if n < 2:
            raise ShapeError(f"points must have at least 2 rows; got shape {points.shape}")
        k = _check_int("k", k, 1, n)
        edges, weights = _knn_graph(points, k, manifold, curvature)
        coords = (points, manifold, curvature)
    zero = weights <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = _curvature_of_graph(edges[~zero], weights[~zero], n, alpha, reg, iterations,
                                    coords)
    out = np.full(edges.shape[0], np.nan)
    out[~zero] = kappa
    return _like(caller, edges, out)


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

    Examples
    --------
    >>> tree = np.array([(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6), (3, 7), (3, 8)])
    >>> mx.estimate_curvature(None, graph=(tree, np.ones(len(tree))))["suggested"]
    'poincare'
    """
    edges, kappa = (_host(a) for a in ollivier_ricci_curvature(points, **options))
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
