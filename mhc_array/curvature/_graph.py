"""The graph whose edges get a curvature -- the symmetric k-NN graph of points, or a
graph given as edges or as an adjacency matrix -- in CSR form, and the supports of
the measures on its vertices."""

from typing import NamedTuple

import numpy as np

from .._api import pairwise_distance
from ..errors import DomainError, ShapeError

#: rows of points per ``pairwise_distance`` block when building the k-NN graph
KNN_BLOCK = 1024


class Graph(NamedTuple):
    """An undirected graph in CSR form, both directions stored: the neighbours of
    vertex ``v`` are ``indices[indptr[v]:indptr[v + 1]]`` (increasing), the lengths
    of those edges ``weights[...]``; int64 and float64 NumPy arrays."""
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_edges(cls, edges, lengths, n):
        """The graph of ``n`` vertices with the edges ``(E, 2)`` (no duplicates, no
        self loops) of lengths ``(E,)``."""
        rows = np.concatenate([edges[:, 0], edges[:, 1]])
        cols = np.concatenate([edges[:, 1], edges[:, 0]])
        order = np.lexsort((cols, rows))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return cls(indptr, cols[order].astype(np.int64),
                   np.concatenate([lengths, lengths])[order].astype(np.float64))

    @property
    def degree(self):
        return np.diff(self.indptr)


class Supports(NamedTuple):
    """The supports of the measures of some vertices, one after the other: vertex
    ``e``'s support is ``vertices[offsets[e]:offsets[e + 1]]`` with the masses
    ``masses[...]``."""
    vertices: np.ndarray
    offsets: np.ndarray
    masses: np.ndarray


def supports(graph, nodes, alpha):
    """The supports of ``m_u`` for each ``u`` of ``nodes``: ``u`` itself with mass
    ``alpha`` (first; left out when ``alpha`` is 0), then its neighbours with
    ``(1 - alpha) / deg(u)`` each."""
    own = 1 if alpha > 0 else 0
    deg = graph.degree[nodes]
    size = deg + own
    offsets = np.zeros(len(nodes) + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    seg = np.repeat(np.arange(len(nodes)), size)
    local = np.arange(offsets[-1]) - offsets[seg]
    vertices = graph.indices[graph.indptr[nodes][seg] + np.maximum(local - own, 0)]
    masses = (1 - alpha) / deg[seg]
    if own:
        vertices = np.where(local == 0, nodes[seg], vertices)
        masses = np.where(local == 0, alpha, masses)
    return Supports(vertices, offsets, masses)


# ---------------------------------------------------------------- points

def host(a):
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


def as_points(points):
    """``points`` as a C-contiguous float64 NumPy array (N, d) of finite values."""
    points = host(points)
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


def knn_graph(points, k, manifold, curvature):
    """Symmetric k-NN graph of ``points (N, d)`` as (edges (E, 2) u < v, sorted;
    lengths (E,)), by ``pairwise_distance`` in blocks of KNN_BLOCK rows (never
    N x N)."""
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


# ---------------------------------------------------------------- given graphs

def _dedupe(u, v, w, n):
    """Edges (u < v) sorted, the first of each duplicate kept, and their lengths."""
    key = u.astype(np.int64) * n + v
    key, first = np.unique(key, return_index=True)
    return np.stack([key // n, key % n], axis=1).astype(np.int64), w[first]


def is_networkx(graph):
    """A networkx graph (recognised without importing networkx)."""
    return type(graph).__module__.startswith("networkx.") and hasattr(graph, "edges")


def _networkx(graph):
    """(edges (E, 2) as indices into ``list(graph.nodes())``, lengths from the edges'
    "weight" attribute (1 where absent), vertex count) of a networkx graph."""
    if graph.is_directed():
        raise ValueError("graph must be undirected; got a directed networkx graph "
                         "(pass graph.to_undirected())")
    if graph.is_multigraph():
        raise ValueError("graph must have at most one edge between two nodes; got a "
                         "networkx multigraph (pass networkx.Graph(graph) to merge them)")
    index = {v: i for i, v in enumerate(graph.nodes())}
    triples = list(graph.edges(data="weight", default=1.0))
    edges = np.array([(index[u], index[v]) for u, v, _ in triples], dtype=np.int64)
    return edges.reshape(-1, 2), np.array([w for _, _, w in triples], dtype=np.float64), \
        len(index)


def given_graph(graph):
    """``graph`` -- a networkx graph, an edge list (pairs of node indices: a list, or
    an integer (E, 2) array that is not square), ``(edges, weights)``, or a dense or
    SciPy-sparse adjacency matrix -- as (edges (E, 2) u < v, sorted; weights (E,);
    vertex count N). Unit lengths where none are given."""
    import scipy.sparse as sp
    nodes = 0   # vertices without edges count too (a networkx graph's isolated nodes)
    if is_networkx(graph):
        edges, weights, nodes = _networkx(graph)
        graph = (edges, weights)
    elif isinstance(graph, list) or (
            isinstance(graph, np.ndarray) and graph.ndim == 2 and graph.shape[1] == 2
            and graph.shape[0] != 2 and graph.dtype.kind in "iu"):
        edges = np.asarray(graph)
        if edges.size == 0:
            edges = edges.reshape(0, 2).astype(np.int64)
        graph = (edges, np.ones(edges.shape[0] if edges.ndim == 2 else 0))
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
        n = max(int(edges.max()) + 1 if edges.size else 0, nodes)
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
