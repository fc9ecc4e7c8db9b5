"""``ollivier_ricci_curvature``: the graph (``_graph``), then per chunk of edges the
supports of the two measures, their costs and W1, each one call of a kernel record
(``_kernels``) for the whole chunk."""

import numpy as np

from .._api import manifold_option
from .._options import fraction, int_range, positive
from ..errors import ShapeError
from ._graph import Graph, as_points, given_graph, is_networkx, knn_graph, supports
from ._kernels import GRAPH_COSTS, OT_EXACT, OT_EXACT_TABLE, OT_W1, POINT_COSTS, UNIT_W1

#: at most this many edges, and this many cost entries, per chunk of edges
EDGE_CHUNK = 1 << 20
CHUNK_ELEMENTS = 1 << 24
#: blocks of rows of the points' table of distances (threads split them)
TABLE_BLOCKS = 16
#: a transport problem is solved when its marginals are this close (L1, the total
#: mass is 1) to their targets (the rounded plan's cost then moves by at most this
#: times the largest cost: measured 5e-4 of W1 for unit lengths)
TOLERANCE = 1e-3

_at_least_one = int_range(1)
METHODS = ("exact", "sinkhorn")


def _method(name, value):
    if not isinstance(value, str) or value not in METHODS:
        raise ValueError(f"{name} must be one of {METHODS}; got {value!r}")
    return value


def _like(points, edges, kappa):
    """(edges, kappa) in the library and on the device of ``points`` (NumPy when the
    points are NumPy or were not given)."""
    from .._dispatch import device_of, is_array_like, namespace_of
    if points is None or isinstance(points, np.ndarray) or is_array_like(points):
        return edges, kappa
    xp, lib = namespace_of(points, "points")
    if lib == "dask":   # computed now (the graph needs every point): one chunk each
        import dask.array as da
        return da.from_array(edges, chunks=edges.shape), da.from_array(kappa, chunks=kappa.shape)
    dev = device_of(points)
    try:
        return xp.asarray(edges, device=dev), xp.asarray(kappa, device=dev)
    except TypeError:   # a namespace without device=
        return xp.asarray(edges), xp.asarray(kappa)


def _chunks(work):
    """Slices of consecutive edges, each of at most EDGE_CHUNK edges and
    CHUNK_ELEMENTS cost entries (``work``: each edge's), or of one edge."""
    ends = np.cumsum(work)
    start, count = 0, len(work)
    while start < count:
        stop = int(np.searchsorted(ends, ends[start] - work[start] + CHUNK_ELEMENTS, "right"))
        stop = min(max(start + 1, stop), start + EDGE_CHUNK)
        yield slice(start, stop)
        start = stop


def _kappa(graph, edges, lengths, alpha, transport, metric):
    """kappa of every edge (u, v) of ``graph``: per chunk of edges, the supports of
    m_u and m_v, their costs (graph shortest paths, or with ``metric = (points,
    manifold, curvature)`` the manifold's distances), W1 of every edge's problem
    (``transport``: the options of ``ot_w1``, or None: exact). Exact on a graph
    whose edges all have one length: one ``unit_w1`` call (kappa does not depend
    on that length)."""
    u, v = edges[:, 0], edges[:, 1]
    if transport is None and metric is None and np.all(lengths == lengths[0]):
        return 1.0 - UNIT_W1((graph.indptr, graph.indices, u, v), (alpha,))
    own = 1 if alpha > 0 else 0
    size = graph.degree + own
    n = graph.indptr.shape[0] - 1
    if transport is None and n * n <= CHUNK_ELEMENTS:
        return _kappa_table(graph, u, v, lengths, alpha, metric, size)
    work = size[u] * size[v]
    kappa = np.empty(len(edges))
    for sl in _chunks(work):
        X, Y = supports(graph, u[sl], alpha), supports(graph, v[sl], alpha)
        if metric is not None:
            points, manifold, curvature = metric
            cost = POINT_COSTS((points, X.vertices, X.offsets, Y.vertices, Y.offsets),
                               (manifold, curvature))
            duv = lengths[sl]                   # the edge's length: that distance
        else:
            cost, duv = _graph_costs(graph, X, Y, u[sl], v[sl], own)
        if transport is None:
            w = OT_EXACT((cost, X.masses, Y.masses, X.offsets, Y.offsets), (True,))
        else:
            w, _ = OT_W1((cost, X.masses, Y.masses, X.offsets, Y.offsets), transport)
        kappa[sl] = 1.0 - w / duv
    return kappa


def _kappa_table(graph, u, v, lengths, alpha, metric, size):
    """Exact kappa on a small graph (N^2 <= CHUNK_ELEMENTS): one table of all the
    distances (N searches of the graph, or N^2 distances between the points: 16
    times fewer than the cost entries of the k-NN bench's 17,000 edges), then the
    exact W1 of every edge with its costs read from the table (no cost array)."""
    n = graph.indptr.shape[0] - 1
    every, one = np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64)
    if metric is not None:
        points, manifold, curvature = metric
        # TABLE_BLOCKS blocks of rows, each against every point (the kernel's threads
        # split blocks): row-major, the blocks one after the other = the table
        ends = np.linspace(0, n, min(TABLE_BLOCKS, n) + 1).astype(np.int64)
        table = POINT_COSTS((points, every, ends, np.tile(every, len(ends) - 1),
                             np.arange(len(ends), dtype=np.int64) * n), (manifold, curvature))
        duv = lengths                               # the edge's length: that distance
    else:
        table = GRAPH_COSTS((*graph, every, one, every, one), ())
        duv = table[u * n + v]                      # the shortest path, not the edge
    table = table.reshape(n, n)
    kappa = np.empty(len(u))
    for sl in _chunks(size[u] + size[v]):          # supports of at most CHUNK_ELEMENTS
        X, Y = supports(graph, u[sl], alpha), supports(graph, v[sl], alpha)
        w = OT_EXACT_TABLE((table, X.vertices, Y.vertices, X.masses, Y.masses, X.offsets,
                            Y.offsets), (True,))
        kappa[sl] = 1.0 - w / duv[sl]
    return kappa


def _graph_costs(graph, X, Y, p, q, own):
    """The shortest-path costs between the supports X and Y, and d(p, q) of each edge."""
    cost = GRAPH_COSTS((*graph, X.vertices, X.offsets, Y.vertices, Y.offsets), ())
    if not np.all(np.isfinite(cost)):   # cannot happen: p and q are adjacent
        raise RuntimeError("internal error: a shortest-path distance is missing")
    if own:                             # p and q head their supports
        entries = np.diff(X.offsets) * np.diff(Y.offsets)
        return cost, cost[np.cumsum(entries) - entries]
    one = np.arange(len(p) + 1)
    return cost, GRAPH_COSTS((*graph, p, one, q, one), ())


def ollivier_ricci_curvature(points=None, /, *, k=10, alpha=0.5, manifold="euclidean",
                             curvature=1.0, method="exact", reg=0.01, iterations=2000,
                             graph=None):
    """Ollivier-Ricci curvature of every edge of the symmetric k-NN graph of
    ``points (N, d)`` (or of ``graph``).

    ``kappa(u, v) = 1 - W1(m_u, m_v) / d(u, v)`` with ``m_u`` the mass ``alpha`` at
    ``u`` and ``(1 - alpha) / deg(u)`` on each neighbour of ``u``. Costs are graph
    shortest-path distances (edge lengths = the manifold's distance), and ``d(u, v)``
    is the shortest-path distance too (not the edge's own length: the two differ
    when a detour through other points is shorter); for points, costs and d(u, v)
    are the manifold's distances. W1 is entropic optimal transport by Sinkhorn-Knopp,
    regularisation ``reg`` relative to each edge's cost range, with epsilon scaling
    (stages from 0.02 down to ``reg``, each started from the last one's potentials,
    so a small ``reg`` does not underflow), the edges in ragged batches: the C
    kernels of the native backend (``auto`` / ``native``), else the ``array_api``
    backend's (padded batches of its Sinkhorn; ``stats()`` counts both as
    ``ot_w1``, ``graph_costs``, ``point_costs``). The plan is rounded onto the exact
    marginals, so W1 is an upper bound of the exact one (kappa a lower bound) and
    tends to it as ``reg`` shrinks (within 1e-2 of kappa at ``reg=1e-3``).

    Parameters
    ----------
    points : array (N, d), real, optional
        Any library's array (converted with DLPack / ``np.asarray``); omitted (or
        ignored) when ``graph`` is given. A networkx graph given here is taken as
        ``graph``.
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
    graph : optional; replaces the k-NN graph. A networkx graph (undirected, not a
        multigraph; edge lengths from the "weight" attribute, 1 where absent; nodes
        of any label, the returned edges index ``list(graph.nodes())``); an edge list
        (pairs of node indices: a list, or an integer (E, 2) array that is not
        square), unit lengths; ``(edges (E, 2), weights (E,))``; or a dense or
        SciPy-sparse adjacency matrix (nonzero = edge length).

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
    alpha = fraction("alpha", alpha)
    method = _method("method", method)
    reg = positive("reg", reg)
    iterations = _at_least_one("iterations", iterations)
    manifold = manifold_option("manifold", manifold)
    curvature = positive("curvature", curvature)
    if graph is None and is_networkx(points):   # mx.ollivier_ricci_curvature(G)
        points, graph = None, points
    if graph is not None:
        edges, lengths, n = given_graph(graph)
        caller = metric = None
    else:
        if points is None:
            raise TypeError("points must be an (N, d) array when graph is not given")
        caller = points
        points = as_points(points)
        n = points.shape[0]
        if n < 2:
            raise ShapeError(f"points must have at least 2 rows; got shape {points.shape}")
        k = int_range(1, n)("k", k)
        edges, lengths = knn_graph(points, k, manifold, curvature)
        metric = (points, manifold, curvature)
    kappa = np.full(edges.shape[0], np.nan)
    keep = lengths > 0
    if keep.any():
        e, w = edges[keep], lengths[keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa[keep] = _kappa(Graph.from_edges(e, w, n), e, w, alpha,
                                 None if method == "exact" else
                                 (reg, iterations, TOLERANCE, True), metric)
    return _like(caller, edges, kappa)
