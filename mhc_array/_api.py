"""The public functions of SPEC 2.1-2.2.

Each validates its arguments once, naming them in errors, then hands the
arrays to the backend chosen by ``_dispatch``. Arrays are positional-only,
options keyword-only; inputs are never written to unless passed as ``out=``.
"""

import math
import numbers
import operator

import numpy as np

from . import _dispatch
from ._dispatch import Call, common_namespace, compute_dtype, select_backend
from .errors import DomainError, ShapeError

__all__ = [
    "sinkhorn_knopp",
    "euclidean_distance", "poincare_distance", "spherical_distance",
    "geometric_distance", "pairwise_distance",
    "check_manifold", "project_to_manifold",
]

def _native_fast_sinkhorn(*args):
    """The native backend's whole-call fast path for sinkhorn_knopp (bound on first use)."""
    global _native_fast_sinkhorn
    _native_fast_sinkhorn = _dispatch._backend_module("native").fast_sinkhorn
    return _native_fast_sinkhorn(*args)


def _native_fast_distance(*args):
    """The native backend's whole-call fast path (bound on first use)."""
    global _native_fast_distance
    _native_fast_distance = _dispatch._backend_module("native").fast_distance
    return _native_fast_distance(*args)


MANIFOLDS = ("euclidean", "poincare", "spherical")
ON_DOMAIN_ERROR = ("raise", "nan", "clip")
ORDERS = ("rows-first", "cols-first")
MAX_ITERATIONS = 2**31 - 1


# ---------------------------------------------------------------- option checks

def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _real(name, value, *, positive=False):
    """A finite real Python/NumPy number (not a bool), >= 0 (or > 0)."""
    if type(value) is float and value > 0 and value != math.inf:  # the common case
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {need}; got {value!r}")
    return value


def _iterations(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"iterations must be an int; got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if not 0 <= value <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in [0, 2**31 - 1]; got {value}")
    return value


def _flag(name, value):
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return bool(value)


# ---------------------------------------------------------------- Sinkhorn

def sinkhorn_knopp(x, /, *, iterations=20, tau=0.0, logits=False, order="rows-first",
                   row_sums=None, col_sums=None, out=None):
    """Project ``x (..., n, m)`` towards the matrices with the given row and column
    sums (the Birkhoff polytope for square matrices) by Sinkhorn-Knopp iterations.

    Parameters
    ----------
    x : array (..., n, m), or a list/tuple of 2-D arrays of different shapes
        Non-negative entries (or logits with ``logits=True``). Leading axes are a batch.
    iterations : int in [0, 2**31 - 1]
        Full iterations (a row and a column normalisation each); 0 returns the start.
    tau : float >= 0
        Regulariser added to every row and column sum.
    logits : bool
        Start from ``exp(x - max(x))`` (max over each matrix) instead of ``x``.
    order : "rows-first" or "cols-first"
        "cols-first" is the mHC paper's ``T_r(T_c(M))``.
    row_sums, col_sums : arrays (..., n) and (..., m), optional
        Target sums, broadcastable over the batch. Defaults: 1 for rows and n/m for
        columns; when only one side is given the other defaults to the uniform
        vector with the same total. Totals must agree to 1e-6 relative.
    out : array like ``x``, optional
        Where to write the result (may be ``x`` itself).

    Returns an array of the shape and dtype of ``x`` in the caller's library.
    Only the side normalised last is exact after finitely many iterations.
    """
    if (type(x) is np.ndarray and row_sums is None and col_sums is None and out is None):
        res = _native_fast_sinkhorn(x, iterations, tau, logits, order)
        if res is not None:
            return res
    iterations = _iterations(iterations)
    tau = _real("tau", tau)
    logits = _flag("logits", logits)
    cols_first = _choice("order", order, ORDERS) == "cols-first"
    if isinstance(x, (list, tuple)):
        return _sinkhorn_ragged(x, iterations, tau, logits, order, row_sums, col_sums, out)
    call = Call("sinkhorn_knopp")
    xp, lib = common_namespace((("x", x), ("row_sums", row_sums),
                                ("col_sums", col_sums), ("out", out)))
    if x.ndim < 2:
        raise ShapeError(f"x must have shape (..., n, m) with at least 2 dimensions; "
                         f"got shape {tuple(x.shape)}")
    _dispatch.checked_size(x.shape, "x")
    cdt, rdt = compute_dtype(xp, x, "x")
    n, m = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    rs = _target(xp, call, row_sums, "row_sums", batch, n, cdt)
    cs = _target(xp, call, col_sums, "col_sums", batch, m, cdt)
    rs, cs = _balance_targets(xp, rs, cs, n, m, cdt)
    if out is not None:
        _check_out(xp, out, tuple(x.shape), rdt)
    xc = call.cast(xp, x, cdt)
    backend = select_backend(xc, lib, kernel="sinkhorn")
    call.backend = backend.NAME
    work_out = out if (out is not None and cdt == rdt) else None
    res = backend.sinkhorn(xp, xc, iterations=iterations, tau=tau, logits=logits,
                           cols_first=cols_first, row_sums=rs, col_sums=cs,
                           out=work_out, call=call)
    if res.dtype != rdt:
        res = xp.astype(res, rdt)
    if out is not None and work_out is None:
        out[...] = res
        res = out
    call.done()
    return res


def _target(xp, call, t, name, batch, k, cdt):
    if t is None:
        return None
    if t.ndim < 1 or t.shape[-1] not in (1, k):
        raise ShapeError(f"{name} must have shape (..., {k}) broadcastable to the batch "
                         f"{batch}; got shape {tuple(t.shape)}")
    if _dispatch.broadcast_batch(tuple(t.shape[:-1]), batch, name, "x") != batch:
        raise ShapeError(f"{name} with shape {tuple(t.shape)} does not broadcast to the "
                         f"batch {batch} of x")
    compute_dtype(xp, t, name)
    t = call.cast(xp, t, cdt)
    if bool(xp.any(t < 0)):
        raise DomainError(f"{name} must be >= 0; it has negative entries", argument=name)
    return t


def _balance_targets(xp, rs, cs, n, m, cdt):
    """Default a missing side to the uniform vector with the other side's total, and
    check that two given totals agree to 1e-6 relative."""
    if rs is None and cs is None:
        return None, None
    if rs is not None and rs.shape[-1] == 1 and n != 1:
        rs = rs * xp.ones((n,), dtype=cdt)
    if cs is not None and cs.shape[-1] == 1 and m != 1:
        cs = cs * xp.ones((m,), dtype=cdt)
    if cs is None:
        return rs, xp.expand_dims(xp.sum(rs, axis=-1), axis=-1) / m * xp.ones((m,), dtype=cdt)
    if rs is None:
        return xp.expand_dims(xp.sum(cs, axis=-1), axis=-1) / n * xp.ones((n,), dtype=cdt), cs
    tr, tc = xp.sum(rs, axis=-1), xp.sum(cs, axis=-1)
    scale = xp.maximum(xp.abs(tr), xp.abs(tc))
    if not bool(xp.all(xp.abs(tr - tc) <= 1e-6 * scale)):
        raise ValueError("row_sums and col_sums must have equal totals (to 1e-6 relative) for "
                         f"every matrix; got totals {_show(xp, tr)} and {_show(xp, tc)}")
    return rs, cs


def _show(xp, a):
    try:
        flat = xp.reshape(a, (-1,))
        vals = [float(flat[i]) for i in range(min(3, flat.shape[0]))]
        return "[" + ", ".join(f"{v:g}" for v in vals) + (", ...]" if flat.shape[0] > 3 else "]")
    except Exception:  # noqa: BLE001 - only for a message
        return "(not shown)"


def _check_out(xp, out, shape, dtype):
    if tuple(out.shape) != shape:
        raise ShapeError(f"out must have shape {shape}; got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}; got {out.dtype}")


def _sinkhorn_ragged(xs, iterations, tau, logits, order, row_sums, col_sums, out):
    """A list of matrices of different shapes -> a list of results."""
    count = len(xs)
    for name, seq in (("row_sums", row_sums), ("col_sums", col_sums), ("out", out)):
        if seq is not None and (not isinstance(seq, (list, tuple)) or len(seq) != count):
            raise TypeError(f"with a list of matrices, {name} must be None or a list of "
                            f"{count} arrays; got {type(seq).__name__}")
    if count:
        common_namespace([(f"x[{i}]", a) for i, a in enumerate(xs)])
    return [sinkhorn_knopp(a, iterations=iterations, tau=tau, logits=logits, order=order,
                           row_sums=None if row_sums is None else row_sums[i],
                           col_sums=None if col_sums is None else col_sums[i],
                           out=None if out is None else out[i])
            for i, a in enumerate(xs)]


# ---------------------------------------------------------------- distances

def _points(xp, a, name):
    if a.ndim < 1:
        raise ShapeError(f"{name} must have shape (..., d) with at least 1 dimension; "
                         f"got a 0-d array")
    _dispatch.checked_size(a.shape, name)


def _common_dtypes(xp, a, b, na, nb):
    ca, ra = compute_dtype(xp, a, na)
    cb, rb = compute_dtype(xp, b, nb)
    cdt = xp.float64 if xp.float64 in (ca, cb) else xp.float32
    rdt = ra if ra == rb else cdt
    return cdt, rdt


def _manifold_options(manifold, curvature, on_domain_error):
    _choice("manifold", manifold, MANIFOLDS)
    curvature = _real("curvature", curvature, positive=True)
    _choice("on_domain_error", on_domain_error, ON_DOMAIN_ERROR)
    return curvature


def _distance(fname, manifold, x, c, curvature, on_domain_error):
    if type(x) is np.ndarray and type(c) is np.ndarray:
        res = _native_fast_distance(fname, manifold, x, c, curvature, on_domain_error)
        if res is not None:
            return res
    curvature = _manifold_options(manifold, curvature, on_domain_error)
    call = Call(fname)
    xp, lib = common_namespace((("x", x), ("c", c)))
    _points(xp, x, "x")
    _points(xp, c, "c")
    if x.shape[-1] != c.shape[-1]:
        raise ShapeError(f"x and c must have the same last dimension d; got x with shape "
                         f"{tuple(x.shape)} and c with shape {tuple(c.shape)}")
    batch = _dispatch.broadcast_batch(tuple(x.shape[:-1]), tuple(c.shape[:-1]), "x", "c")
    _dispatch.checked_size(batch + (x.shape[-1],), "x")
    cdt, rdt = _common_dtypes(xp, x, c, "x", "c")
    x, c = call.cast(xp, x, cdt), call.cast(xp, c, cdt)
    backend = select_backend(x, lib, kernel="distance")
    call.backend = backend.NAME
    res = backend.distance(xp, manifold, x, c, curvature=curvature,
                           on_domain_error=on_domain_error, call=call)
    if res.dtype != rdt:
        res = xp.astype(res, rdt)
    call.done()
    return res


def euclidean_distance(x, c, /):
    """Euclidean distance ``|x - c|`` between the points ``x (..., d)`` and ``c``
    (broadcastable, e.g. ``(d,)`` for one reference point); result ``(...)``."""
    return _distance("euclidean_distance", "euclidean", x, c, 1.0, "raise")


def poincare_distance(x, c, /, *, curvature=1.0, on_domain_error="raise"):
    """Geodesic distance in the Poincare ball of curvature ``-curvature``.

    ``arccosh(1 + 2K|x-c|^2 / ((1-K|x|^2)(1-K|c|^2))) / sqrt(K)``, evaluated with
    ``log1p`` so that near points keep full relative precision. Points with
    ``K|p|^2 >= 1`` are a DomainError ("raise"), give NaN ("nan"), or are projected
    to radius ``(1-1e-5)/sqrt(K)`` ("clip").
    """
    return _distance("poincare_distance", "poincare", x, c, curvature, on_domain_error)


def spherical_distance(x, c, /, *, on_domain_error="raise"):
    """The angle between ``x`` and ``c`` (any non-zero norms), accurate for tiny and
    near-pi angles. A zero vector is a DomainError ("raise") or gives NaN."""
    return _distance("spherical_distance", "spherical", x, c, 1.0, on_domain_error)


def geometric_distance(x, c, /, *, manifold="euclidean", curvature=1.0,
                       on_domain_error="raise"):
    """The distance on ``manifold`` ("euclidean", "poincare" or "spherical")."""
    _choice("manifold", manifold, MANIFOLDS)
    return _distance("geometric_distance", manifold, x, c, curvature, on_domain_error)


def pairwise_distance(x, y, /, *, manifold="euclidean", curvature=1.0,
                      on_domain_error="raise"):
    """``(N, M)`` distances between the rows of ``x (N, d)`` and ``y (M, d)``, like
    ``scipy.spatial.distance.cdist``, computed directly (no ``|x|^2+|y|^2-2xy``)."""
    curvature = _manifold_options(manifold, curvature, on_domain_error)
    call = Call("pairwise_distance")
    xp, lib = common_namespace((("x", x), ("y", y)))
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ShapeError(f"{name} must have shape (N, d); got shape {tuple(a.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"x and y must have the same number of columns d; got x with shape "
                         f"{tuple(x.shape)} and y with shape {tuple(y.shape)}")
    _dispatch.checked_size((x.shape[0], y.shape[0], x.shape[1]), "x")
    cdt, rdt = _common_dtypes(xp, x, y, "x", "y")
    x, y = call.cast(xp, x, cdt), call.cast(xp, y, cdt)
    backend = select_backend(x, lib, kernel="pairwise")
    call.backend = backend.NAME
    res = backend.pairwise(xp, manifold, x, y, curvature=curvature,
                           on_domain_error=on_domain_error, call=call)
    if res.dtype != rdt:
        res = xp.astype(res, rdt)
    call.done()
    return res


def check_manifold(x, /, *, manifold, curvature=1.0, atol=1e-6):
    """Boolean ``(...)``: is each point of ``x (..., d)`` on the manifold?

    Sphere: ``abs(|x| - 1) <= atol``; ball: ``K|x|^2 < 1 - atol``; Euclidean: finite.
    """
    _choice("manifold", manifold, MANIFOLDS)
    curvature = _real("curvature", curvature, positive=True)
    atol = _real("atol", atol)
    xp, _ = common_namespace((("x", x),))
    _points(xp, x, "x")
    compute_dtype(xp, x, "x")
    from .backends import array_api
    return array_api.check_manifold(xp, x, manifold=manifold, curvature=curvature, atol=atol)


def project_to_manifold(x, /, *, manifold, curvature=1.0):
    """``x (..., d)`` projected onto the unit sphere (a zero vector is a DomainError) or
    into the Poincare ball (points beyond radius ``(1-1e-5)/sqrt(K)`` scaled to it);
    Euclidean returns a copy. The input is not modified."""
    _choice("manifold", manifold, MANIFOLDS)
    curvature = _real("curvature", curvature, positive=True)
    xp, _ = common_namespace((("x", x),))
    _points(xp, x, "x")
    cdt, rdt = compute_dtype(xp, x, "x")
    from .backends import array_api
    res = array_api.project_to_manifold(xp, xp.astype(x, cdt), manifold=manifold,
                                        curvature=curvature)
    return xp.astype(res, rdt)
