"""The distances of SPEC 2.2 for torch tensors: the ops ``mhc_array::distance``
and ``mhc_array::pairwise_distance``, differentiable w.r.t. both point arguments
(their backwards are analytic formulas in torch operations)."""

import math

import torch

from .._api import EUCLIDEAN, GEOMETRIC, PAIRWISE, POINCARE, SPHERICAL
from ..backends._constants import CLIP_MARGIN
from .._options import validated
from ._common import check_points, fresh, plain, reduce_to

Tensor = torch.Tensor


# The forward is the library's record (native kernels for CPU tensors); the
# backward is the analytic gradient, evaluated in torch operations on the saved
# inputs in a working dtype (float64 for float32/float64 inputs, float32 for
# float16/bfloat16), then cast to each input's dtype and summed over the axes along
# which that input was broadcast.
#
# Per pair (x, c) with upstream gradient g (both gradients of broadcast shape):
#   euclidean  d = |x-c|:   dd/dx = (x-c)/d,  dd/dc = -(x-c)/d;  0 at x = c.
#   poincare   a = 1-K|x|^2, b = 1-K|c|^2, n = |x-c|, z = 2K n^2/(ab),
#              d = arccosh(1+z)/sqrt(K):  dd/dz = 1/(sqrt(K) sqrt(z(z+2))),
#              dz/dx = 4K(x-c)/(ab) + 4K^2 n^2 x/(a^2 b); multiplied out (the factor
#              sqrt(z) cancels) dd/dx = 2 (e + K n x/a) / sqrt(K n^2 + ab) with
#              e = (x-c)/n, and dd/dc = 2 (-e + K n c/b) / sqrt(K n^2 + ab);
#              0 at x = c.
#   spherical  u = x/|x|, v = c/|c|, cos = u.v:
#              dθ/dx = -(v - cos u)/(|x| sin θ), dθ/dc = -(u - cos v)/(|c| sin θ);
#              v - cos u is evaluated as δ - (δ.u)u with δ = v-u (θ <= π/2) or
#              δ = v+u (θ > π/2), exact 0 at θ = 0 and θ = π, where the gradient is 0;
#              sin θ is its norm.

_RECORDS = {"euclidean": EUCLIDEAN, "poincare": POINCARE, "spherical": SPHERICAL}
_PAIRWISE_BLOCK = 1 << 22    # elements of one (rows, M, d) block of the pairwise backward


def _work_dtype(*ts):
    dt = torch.promote_types(*(t.dtype for t in ts))
    if dt in (torch.float16, torch.bfloat16):
        return torch.float32
    if dt == torch.float32 and ts[0].device.type == "mps":
        return torch.float32
    return torch.float64


def _sq(t):
    return (t * t).sum(-1, keepdim=True)


def _safe_div(num, den):
    """num / den, 0 where den == 0 (the subgradient of minimal norm)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1, den))


def _clip(p, K):
    """The backends' "clip": points beyond radius (1-CLIP_MARGIN)/sqrt(K) scaled to it.
    Returns the clipped points and a function pulling a gradient back through it
    (the projection's Jacobian, rmax/|p| (I - p^ p^T), on the clipped points)."""
    rmax = (1 - CLIP_MARGIN) / math.sqrt(K)
    norm = _sq(p).sqrt()
    far = norm > rmax
    nrm = torch.where(far, norm, 1)
    q = torch.where(far, p * (rmax / nrm), p)

    def pull(g):
        ph = p / nrm
        return torch.where(far, (rmax / nrm) * (g - (g * ph).sum(-1, keepdim=True) * ph), g)
    return q, pull


def _pair_grads(manifold, x, c, g, K, mode):
    """d(distance)/dx * g and d(distance)/dc * g for points x, c (broadcastable,
    working dtype, last axis d) and g of their broadcast batch shape; both results
    have the broadcast shape (..., d)."""
    g = g.unsqueeze(-1)
    if manifold == "euclidean":
        diff = x - c
        n = _sq(diff).sqrt()
        gx = _safe_div(g * diff, n)
        return gx, -gx
    if manifold == "poincare":
        pull_x = pull_c = None
        if mode == "clip":
            x, pull_x = _clip(x, K)
            c, pull_c = _clip(c, K)
        diff = x - c
        n2 = _sq(diff)
        n = n2.sqrt()
        a = 1 - K * _sq(x)
        b = 1 - K * _sq(c)
        e = _safe_div(diff, n)
        s = 2 * g / torch.sqrt(K * n2 + a * b)
        gx = s * (e + (K * n / a) * x)
        gc = s * ((K * n / b) * c - e)
        bad = (a <= 0) | (b <= 0)      # outside the ball ("nan"): NaN gradient
        gx = torch.where(bad, math.nan, gx)
        gc = torch.where(bad, math.nan, gc)
        if pull_x is not None:
            gx, gc = pull_x(gx), pull_c(gc)
        return gx, gc
    # spherical
    nx = _sq(x).sqrt()
    nc = _sq(c).sqrt()
    u = x / nx                          # a zero vector: NaN, as the forward
    v = c / nc
    near = _sq(v - u) <= _sq(v + u)     # θ <= π/2
    delta = torch.where(near, v - u, v + u)
    rx = delta - (delta * u).sum(-1, keepdim=True) * u      # v - cos u
    rc = -delta - (-delta * v).sum(-1, keepdim=True) * v    # ±(u - cos v)
    rc = torch.where(near, rc, -rc)
    gx = -_safe_div(g * rx, nx * _sq(rx).sqrt())
    gc = -_safe_div(g * rc, nc * _sq(rc).sqrt())
    return gx, gc


def _result_dtype(x, c):
    return torch.promote_types(x.dtype, c.dtype)


@torch.library.custom_op("mhc_array::distance", mutates_args=())
def _distance_op(x: Tensor, c: Tensor, manifold: str, curvature: float,
                 on_domain_error: str) -> Tensor:
    res = _RECORDS[manifold]((plain(x), plain(c)), (curvature, on_domain_error))
    return fresh(res, x, c)


@_distance_op.register_fake
def _(x, c, manifold, curvature, on_domain_error):
    shape = torch.broadcast_shapes(x.shape[:-1], c.shape[:-1])
    return x.new_empty(shape, dtype=_result_dtype(x, c))


def _distance_setup_context(ctx, inputs, output):
    x, c, manifold, curvature, on_domain_error = inputs
    ctx.save_for_backward(x, c)
    ctx.options = (manifold, curvature, on_domain_error)


def _distance_backward(ctx, grad):
    x, c = ctx.saved_tensors
    manifold, K, mode = ctx.options
    gx = gc = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        wd = _work_dtype(x, c)
        dx, dc = _pair_grads(manifold, x.to(wd), c.to(wd), grad.to(wd), K, mode)
        if ctx.needs_input_grad[0]:
            gx = reduce_to(dx, x)
        if ctx.needs_input_grad[1]:
            gc = reduce_to(dc, c)
    return gx, gc, None, None, None


_distance_op.register_autograd(_distance_backward, setup_context=_distance_setup_context)


@torch.library.custom_op("mhc_array::pairwise_distance", mutates_args=())
def _pairwise_op(x: Tensor, y: Tensor, manifold: str, curvature: float,
                 on_domain_error: str) -> Tensor:
    res = PAIRWISE((plain(x), plain(y)), (manifold, curvature, on_domain_error))
    return fresh(res, x, y)


@_pairwise_op.register_fake
def _(x, y, manifold, curvature, on_domain_error):
    return x.new_empty((x.shape[0], y.shape[0]), dtype=_result_dtype(x, y))


def _pairwise_backward(ctx, grad):
    x, y = ctx.saved_tensors
    manifold, K, mode = ctx.options
    gx = gy = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        wd = _work_dtype(x, y)
        X, Y, G = x.to(wd), y.to(wd), grad.to(wd)
        N, M, d = X.shape[0], Y.shape[0], X.shape[1]
        dX = torch.zeros_like(X)
        dY = torch.zeros_like(Y)
        rows = max(1, _PAIRWISE_BLOCK // max(1, M * d))
        for i in range(0, N, rows):      # (rows, M, d) pairs at a time
            bx, by = _pair_grads(manifold, X[i:i + rows, None, :], Y[None, :, :],
                                 G[i:i + rows], K, mode)
            dX[i:i + rows] = bx.sum(1)
            dY += by.sum(0)
        if ctx.needs_input_grad[0]:
            gx = dX.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gy = dY.to(y.dtype)
    return gx, gy, None, None, None


_pairwise_op.register_autograd(_pairwise_backward, setup_context=_distance_setup_context)


def _distance(manifold, x, c, curvature, on_domain_error):
    check_points(x=x, c=c)
    return _distance_op(x, c, manifold, float(curvature), str(on_domain_error))


def euclidean_distance(x, c):
    """``mhc_array.euclidean_distance`` for torch tensors, differentiable w.r.t. ``x``
    and ``c`` (``c`` broadcastable, e.g. ``(d,)``; its gradient is summed over the
    broadcast axes). ``dd/dx = (x - c)/d``; at ``x = c`` (``d = 0``) the gradient is
    0, the minimal-norm subgradient (never NaN).

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    >>> d = mt.euclidean_distance(x, torch.zeros(2))
    >>> d.sum().backward()
    >>> d.tolist(), [[round(v, 4) for v in row] for row in x.grad.tolist()]
    ([5.0, 0.0], [[0.6, 0.8], [0.0, 0.0]])
    """
    validated(EUCLIDEAN, (1.0, "raise"))
    return _distance("euclidean", x, c, 1.0, "raise")


def poincare_distance(x, c, *, curvature=1.0, on_domain_error="raise"):
    """``mhc_array.poincare_distance`` for torch tensors, differentiable w.r.t. ``x``
    and ``c`` (``c`` broadcastable; its gradient is summed over the broadcast axes).

    The backward is the analytic gradient of ``arccosh(1 + z)/sqrt(K)``,
    ``z = 2K|x-c|^2/((1-K|x|^2)(1-K|c|^2))``, evaluated in float64 for float32 input
    and returned in the input dtype. At ``x = c`` the gradient is 0 (the minimal-norm
    subgradient, never NaN). With ``on_domain_error="nan"`` points outside the ball get
    NaN gradients; with ``"clip"`` the gradient flows through the projection onto the
    ball (its tangential part, for the points that were clipped).

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.tensor([[0.5, 0.0]], requires_grad=True)
    >>> d = mt.poincare_distance(x, torch.zeros(2))       # 2 artanh(0.5)
    >>> d.sum().backward()
    >>> round(d.item(), 4), [round(v, 4) for v in x.grad[0].tolist()]   # 2/(1-0.25)
    (1.0986, [2.6667, 0.0])
    """
    opts = validated(POINCARE, (curvature, on_domain_error))  # errors name the option
    return _distance("poincare", x, c, opts["curvature"], opts["on_domain_error"])


def spherical_distance(x, c, *, on_domain_error="raise"):
    """``mhc_array.spherical_distance`` (the angle) for torch tensors, differentiable
    w.r.t. ``x`` and ``c`` (``c`` broadcastable; its gradient is summed over the
    broadcast axes): ``dθ/dx = -(v - cos θ u)/(|x| sin θ)`` with ``u = x/|x|``,
    ``v = c/|c|``. At ``θ = 0`` and ``θ = π`` (``x`` and ``c`` parallel) the gradient
    is 0, the minimal-norm subgradient (never NaN); a zero vector gives NaN.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.tensor([[0.0, 1.0]], requires_grad=True)
    >>> d = mt.spherical_distance(x, torch.tensor([1.0, 0.0]))
    >>> d.sum().backward()
    >>> round(d.item(), 4), x.grad.tolist()
    (1.5708, [[-1.0, -0.0]])
    """
    opts = validated(SPHERICAL, (1.0, on_domain_error))
    return _distance("spherical", x, c, 1.0, opts["on_domain_error"])


def geometric_distance(x, c, *, manifold="euclidean", curvature=1.0, on_domain_error="raise"):
    """``mhc_array.geometric_distance`` for torch tensors: the distance on ``manifold``,
    differentiable as ``euclidean_distance`` / ``poincare_distance`` /
    ``spherical_distance`` (0 gradient at coincident or parallel points).

    >>> import torch, mhc_array.torch as mt
    >>> d = mt.geometric_distance(torch.tensor([[0.0, 0.5]]), torch.zeros(2), manifold="poincare")
    >>> round(d.item(), 4)
    1.0986
    """
    opts = validated(GEOMETRIC, (manifold, curvature, on_domain_error))
    return _distance(opts["manifold"], x, c, opts["curvature"],
                     opts["on_domain_error"])


def pairwise_distance(x, y, *, manifold="euclidean", curvature=1.0, on_domain_error="raise"):
    """``mhc_array.pairwise_distance`` for torch tensors: ``(N, M)`` distances between
    the rows of ``x (N, d)`` and ``y (M, d)``, differentiable w.r.t. both. The backward
    applies the per-pair gradients of the row-wise distances (0 at coincident or, on
    the sphere, parallel points) in blocks of rows, summed over the other argument.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.eye(2, requires_grad=True)
    >>> D = mt.pairwise_distance(x, torch.zeros(1, 2))
    >>> D.sum().backward()
    >>> D.tolist(), x.grad.tolist()
    ([[1.0], [1.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    opts = validated(PAIRWISE, (manifold, curvature, on_domain_error))
    check_points(x=x, y=y)
    return _pairwise_op(x, y, opts["manifold"], float(opts["curvature"]),
                        str(opts["on_domain_error"]))
