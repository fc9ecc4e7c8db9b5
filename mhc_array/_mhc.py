"""The mHC connection (SPEC 2.3): ``mhc_pre``, ``mhc_post`` and ``MHCLayer``.

The residual stream is widened to ``n`` streams, ``x (..., n, C)``. ``mhc_pre``
turns the streams into the input of the block F (``h_in``) and the three
coefficient sets; ``mhc_post`` mixes the streams with ``h_res`` and adds the
block's output weighted by ``h_post``. Coefficients are computed in float32
(float64 for float64 activations) whatever the activation dtype; ``h_in`` and
the next streams come back in the activations' dtype.

Two variants: ``"paper"`` (arXiv 2512.24880, Eq. 14-19: norm after the
matmul, parameters ``phi (n*C, 2n + n*n)``, ``bias``, ``alpha (3,)``) and
``"deepseek-v4"`` (DeepSeek-V4 as in HuggingFace transformers'
``DeepseekV4HyperConnection``: parameters ``fn ((2+n)*n, n*C)``, ``base``,
``scale (3,)``, softmax start, ``hc_eps`` in every Sinkhorn denominator, comb
applied transposed; ``mhc_pre`` returns ``h_res = comb^T`` so that ``mhc_post``
serves both).
"""

import math
import operator

import numpy as np

from . import _dispatch
from ._dispatch import broadcast_batch, common_namespace, device_of
from . import _options
from ._pipeline import Arg, Op
from .errors import ShapeError

__all__ = ["mhc_pre", "mhc_post", "mhc_post_pre", "MHCLayer"]

VARIANTS = ("paper", "deepseek-v4")
NORM_EPS = HC_EPS = 1e-6  # the defaults (DeepSeek-V4's rms_norm_eps and hc_eps)
_STREAMS = Arg("x", ("n", "C"))
_variant = _options.choice(*VARIANTS)


def _streams(x, name="x"):
    """(n, C) of ``x (..., n, C)``: n >= 1 streams of C >= 1 values."""
    if x.ndim < 2:
        raise ShapeError(f"{name} must have shape (..., n, C) with at least 2 dimensions "
                         f"(n streams of C values); got shape {tuple(x.shape)}")
    n, C = x.shape[-2], x.shape[-1]
    if n < 1 or C < 1:
        raise ShapeError(f"{name} must have n >= 1 streams of C >= 1 values; got shape "
                         f"{tuple(x.shape)}")
    return n, C


def _param_names(options):
    if options["variant"] == "paper":
        return ("x", "phi", "bias", "alpha")
    return ("x", "fn", "base", "scale")


def _pre_shapes(xp, call, names, arrays, opts, cdt):
    """The parameters' shapes follow from n, C and the variant."""
    n, C = _streams(arrays[0])
    k = (2 + n) * n
    shapes = ((n * C, k), (k,), (3,)) if opts["variant"] == "paper" else ((k, n * C), (k,), (3,))
    for name, a, shape in zip(names[1:], arrays[1:], shapes):
        if tuple(a.shape) != shape:
            raise ShapeError(f"{name} must have shape {shape}; got shape {tuple(a.shape)}")
    return arrays, {}


def _post_shapes(xp, call, names, arrays, opts, cdt):
    """``f_out (..., C)``, ``h_post (..., n)``, ``h_res (..., n, n)`` with batch shapes
    that broadcast to the batch of ``x``."""
    x, f_out, h_post, h_res = arrays
    n, C = _streams(x)
    if f_out.ndim < 1 or f_out.shape[-1] != C:
        raise ShapeError(f"f_out must have shape (..., {C}) (the C of x); got shape "
                         f"{tuple(f_out.shape)}")
    if h_post.ndim < 1 or h_post.shape[-1] != n:
        raise ShapeError(f"h_post must have shape (..., {n}) (the n of x); got shape "
                         f"{tuple(h_post.shape)}")
    if h_res.ndim < 2 or tuple(h_res.shape[-2:]) != (n, n):
        raise ShapeError(f"h_res must have shape (..., {n}, {n}) (the n of x); got shape "
                         f"{tuple(h_res.shape)}")
    batch = tuple(x.shape[:-2])
    for name, a, k in (("f_out", f_out, 1), ("h_post", h_post, 1), ("h_res", h_res, 2)):
        if broadcast_batch(tuple(a.shape[:-k]), batch, name, "x") != batch:
            raise ShapeError(f"{name} with shape {tuple(a.shape)} does not broadcast to the "
                             f"batch {batch} of x")
    return arrays, {}


MHC_PRE = Op("mhc_pre", kernel="mhc_pre",
             arrays=(_STREAMS, Arg("phi", ("p", "q"), checked=False),
                     Arg("bias", ("k",), checked=False), Arg("alpha", ("t",), checked=False)),
             results=(("C",), ("n",), ("n",), ("n", "n")),
             options=(("iterations", _options.iterations), ("norm_eps", _options.nonnegative),
                      ("variant", _variant), ("hc_eps", _options.nonnegative)),
             names=_param_names, dtype="coefficients", shapes=_pre_shapes, restore=(0,),
             plan_arrays=1)


def _pre_backward_names(options):
    return _param_names(options) + ("g_in", "g_pre", "g_post", "g_res")


def _pre_backward_shapes(xp, call, names, arrays, opts, cdt):
    """The forward's checks, and the upstream gradients of the outputs' shapes."""
    x = arrays[0]
    _pre_shapes(xp, call, names[:4], arrays[:4], opts, cdt)
    n, C = _streams(x)
    batch = tuple(x.shape[:-2])
    for name, g, inner in zip(names[4:], arrays[4:], ((C,), (n,), (n,), (n, n))):
        if g is not None and tuple(g.shape) != batch + inner:
            raise ShapeError(f"{name} must have shape {batch + inner}; got shape "
                             f"{tuple(g.shape)}")
    return arrays, {}


# The gradients of mhc_pre (not public: mhc_array.torch's autograd calls it):
# (g_x, gz, y, gp, gw) -- the streams' gradient, per token the gradient of the
# pre-activations z = a*y + b, the normalised projection y and the gradient of
# the raw projection p = v . phi, from which the caller sums the bias' and alpha's
# gradients (bias: sum gz; alpha: sum gz*y per group), and the projection's
# gradient gw = sum_t gp_t^T v_t as (K, n*C) rows (phi's gradient transposed).
MHC_PRE_BACKWARD = Op(
    "mhc_pre_backward", kernel="mhc_pre_backward",
    arrays=(*MHC_PRE.arrays, Arg("g_in", ("C",), optional=True, checked=False),
            Arg("g_pre", ("n",), optional=True, checked=False),
            Arg("g_post", ("n",), optional=True, checked=False),
            Arg("g_res", ("n", "n"), optional=True, checked=False)),
    options=MHC_PRE.options, names=_pre_backward_names, dtype="coefficients",
    shapes=_pre_backward_shapes, restore=(0,), backends=("native", "array_api", "cupy"))
_POST_ARRAYS = (_STREAMS, Arg("f_out", ("C",), checked=False),
                Arg("h_post", ("n",), checked=False), Arg("h_res", ("n", "n"), checked=False))
MHC_POST = Op("mhc_post", kernel="mhc_post",
              arrays=_POST_ARRAYS, results=(("n", "C"),),
              dtype="coefficients", shapes=_post_shapes, out=True, plan_arrays=1)



def _post_backward_shapes(xp, call, names, arrays, opts, cdt):
    """The forward's checks, and ``grad`` of x's shape."""
    _post_shapes(xp, call, names[:4], arrays[:4], opts, cdt)
    x, grad = arrays[0], arrays[4]
    if tuple(grad.shape) != tuple(x.shape):
        raise ShapeError(f"grad must have the shape of x {tuple(x.shape)}; got shape "
                         f"{tuple(grad.shape)}")
    return arrays, {}


# The gradients of mhc_post (not public: mhc_array.torch's autograd calls it):
# (g_x, g_f, g_post, g_res), the last three per token of x's batch (the caller
# sums them over the axes along which it broadcast f_out, h_post, h_res).
MHC_POST_BACKWARD = Op(
    "mhc_post_backward", kernel="mhc_post_backward",
    arrays=(*_POST_ARRAYS, Arg("grad", ("n", "C"), checked=False)),
    dtype="coefficients", shapes=_post_backward_shapes, restore=(0,),
    backends=("native", "array_api", "cupy"))

def _post_pre_names(options):
    return ("x", "f_out", "h_post", "h_res") + _param_names(options)[1:]


def _post_pre_shapes(xp, call, names, arrays, opts, cdt):
    """The post step's shapes, then the pre step's parameters for x's n and C."""
    _post_shapes(xp, call, names[:4], arrays[:4], opts, cdt)
    _pre_shapes(xp, call, (names[0],) + names[4:], (arrays[0],) + tuple(arrays[4:]), opts, cdt)
    return arrays, {}


MHC_POST_PRE = Op("mhc_post_pre", kernel="mhc_post_pre",
                  arrays=(*_POST_ARRAYS, *MHC_PRE.arrays[1:]),
                  results=(("n", "C"), ("C",), ("n",), ("n",), ("n", "n")),
                  options=MHC_PRE.options, names=_post_pre_names, dtype="coefficients",
                  shapes=_post_pre_shapes, restore=(0, 1), out=True,
                  backends=("native", "array_api", "cupy"), plan_arrays=1)


def mhc_pre(x, phi, bias, alpha, /, *, iterations=20, norm_eps=NORM_EPS, variant="paper",
            hc_eps=HC_EPS):
    """The coefficients of one mHC connection and the input of its block.

    Parameters
    ----------
    x : array (..., n, C)
        The n residual streams of each token (leading axes: batch, sequence).
    phi, bias, alpha : arrays
        ``variant="paper"``: ``phi (n*C, 2n + n*n)`` = ``[phi_pre | phi_post |
        phi_res]`` (column ``2n + i*n + j`` -> ``H_res[i, j]``), ``bias (2n + n*n,)``
        in the same order, ``alpha (3,)`` = ``(a_pre, a_post, a_res)``.
        ``variant="deepseek-v4"``: DeepSeek-V4's ``fn ((2+n)*n, n*C)``, ``base
        ((2+n)*n,)`` and ``scale (3,)`` (e.g. a checkpoint's ``hc_attn_fn``,
        ``hc_attn_base``, ``hc_attn_scale``).
    iterations : int
        Sinkhorn iterations for ``h_res`` (V4: ``hc_sinkhorn_iters``).
    norm_eps : float
        Epsilon of the RMS norm of the flattened streams (V4: ``rms_norm_eps``).
    variant : "paper" or "deepseek-v4"
    hc_eps : float
        V4's ``hc_eps`` (added to ``pre`` and to every Sinkhorn denominator);
        ignored by the paper's variant.

    Returns
    -------
    h_in : (..., C), the activations' dtype -- ``sum_i h_pre[i] * x[i]``, the input of F
    h_pre, h_post : (..., n), h_res : (..., n, n) -- coefficients, float32 (float64
        for float64 activations). ``h_res`` is doubly stochastic up to the
        iteration's exactness and acts on the raw (not normalised) streams.

    Examples
    --------
    >>> layer = mx.MHCLayer(4, 8, seed=0)          # the paper's parameters, near identity
    >>> x = np.ones((3, 4, 8), np.float32)         # 3 tokens, n = 4 streams, C = 8
    >>> h_in, h_pre, h_post, h_res = mx.mhc_pre(x, layer.phi, layer.bias, layer.alpha)
    >>> h_in.shape, h_pre.shape, h_post.shape, h_res.shape
    ((3, 8), (3, 4), (3, 4), (3, 4, 4))
    >>> h_pre[0].round(3)                          # the streams averaged
    array([0.25, 0.25, 0.25, 0.25], dtype=float32)
    >>> bool(np.allclose(h_res.sum(axis=-2), 1, atol=1e-5))
    True
    """
    return MHC_PRE((x, phi, bias, alpha), (iterations, norm_eps, variant, hc_eps))


def mhc_post(x, f_out, h_post, h_res, /, *, out=None):
    """The next residual streams: ``x_next[i] = sum_j h_res[i, j] * x[j] + h_post[i] * f_out``.

    ``x (..., n, C)``, ``f_out (..., C)`` (the block's output), ``h_post (..., n)``,
    ``h_res (..., n, n)`` as returned by ``mhc_pre`` (batch axes broadcast).
    Computed in the coefficient dtype, returned in ``x``'s dtype (or written to
    ``out``, which may be ``x`` itself).

    >>> x = np.arange(8.0).reshape(1, 2, 4)               # 1 token, 2 streams, C = 4
    >>> swap = np.array([[[0.0, 1.0], [1.0, 0.0]]])       # h_res exchanges the streams
    >>> mx.mhc_post(x, np.ones((1, 4)), np.array([[1.0, 0.0]]), swap)
    array([[[5., 6., 7., 8.],
            [0., 1., 2., 3.]]])
    """
    return MHC_POST((x, f_out, h_post, h_res), out=out)


def initial_parameters(n, C, variant, noise):
    """The paper's initialisation, close to the identity residual (see ``MHCLayer``),
    in float64: ``(phi, bias, alpha)`` in the layout of ``variant`` (V4: ``fn``,
    ``base``, ``scale``), ``phi`` from ``noise``, standard normal values of shape
    ``(n*C, (2+n)*n)`` (any generator's)."""
    noise = np.asarray(noise, np.float64) * (0.02 / math.sqrt(n * C))
    b_pre = -math.log(n - 1) if n > 1 else math.log(999.0)   # sigmoid -> 1/n (0.999)
    res = np.full((n, n), -8.0) + 8.0 * np.eye(n)             # h_res ~ identity
    alpha = np.full(3, 0.01)
    if variant == "paper":
        return noise, np.concatenate([np.full(n, b_pre), np.zeros(n), res.ravel()]), alpha
    return (np.ascontiguousarray(noise.T),                     # fn ((2+n)n, nC)
            np.concatenate([np.full(n, b_pre), np.zeros(n), res.T.ravel()]), alpha)


def mhc_post_pre(x, f_out, h_post, h_res, phi, bias, alpha, /, *, iterations=20,
                 norm_eps=NORM_EPS, variant="paper", hc_eps=HC_EPS, out=None):
    """A layer boundary: the post step of one connection and the pre step of the next
    -- ``mhc_post(x, f_out, h_post, h_res)`` then ``mhc_pre`` of the result with
    ``phi, bias, alpha`` -- in one pass: the native kernel writes each block of
    tokens' next streams once and projects them while they are in the cache (they
    are never read back from memory). Inference engines call this their fused
    post-pre.

    Returns ``(x_next, h_in, h_pre, h_post, h_res)``: ``x_next`` as ``mhc_post``
    returns it (into ``out`` when given, which may be ``x`` itself: the residual
    updated in place), the rest as ``mhc_pre`` returns them for ``x_next``. Options
    and dtypes as in ``mhc_pre``.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((3, 4, 8))                   # 3 tokens, n = 4, C = 8
    >>> a, b = mx.MHCLayer(4, 8, seed=0, dtype="float64"), mx.MHCLayer(4, 8, seed=1, dtype="float64")
    >>> h_in, _, h_post, h_res = a.pre(x)
    >>> f_out = np.tanh(h_in)                               # the block between the two
    >>> fused = mx.mhc_post_pre(x, f_out, h_post, h_res, b.phi, b.bias, b.alpha)
    >>> x_next = mx.mhc_post(x, f_out, h_post, h_res)        # the same, in two steps
    >>> all(np.allclose(u, v) for u, v in zip(fused, (x_next, *b.pre(x_next))))
    True
    """
    return MHC_POST_PRE((x, f_out, h_post, h_res, phi, bias, alpha),
                        (iterations, norm_eps, variant, hc_eps), out=out)


class MHCLayer:
    """One mHC connection with its own parameters (SPEC 2.3).

    ``MHCLayer(n_streams, dim, *, iterations=20, variant="paper", dtype="float32",
    seed=None)`` holds ``phi``, ``bias``, ``alpha`` (NumPy arrays, in the layout of
    ``variant``; V4's ``fn``, ``base``, ``scale`` for ``"deepseek-v4"``), initialised
    as the paper does: close to the identity residual. ``alpha`` is small (0.01),
    ``bias`` makes ``h_pre`` average the streams (``1/n`` each), ``h_post`` 1 and
    ``h_res`` nearly the identity (off-diagonal logits -8), and ``phi`` is small
    noise (std 0.02 / sqrt(n*C)). So at the start every stream gets
    ``x_i + F(mean_j x_j)``: the plain residual when the streams are equal (as
    after ``expand``).

    ``pre(x)`` -> ``(h_in, h_pre, h_post, h_res)``; ``post(x, f_out, h_post, h_res)``
    -> next streams; ``layer(x, fn)`` = ``post(x, fn(h_in), ...)``; ``expand(h)``
    copies ``h (..., C)`` into ``n`` streams and ``reduce(x)`` sums the ``n`` streams
    into one, for the model's first and last layer. Parameters are converted once
    to the library and device of each input and cached. On the native backend the
    layer owns a workspace in C (created on first use, reused by every call, freed
    when the layer is garbage-collected), so a warm forward allocates no scratch.

    >>> layer = mx.MHCLayer(4, 8, seed=0)
    >>> x = layer.expand(np.ones((2, 8), np.float32))     # (2, 4, 8): 4 copies
    >>> x = layer(x, np.tanh)                             # pre -> F(h_in) -> post
    >>> x.shape, layer.reduce(x).shape
    ((2, 4, 8), (2, 8))
    """

    def __init__(self, n_streams, dim, *, iterations=20, variant="paper", dtype="float32",
                 seed=None):
        for name, v in (("n_streams", n_streams), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be a positive int; got {type(v).__name__} {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.iterations = _options.iterations("iterations", iterations)
        self.variant = _variant("variant", variant)
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64 (the coefficient dtype); "
                            f"got {dtype!r}")
        self.n_streams, self.dim = n, C = n_streams, dim
        noise = np.random.default_rng(seed).standard_normal((n * C, (2 + n) * n))
        self.phi, self.bias, self.alpha = (
            a.astype(dt) for a in initial_parameters(n, C, self.variant, noise))
        self._converted = {}
        # the backends' persistent resources for this layer (the native backend keeps
        # its workspace here, the design notes' opaque layer handle: created on first
        # use, reused by every call, freed with the layer)
        self._state = {}

    @property
    def n(self):
        """The number of streams (``n_streams``, as ``MHCConnection`` names it)."""
        return self.n_streams

    def __repr__(self):
        return (f"MHCLayer(n_streams={self.n}, dim={self.dim}, iterations={self.iterations}, "
                f"variant={self.variant!r}, dtype={self.phi.dtype.name!r})")

    def _params(self, x):
        """phi, bias, alpha -- the current ones -- in the library and on the device of
        ``x``: NumPy's as they are; on the CPU, another library's views of them (no
        copy: a change in place is seen); on another device, copies cached per
        library and device and refreshed when a parameter was reassigned or changed
        in place (compared with a host snapshot: one read of the parameters)."""
        params = (self.phi, self.bias, self.alpha)
        if type(x) is np.ndarray:
            return params
        xp, lib = common_namespace((("x", x),))
        dev = device_of(x)
        on_cpu = _dispatch.device_type(x) == 1
        key = (type(x), str(dev))
        hit = self._converted.get(key)
        if (hit is not None and all(map(operator.is_, hit[0], params))
                and all(map(np.array_equal, hit[1], params))):
            return hit[2]
        conv = []
        for a in params:
            try:
                conv.append(xp.asarray(a, device=dev))
            except TypeError:  # a namespace without device=
                conv.append(xp.asarray(a))
        if not on_cpu:
            self._converted[key] = (params, tuple(np.array(a, copy=True) for a in params),
                                    tuple(conv))
        return tuple(conv)

    def pre(self, x, /):
        n, C = _streams(x)
        if (n, C) != (self.n, self.dim):
            raise ShapeError(f"x must have shape (..., {self.n}, {self.dim}) for this layer; "
                             f"got shape {tuple(x.shape)}")
        return MHC_PRE((x, *self._params(x)), (self.iterations, NORM_EPS, self.variant, HC_EPS),
                       state=self._state)

    def post(self, x, f_out, h_post, h_res, /, *, out=None):
        return mhc_post(x, f_out, h_post, h_res, out=out)

    def post_pre(self, x, f_out, h_post, h_res, /, *, out=None):
        """The previous connection's post step (its ``h_post``, ``h_res``) then this
        layer's ``pre``, fused: ``(x_next, h_in, h_pre, h_post, h_res)``."""
        n, C = _streams(x)
        if (n, C) != (self.n, self.dim):
            raise ShapeError(f"x must have shape (..., {self.n}, {self.dim}) for this layer; "
                             f"got shape {tuple(x.shape)}")
        return MHC_POST_PRE((x, f_out, h_post, h_res, *self._params(x)),
                            (self.iterations, NORM_EPS, self.variant, HC_EPS), out=out,
                            state=self._state)

    def __call__(self, x, fn, /):
        h_in, _, h_post, h_res = self.pre(x)
        return self.post(x, fn(h_in), h_post, h_res)

    def expand(self, h, /):
        """``h (..., C)`` -> ``(..., n, C)``: the stream copied ``n`` times."""
        xp, _ = common_namespace((("h", h),))
        if h.ndim < 1 or h.shape[-1] != self.dim:
            raise ShapeError(f"h must have shape (..., {self.dim}); got shape {tuple(h.shape)}")
        e = xp.expand_dims(h, axis=-2)
        if self.n == 1:
            return xp.astype(e, e.dtype, copy=True)
        return e * xp.ones((self.n, 1), dtype=h.dtype, device=device_of(h))

    def reduce(self, x, /):
        """``x (..., n, C)`` -> ``(..., C)``: the sum of the ``n`` streams."""
        xp, _ = common_namespace((("x", x),))
        n, C = _streams(x)
        if (n, C) != (self.n, self.dim):
            raise ShapeError(f"x must have shape (..., {self.n}, {self.dim}) for this layer; "
                             f"got shape {tuple(x.shape)}")
        return xp.sum(x, axis=-2)
