"""The public functions of SPEC 2.1-2.2, each a record of the pipeline
(``_pipeline.Op``) and a docstring.

Arrays are positional-only, options keyword-only; inputs are never written to
unless passed as ``out=``. What is particular to a function -- the relations
between its arguments' shapes -- is its record's ``shapes`` hook here; every
other step is the pipeline's.
"""

from . import _dispatch
from ._options import choice, flag, iterations, nonnegative, positive
from ._pipeline import Arg, Op
from .errors import DomainError, ShapeError

__all__ = [
    "sinkhorn_knopp",
    "euclidean_distance", "poincare_distance", "spherical_distance",
    "geometric_distance", "pairwise_distance",
    "check_manifold", "project_to_manifold",
]

MANIFOLDS = ("euclidean", "poincare", "spherical")
ON_DOMAIN_ERROR = ("raise", "nan", "clip")
ORDERS = ("rows-first", "cols-first")

manifold_option = choice(*MANIFOLDS)
on_domain_error_option = choice(*ON_DOMAIN_ERROR)
order_option = choice(*ORDERS)


# ---------------------------------------------------------------- Sinkhorn

def _sinkhorn_shapes(xp, call, names, arrays, opts, cdt):
    """Targets: shapes (..., n) / (..., m) broadcastable to the batch, >= 0, a
    missing side defaulted from the other's total, totals that agree."""
    x, row_sums, col_sums = arrays
    n, m = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    rs = _target(xp, call, row_sums, "row_sums", batch, n, cdt)
    cs = _target(xp, call, col_sums, "col_sums", batch, m, cdt)
    return [x, *_balance_targets(xp, rs, cs, n, m, cdt, _dispatch.device_of(x))], {}


def _target(xp, call, t, name, batch, k, cdt):
    if t is None:
        return None
    if t.ndim < 1 or t.shape[-1] not in (1, k):
        raise ShapeError(f"{name} must have shape (..., {k}) broadcastable to the batch "
                         f"{batch}; got shape {tuple(t.shape)}")
    if _dispatch.broadcast_batch(tuple(t.shape[:-1]), batch, name, "x") != batch:
        raise ShapeError(f"{name} with shape {tuple(t.shape)} does not broadcast to the "
                         f"batch {batch} of x")
    t = call.cast(xp, t, cdt)
    if bool(xp.any(t < 0)):
        raise DomainError(f"{name} must be >= 0; it has negative entries", argument=name)
    return t


def _balance_targets(xp, rs, cs, n, m, cdt, device):
    """Default a missing side to the uniform vector with the other side's total, and
    check that two given totals agree to 1e-6 relative."""
    if rs is None and cs is None:
        return None, None

    def ones(k):
        return xp.ones((k,), dtype=cdt, device=device)
    if rs is not None and rs.shape[-1] == 1 and n != 1:
        rs = rs * ones(n)
    if cs is not None and cs.shape[-1] == 1 and m != 1:
        cs = cs * ones(m)
    if cs is None:
        return rs, xp.expand_dims(xp.sum(rs, axis=-1), axis=-1) / m * ones(m)
    if rs is None:
        return xp.expand_dims(xp.sum(cs, axis=-1), axis=-1) / n * ones(n), cs
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


# row and column targets: optional, (..., n) / (..., m) or (..., 1), checked by the hook
_TARGETS = (Arg("row_sums", ("n",), optional=True, checked=False),
            Arg("col_sums", ("m",), optional=True, checked=False))

SINKHORN = Op(
    "sinkhorn_knopp", kernel="sinkhorn",
    arrays=(Arg("x", ("n", "m")), *_TARGETS), results=(("n", "m"),),
    options=(("iterations", iterations), ("tau", nonnegative), ("logits", flag),
             ("order", order_option)),
    shapes=_sinkhorn_shapes, out=True, ragged=True, plan_arrays=1)


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
        Regulariser added to every row and column sum (not a temperature: for
        entropic transport with cost ``M`` and temperature ``reg``, POT's
        ``ot.sinkhorn(a, b, M, reg)``, pass ``-M / reg`` with ``logits=True`` and
        ``row_sums=a, col_sums=b``).
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

    Examples
    --------
    >>> P = mx.sinkhorn_knopp(np.array([[1.0, 2.0], [3.0, 4.0]]), iterations=50)
    >>> P.round(4)
    array([[0.4495, 0.5505],
           [0.5505, 0.4495]])
    >>> P.sum(axis=0), P.sum(axis=1)
    (array([1., 1.]), array([1., 1.]))
    >>> H = mx.sinkhorn_knopp(np.zeros((8, 4, 4), np.float32), logits=True)  # a batch
    >>> H.shape, H.dtype, round(float(H[0, 0, 0]), 6)  # within 2 ulp: see docs/reliability.md
    ((8, 4, 4), dtype('float32'), 0.25)
    """
    return SINKHORN((x, row_sums, col_sums), (iterations, tau, logits, order), out=out)


def _sinkhorn_backward_shapes(xp, call, names, arrays, opts, cdt):
    """The forward's checks of x and the targets, and ``grad`` of x's shape."""
    x, row_sums, col_sums, grad = arrays
    if tuple(grad.shape) != tuple(x.shape):
        raise ShapeError(f"grad must have the shape of x {tuple(x.shape)}; "
                         f"got shape {tuple(grad.shape)}")
    arrays, extra = _sinkhorn_shapes(xp, call, names[:3], [x, row_sums, col_sums], opts, cdt)
    return [*arrays, grad], extra


# The gradient of sinkhorn_knopp w.r.t. x (not public: mhc_array.torch's autograd
# calls it): sum(grad * sinkhorn_knopp(x)) differentiated, targets held fixed.
SINKHORN_BACKWARD = Op(
    "sinkhorn_knopp_backward", kernel="sinkhorn_backward",
    arrays=(Arg("x", ("n", "m")), *_TARGETS, Arg("grad", ("n", "m"))),
    options=SINKHORN.options, shapes=_sinkhorn_backward_shapes, plan_arrays=0)


# ---------------------------------------------------------------- distances

def _distance_shapes(xp, call, names, arrays, opts, cdt):
    """``x (..., d)`` and ``c`` with the same d and batch shapes that broadcast."""
    x, c = arrays
    if x.shape[-1] != c.shape[-1]:
        raise ShapeError(f"x and c must have the same last dimension d; got x with shape "
                         f"{tuple(x.shape)} and c with shape {tuple(c.shape)}")
    batch = _dispatch.broadcast_batch(tuple(x.shape[:-1]), tuple(c.shape[:-1]), "x", "c")
    checked_size(batch + (x.shape[-1],), "x")
    return arrays, {}


def _pairwise_shapes(xp, call, names, arrays, opts, cdt):
    """``x (N, d)`` and ``y (M, d)``."""
    x, y = arrays
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ShapeError(f"{name} must have shape (N, d); got shape {tuple(a.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"x and y must have the same number of columns d; got x with shape "
                         f"{tuple(x.shape)} and y with shape {tuple(y.shape)}")
    checked_size((x.shape[0], y.shape[0], x.shape[1]), "x")
    return arrays, {}


checked_size = _dispatch.checked_size
_POINTS = (Arg("x", ("d",)), Arg("c", ("d",)))
_CURVATURE = ("curvature", positive)
_ON_DOMAIN_ERROR = ("on_domain_error", on_domain_error_option)


def _distance_op(name, manifold=None):
    """The record of a row-wise distance (``manifold`` fixed, or an option)."""
    options = (_CURVATURE, _ON_DOMAIN_ERROR)
    return Op(name, kernel="distance", arrays=_POINTS, results=((),), dtype="common",
              shapes=_distance_shapes,
              options=options if manifold else (("manifold", manifold_option),) + options,
              fixed={"manifold": manifold} if manifold else None, plan_arrays=2)


EUCLIDEAN = _distance_op("euclidean_distance", "euclidean")
POINCARE = _distance_op("poincare_distance", "poincare")
SPHERICAL = _distance_op("spherical_distance", "spherical")
GEOMETRIC = _distance_op("geometric_distance")
PAIRWISE = Op("pairwise_distance", kernel="pairwise",
              arrays=(Arg("x", ("N", "d"), checked=False), Arg("y", ("M", "d"), checked=False)),
              dtype="common", shapes=_pairwise_shapes,
              options=(("manifold", manifold_option), _CURVATURE, _ON_DOMAIN_ERROR))


def euclidean_distance(x, c, /):
    """Euclidean distance ``|x - c|`` between the points ``x (..., d)`` and ``c``
    (broadcastable, e.g. ``(d,)`` for one reference point); result ``(...)``.

    >>> mx.euclidean_distance(np.array([[3.0, 4.0], [0.0, 0.0]]), np.zeros(2))
    array([5., 0.])
    """
    return EUCLIDEAN((x, c), (1.0, "raise"))


def poincare_distance(x, c, /, *, curvature=1.0, on_domain_error="raise"):
    """Geodesic distance in the Poincare ball of curvature ``-curvature``.

    ``arccosh(1 + 2K|x-c|^2 / ((1-K|x|^2)(1-K|c|^2))) / sqrt(K)``, evaluated with
    ``log1p`` so that near points keep full relative precision. Points with
    ``K|p|^2 >= 1`` are a DomainError ("raise"), give NaN ("nan"), or are projected
    to radius ``(1-1e-5)/sqrt(K)`` ("clip").

    >>> x = np.array([[0.5, 0.0], [2.0, 0.0]])       # the second point is outside
    >>> mx.poincare_distance(x[:1], np.zeros(2)).round(6)   # 2 artanh(0.5)
    array([1.098612])
    >>> mx.poincare_distance(x, np.zeros(2), on_domain_error="nan").round(6)
    array([1.098612,      nan])
    >>> mx.poincare_distance(x, np.zeros(2))
    Traceback (most recent call last):
    ...
    mhc_array.errors.DomainError: x[1] lies outside the Poincare ball of curvature -K ...
    """
    return POINCARE((x, c), (curvature, on_domain_error))


def spherical_distance(x, c, /, *, on_domain_error="raise"):
    """The angle between ``x`` and ``c`` (any non-zero norms), accurate for tiny and
    near-pi angles. A zero vector is a DomainError ("raise") or gives NaN.

    >>> mx.spherical_distance(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 0.0]))
    array([0.        , 1.57079633])
    """
    return SPHERICAL((x, c), (1.0, on_domain_error))


def geometric_distance(x, c, /, *, manifold="euclidean", curvature=1.0,
                       on_domain_error="raise"):
    """The distance on ``manifold`` ("euclidean", "poincare" or "spherical").

    >>> round(float(mx.geometric_distance(np.array([0.0, 0.5]), np.zeros(2),
    ...                                   manifold="poincare")), 6)
    1.098612
    """
    return GEOMETRIC((x, c), (manifold, curvature, on_domain_error))


def pairwise_distance(x, y, /, *, manifold="euclidean", curvature=1.0,
                      on_domain_error="raise"):
    """``(N, M)`` distances between the rows of ``x (N, d)`` and ``y (M, d)``, like
    ``scipy.spatial.distance.cdist``, computed directly (no ``|x|^2+|y|^2-2xy``).

    >>> mx.pairwise_distance(np.eye(2), np.eye(2), manifold="spherical")
    array([[0.        , 1.57079633],
           [1.57079633, 0.        ]])
    """
    return PAIRWISE((x, y), (manifold, curvature, on_domain_error))


# ---------------------------------------------------------------- manifolds

CHECK_MANIFOLD = Op("check_manifold", kernel="check_manifold", arrays=(Arg("x", ("d",)),),
                    results=((),),
                    options=(("manifold", manifold_option), _CURVATURE, ("atol", nonnegative)),
                    restore=(), backends=("array_api",))
PROJECT = Op("project_to_manifold", kernel="project_to_manifold", arrays=(Arg("x", ("d",)),),
             results=(("d",),),
             options=(("manifold", manifold_option), _CURVATURE), backends=("array_api",))


def check_manifold(x, /, *, manifold, curvature=1.0, atol=1e-6):
    """Boolean ``(...)``: is each point of ``x (..., d)`` on the manifold?

    Sphere: ``abs(|x| - 1) <= atol``; ball: ``K|x|^2 < 1 - atol``; Euclidean: finite.

    >>> mx.check_manifold(np.array([[1.0, 0.0], [0.6, 0.8], [2.0, 0.0]]), manifold="spherical")
    array([ True,  True, False])
    """
    return CHECK_MANIFOLD((x,), (manifold, curvature, atol))


def project_to_manifold(x, /, *, manifold, curvature=1.0):
    """``x (..., d)`` projected onto the unit sphere (a zero vector is a DomainError) or
    into the Poincare ball (points beyond radius ``(1-1e-5)/sqrt(K)`` scaled to it);
    Euclidean returns a copy. The input is not modified.

    >>> mx.project_to_manifold(np.array([[3.0, 4.0]]), manifold="spherical")
    array([[0.6, 0.8]])
    >>> mx.project_to_manifold(np.array([[3.0, 4.0]]), manifold="poincare")
    array([[0.599994, 0.799992]])
    """
    return PROJECT((x,), (manifold, curvature))
