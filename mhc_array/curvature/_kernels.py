"""The kernels of curvature as (non-public) records of the pipeline, so that the
configuration in force chooses the backend that runs them and ``stats()`` counts
them: the C kernels of the native backend, else the array_api backend's NumPy and
SciPy ones (``backends/native.py``, ``backends/array_api.py``).

Every problem is ragged: the composite lays the problems (or the supports) one
after the other in flat arrays with offset tables ``ptr`` (``ptr[e]`` .. ``ptr[e +
1]`` is item ``e``, ``ptr[0] = 0``). The arrays reach the kernels as built: float64
values, int64 vertex indices and offset tables (dtype rule "exact": nothing is cast);
the ``shapes`` hooks check that they fit together, so that no kernel reads past an
array.
"""

import numpy as np

from .. import _options
from .._api import manifold_option
from .._pipeline import Arg, Op
from ..errors import ShapeError


def _flat(call, name, a, dtype):
    """``a`` as a C-contiguous 1-D NumPy array of ``dtype`` (a counted copy if needed)."""
    b = np.ascontiguousarray(a, dtype=dtype)
    if b.ndim != 1:
        raise ShapeError(f"{name} must be 1-D; got shape {b.shape}")
    if b is not a:
        call.copied(b.nbytes)
    return b


def _offsets(name, ptr):
    """Check that ``ptr`` is an offset table (from 0, non-decreasing)."""
    if ptr.shape[0] < 1 or ptr[0] != 0 or np.any(ptr[1:] < ptr[:-1]):
        raise ShapeError(f"{name} must be an offset table (from 0, non-decreasing)")


def _entries(xptr, yptr):
    """The number of cost entries of the problems (xptr, yptr): sum a_e * b_e."""
    return int(np.dot(np.diff(xptr), np.diff(yptr)))


def _vertices(names, arrays, n):
    for name, a in zip(names, arrays):
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ShapeError(f"{name} must hold vertex indices in [0, {n})")


def _supports(call, names, X, xptr, Y, yptr, kernel):
    """The two sides' vertices and offset tables, checked."""
    X, Y = _flat(call, names[0], X, np.int64), _flat(call, names[2], Y, np.int64)
    xptr, yptr = _flat(call, names[1], xptr, np.int64), _flat(call, names[3], yptr, np.int64)
    _offsets(names[1], xptr)
    _offsets(names[3], yptr)
    if yptr.shape != xptr.shape or X.shape[0] != xptr[-1] or Y.shape[0] != yptr[-1]:
        raise ShapeError(f"{kernel}: offset tables {xptr.shape}, {yptr.shape} do not match "
                         f"the supports ({X.shape[0]}, {Y.shape[0]})")
    return X, xptr, Y, yptr


def _ot_shapes(xp, call, names, arrays, opts, cdt):
    cost, mu, mv, rptr, cptr = (_flat(call, name, a, dt) for name, a, dt in
                                zip(names, arrays, (np.float64,) * 3 + (np.int64,) * 2))
    _offsets("rptr", rptr)
    _offsets("cptr", cptr)
    if (cptr.shape != rptr.shape or mu.size != rptr[-1] or mv.size != cptr[-1]
            or cost.size != _entries(rptr, cptr)):
        raise ShapeError(f"ot_w1: offset tables {rptr.shape}, {cptr.shape} do not match "
                         f"masses ({mu.size}, {mv.size}) and costs ({cost.size})")
    return [cost, mu, mv, rptr, cptr], {}


def _graph_shapes(xp, call, names, arrays, opts, cdt):
    indptr, indices = (_flat(call, name, a, np.int64) for name, a in zip(names, arrays[:2]))
    weights = _flat(call, names[2], arrays[2], np.float64)
    _offsets("indptr", indptr)
    if indices.shape != weights.shape or indices.shape[0] != indptr[-1]:
        raise ShapeError(f"graph_costs: graph arrays {indptr.shape}, {indices.shape}, "
                         f"{weights.shape} do not match")
    supports = _supports(call, names[3:], *arrays[3:], "graph_costs")
    n = indptr.shape[0] - 1
    _vertices((names[1], names[3], names[5]), (indices, supports[0], supports[2]), n)
    return [indptr, indices, weights, *supports], {}


def _point_shapes(xp, call, names, arrays, opts, cdt):
    points = np.ascontiguousarray(arrays[0], dtype=np.float64)
    if points is not arrays[0]:
        call.copied(points.nbytes)
    if points.ndim != 2:
        raise ShapeError(f"points must have shape (N, d); got shape {points.shape}")
    supports = _supports(call, names[1:], *arrays[1:], "point_costs")
    _vertices((names[1], names[3]), (supports[0], supports[2]), points.shape[0])
    return [points, *supports], {}


def _ragged(*names):
    return tuple(Arg(name, ("k",), checked=False) for name in names)


_KERNELS = dict(dtype="exact", restore=(), backends=("native", "array_api"))

#: Entropic W1 of a ragged batch of transport problems -> (w (g,), iterations done
#: (g,)): problem e has the row masses mu[rptr[e]:rptr[e + 1]], the column masses
#: mv[cptr[e]:...] (finite, >= 0, equal totals; 0 is padding) and its cost matrix
#: (rows x cols, row-major) in cost after those of the problems before it. Sinkhorn
#: with epsilon scaling (from 0.02 down to ``reg``, both relative to the problem's
#: cost range), at most ``iterations`` per stage, until the marginals are within
#: ``tolerance`` (L1); the plan rounded onto the exact marginals (an upper bound).
#: ``relax``: over-relaxed scalings where the backend has them (native).
OT_W1 = Op("ot_w1", kernel="ot_w1", arrays=_ragged("cost", "mu", "mv", "rptr", "cptr"),
           options=(("reg", _options.positive), ("iterations", _options.int_range(1)),
                    ("tolerance", _options.nonnegative), ("relax", _options.flag)),
           shapes=_ot_shapes, **_KERNELS)

#: Shortest-path distances between ragged supports of a graph in CSR form (both
#: directions stored, lengths finite and > 0): edge e's matrix d(X[xptr[e]:xptr[e +
#: 1]], Y[yptr[e]:...]), all edges' matrices one after the other (inf where unreachable).
GRAPH_COSTS = Op("graph_costs", kernel="graph_costs",
                 arrays=_ragged("indptr", "indices", "weights", "X", "xptr", "Y", "yptr"),
                 shapes=_graph_shapes, **_KERNELS)

#: The manifold distances between ragged supports of points (N, d), in graph_costs'
#: layout; a point outside the manifold's domain gives NaN.
POINT_COSTS = Op("point_costs", kernel="point_costs",
                 arrays=(Arg("points", ("N", "d"), checked=False),
                         *_ragged("X", "xptr", "Y", "yptr")),
                 options=(("manifold", manifold_option), ("curvature", _options.positive)),
                 shapes=_point_shapes, **_KERNELS)


def _exact_shapes(xp, call, names, arrays, opts, cdt):
    return _ot_shapes(xp, call, names, arrays, opts, cdt)[0], {}


def _table_shapes(xp, call, names, arrays, opts, cdt):
    table = np.ascontiguousarray(arrays[0], dtype=np.float64)
    if table is not arrays[0]:
        call.copied(table.nbytes)
    if table.ndim != 2 or table.shape[0] != table.shape[1]:
        raise ShapeError(f"table must be a square (N, N) array; got shape {table.shape}")
    X, Y = (_flat(call, name, a, np.int64) for name, a in zip(names[1:3], arrays[1:3]))
    mu, mv = (_flat(call, name, a, np.float64) for name, a in zip(names[3:5], arrays[3:5]))
    rptr, cptr = (_flat(call, name, a, np.int64) for name, a in zip(names[5:], arrays[5:]))
    _offsets("rptr", rptr)
    _offsets("cptr", cptr)
    if (cptr.shape != rptr.shape or mu.size != rptr[-1] or mv.size != cptr[-1]
            or X.shape != mu.shape or Y.shape != mv.shape):
        raise ShapeError(f"ot_exact_table: offset tables {rptr.shape}, {cptr.shape} do not "
                         f"match masses ({mu.size}, {mv.size}) and points ({X.size}, "
                         f"{Y.size})")
    _vertices(names[1:3], (X, Y), table.shape[0])
    return [table, X, Y, mu, mv, rptr, cptr], {}


def _unit_shapes(xp, call, names, arrays, opts, cdt):
    indptr, indices, U, V = (_flat(call, name, a, np.int64) for name, a in zip(names, arrays))
    _offsets("indptr", indptr)
    if indices.shape[0] != indptr[-1] or U.shape != V.shape:
        raise ShapeError(f"unit_w1: graph arrays {indptr.shape}, {indices.shape} or edge "
                         f"ends {U.shape}, {V.shape} do not match")
    _vertices(names[1:], (indices, U, V), indptr.shape[0] - 1)
    return [indptr, indices, U, V], {}


#: Exact W1 of a ragged batch of transport problems (ot_w1's layout) -> w (g,):
#: min over plans of <P, C>, optimal up to rounding. ``metric``: the costs are a
#: (pseudo)metric between the rows' and columns' points, so the mass of a zero-cost
#: pair is cancelled before solving (W1 unchanged).
OT_EXACT = Op("ot_exact", kernel="ot_exact",
              arrays=_ragged("cost", "mu", "mv", "rptr", "cptr"),
              options=(("metric", _options.flag),), shapes=_exact_shapes, **_KERNELS)

#: OT_EXACT with the costs read from one table (N, N) of distances between N points
#: (or vertices): problem e's rows are the points X[rptr[e]:rptr[e + 1]] with the
#: masses mu[...], its columns Y[cptr[e]:...] with mv[...], its costs
#: table[X[.], Y[.]]. No cost array: the native kernel gathers each problem's costs
#: into a thread's buffer.
OT_EXACT_TABLE = Op("ot_exact_table", kernel="ot_exact_table",
                    arrays=(Arg("table", ("N", "N"), checked=False),
                            *_ragged("X", "Y", "mu", "mv", "rptr", "cptr")),
                    options=(("metric", _options.flag),), shapes=_table_shapes, **_KERNELS)

#: Exact W1(m_u, m_v) of every edge (U[e], V[e]) of a graph whose edges all have
#: length 1, in CSR form (both directions stored) -> w (E,): kappa = 1 - w. The
#: measures' shared mass cancelled, the costs (1, 2 or 3) from adjacency and
#: common neighbours, no search.
UNIT_W1 = Op("unit_w1", kernel="unit_w1", arrays=_ragged("indptr", "indices", "U", "V"),
             options=(("alpha", _options.fraction),), shapes=_unit_shapes, **_KERNELS)
