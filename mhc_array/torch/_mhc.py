"""The mHC connection for PyTorch (SPEC 2.3, 2.7): differentiable ``mhc_pre`` /
``mhc_post`` (both variants), the ops ``mhc_array::mhc_pre`` / ``mhc_post`` and
their backwards; the ``nn.Module``s built on them are in ``_modules``.

Forward: the library's records (the native fused kernels for CPU tensors).
Backward (per token ``t``, ``v = x_t`` flattened to ``P = n*C`` values, ``W`` the
projection as ``(P, K)``: ``phi`` or ``fn^T``, ``K = (2+n)*n``)::

    r = rsqrt(mean(v^2) + norm_eps),  p = v @ W,  y = r * p,  z = a_group * y + b
    g_hpre += x_t @ g_hin                          (h_in = sum_i h_pre[i] x_t[i])
    g_z: sigmoid'(z) for pre and post; for h_res the Sinkhorn backward
         (the native kernel, exact gradient of the unrolled iterations)
    g_alpha[group] = sum_t g_z * y,  g_bias = sum_t g_z,  g_y = g_z * a_group
    g_p = r * g_y,  g_r = g_y . p
    g_v = g_p @ W^T - (g_r r^3 / P) v + h_pre (x) g_hin,   g_W = sum_t v^T g_p

Everything but the last sum runs in one call of the non-public record
``MHC_PRE_BACKWARD`` (op ``mhc_array::mhc_pre_backward``): on the native backend
a fused C kernel per block of tokens (the projection recomputed, the Sinkhorn part
by the Sinkhorn backward kernel -- for V4 as the composition it is, ``comb =
SK_rows-first(S1, iterations - 1, tau = hc_eps)`` after ``S = softmax(z) + hc_eps``
and V4's first column step ``S1``, both undone around it -- then ``g_x`` from
cache, and ``g_W = sum_t v^T g_p`` summed while each block of tokens is in cache);
elsewhere the same math in the array's own namespace. It returns ``g_x``, per
token ``g_z``, ``y`` and ``g_p``, and ``g_W`` as ``(K, P)`` rows; the bias and
alpha gradients are sums. ``mhc_post``'s backward is
one call of ``MHC_POST_BACKWARD`` (op ``mhc_array::mhc_post_backward``; natively
one pass over the streams and the upstream gradient), its per-token results summed
over the axes along which ``f_out``, ``h_post`` or ``h_res`` were broadcast.
"""

from typing import Optional

import torch

from .._mhc import (HC_EPS, MHC_POST, MHC_POST_BACKWARD, MHC_POST_PRE, MHC_PRE, MHC_PRE_BACKWARD,
                    NORM_EPS)
from .._options import validated
from ._common import check_points, fresh, fresh_all, plain, reduce_to

Tensor = torch.Tensor


def _coeff_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- mhc_pre

def _mhc_pre_impl(x: Tensor, phi: Tensor, bias: Tensor, alpha: Tensor, iterations: int,
                norm_eps: float, variant: str, hc_eps: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    res = MHC_PRE((plain(x), plain(phi), plain(bias), plain(alpha)),
                  (iterations, norm_eps, variant, hc_eps))
    return fresh_all(res, (x, phi, bias, alpha))


_mhc_pre_op = torch.library.custom_op("mhc_array::mhc_pre", mutates_args=())(_mhc_pre_impl)


@_mhc_pre_op.register_fake
def _(x, phi, bias, alpha, iterations, norm_eps, variant, hc_eps):
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    cdt = _coeff_dtype(x)
    return (x.new_empty(batch + (C,)), x.new_empty(batch + (n,), dtype=cdt),
            x.new_empty(batch + (n,), dtype=cdt), x.new_empty(batch + (n, n), dtype=cdt))


def _mhc_pre_setup(ctx, inputs, output):
    x, phi, bias, alpha, iterations, norm_eps, variant, hc_eps = inputs
    ctx.save_for_backward(x, phi, bias, alpha)
    ctx.options = (iterations, norm_eps, variant, hc_eps)


@torch.library.custom_op("mhc_array::mhc_pre_backward", mutates_args=())
def _mhc_pre_backward_op(x: Tensor, phi: Tensor, bias: Tensor, alpha: Tensor,
                         g_in: Optional[Tensor], g_pre: Optional[Tensor],
                         g_post: Optional[Tensor], g_res: Optional[Tensor], iterations: int,
                         norm_eps: float, variant: str, hc_eps: float
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    res = MHC_PRE_BACKWARD(tuple(plain(t) for t in (x, phi, bias, alpha, g_in, g_pre, g_post,
                                                     g_res)),
                           (iterations, norm_eps, variant, hc_eps))
    return fresh_all(res, (x, g_in))


@_mhc_pre_backward_op.register_fake
def _(x, phi, bias, alpha, g_in, g_pre, g_post, g_res, iterations, norm_eps, variant, hc_eps):
    n = x.shape[-2]
    shape = tuple(x.shape[:-2]) + ((2 + n) * n,)
    cdt = _coeff_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(shape, dtype=cdt), x.new_empty(shape, dtype=cdt),
            x.new_empty(shape, dtype=cdt), x.new_empty(((2 + n) * n, n * x.shape[-1]),
                                                       dtype=cdt))


def _mhc_pre_backward(ctx, g_hin, g_hpre, g_hpost, g_hres):
    return _pre_grads(*ctx.saved_tensors, ctx.options, (g_hin, g_hpre, g_hpost, g_hres),
                      ctx.needs_input_grad) + (None, None, None, None)


def _pre_grads(x, phi, bias, alpha, options, grads, need):
    """The gradients of mhc_pre w.r.t. (x, phi, bias, alpha) (``need``: which) for the
    upstream gradients ``grads`` of its four outputs (None: zero)."""
    g_hin, g_hpre, g_hpost, g_hres = grads
    iterations, norm_eps, variant, hc_eps = options
    n, C = x.shape[-2], x.shape[-1]
    K = (2 + n) * n
    g_x, gz, y, _, gw = _mhc_pre_backward_op(x, phi, bias, alpha, g_hin, g_hpre, g_hpost,
                                             g_hres, iterations, norm_eps, variant, hc_eps)
    gz, y = gz.reshape(-1, K), y.reshape(-1, K)
    gphi = None
    if need[1]:    # gw: (K, n*C), fn's layout; phi's transposed
        gphi = (gw.t() if variant == "paper" else gw).to(phi.dtype)
    gzy = gz * y
    g_alpha = torch.stack([gzy[:, :n].sum(), gzy[:, n:2 * n].sum(), gzy[:, 2 * n:].sum()])
    return (g_x if need[0] else None, gphi, gz.sum(0).to(bias.dtype), g_alpha.to(alpha.dtype))


_mhc_pre_op.register_autograd(_mhc_pre_backward, setup_context=_mhc_pre_setup)


# ---------------------------------------------------------------- mhc_post

def _mhc_post_impl(x: Tensor, f_out: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    res = MHC_POST((plain(x), plain(f_out), plain(h_post), plain(h_res)))
    return fresh(res, x, f_out, h_post, h_res)


_mhc_post_op = torch.library.custom_op("mhc_array::mhc_post", mutates_args=())(_mhc_post_impl)


@_mhc_post_op.register_fake
def _(x, f_out, h_post, h_res):
    return x.new_empty(x.shape)


def _mhc_post_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@torch.library.custom_op("mhc_array::mhc_post_backward", mutates_args=())
def _mhc_post_backward_op(x: Tensor, f_out: Tensor, h_post: Tensor, h_res: Tensor,
                          grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    res = MHC_POST_BACKWARD(tuple(plain(t) for t in (x, f_out, h_post, h_res, grad)))
    return fresh_all(res, (x, f_out, h_post, h_res, grad))


@_mhc_post_backward_op.register_fake
def _(x, f_out, h_post, h_res, grad):
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    cdt = _coeff_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(batch + (C,), dtype=cdt),
            x.new_empty(batch + (n,), dtype=cdt), x.new_empty(batch + (n, n), dtype=cdt))


def _mhc_post_backward(ctx, g):
    return _post_grads(*ctx.saved_tensors, g, ctx.needs_input_grad)


def _post_grads(x, f_out, h_post, h_res, g, need):
    """The gradients of mhc_post w.r.t. its four inputs for the upstream ``g``."""
    gx, gf, ghp, ghr = _mhc_post_backward_op(x, f_out, h_post, h_res, g)
    return (gx if need[0] else None, reduce_to(gf, f_out) if need[1] else None,
            reduce_to(ghp, h_post) if need[2] else None,
            reduce_to(ghr, h_res) if need[3] else None)


_mhc_post_op.register_autograd(_mhc_post_backward, setup_context=_mhc_post_setup)


# ---------------------------------------------------------------- mhc_post_pre

def _mhc_post_pre_impl(x: Tensor, f_out: Tensor, h_post: Tensor, h_res: Tensor, phi: Tensor,
                     bias: Tensor, alpha: Tensor, iterations: int, norm_eps: float,
                     variant: str, hc_eps: float
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ins = (x, f_out, h_post, h_res, phi, bias, alpha)
    res = MHC_POST_PRE(tuple(plain(t) for t in ins), (iterations, norm_eps, variant, hc_eps))
    return fresh_all(res, ins)


_mhc_post_pre_op = torch.library.custom_op("mhc_array::mhc_post_pre",
                                           mutates_args=())(_mhc_post_pre_impl)


@_mhc_post_pre_op.register_fake
def _(x, f_out, h_post, h_res, phi, bias, alpha, iterations, norm_eps, variant, hc_eps):
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    cdt = _coeff_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(batch + (C,)),
            x.new_empty(batch + (n,), dtype=cdt), x.new_empty(batch + (n,), dtype=cdt),
            x.new_empty(batch + (n, n), dtype=cdt))


def _mhc_post_pre_setup(ctx, inputs, output):
    *tensors, iterations, norm_eps, variant, hc_eps = inputs
    ctx.save_for_backward(*tensors, output[0])
    ctx.options = (iterations, norm_eps, variant, hc_eps)


def _mhc_post_pre_backward(ctx, g_next, g_hin, g_hpre, g_hpost, g_hres):
    """The pre step's gradients at x_next (recomputed from the saved x_next), added
    to x_next's own, then the post step's: every input gets its gradient."""
    x, f_out, h_post, h_res, phi, bias, alpha, x_next = ctx.saved_tensors
    need = ctx.needs_input_grad
    g_xn, g_phi, g_bias, g_alpha = _pre_grads(x_next, phi, bias, alpha, ctx.options,
                                              (g_hin, g_hpre, g_hpost, g_hres),
                                              (True, need[4], need[5], need[6]))
    g = g_xn if g_next is None else g_xn + g_next
    post = _post_grads(x, f_out, h_post, h_res, g, need[:4])
    return (*post, g_phi if need[4] else None, g_bias if need[5] else None,
            g_alpha if need[6] else None, None, None, None, None)


_mhc_post_pre_op.register_autograd(_mhc_post_pre_backward, setup_context=_mhc_post_pre_setup)


# ---------------------------------------------------------------- functions

def _inference(*tensors):
    """Eager and no gradient to record (``no_grad``, or no input requires one): the
    op's own implementation is called directly, without the dispatcher and autograd
    wrapper of the custom op (tens of microseconds a call at decode); under
    ``torch.compile`` the op is always called, so that it stays in the graph."""
    if torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _planned(record, arrays, options):
    """The decode path: an eager call without gradients served by the record's cached
    plan (``_pipeline.Op.planned``; for CPU tensors the native torch plan, which
    checks the arrays' types, dtypes, shapes, layouts and device itself and allocates
    fresh results), or None -- the caller then takes its usual path, whose checks
    raise the errors. The options are validated by the record (remembered while the
    same objects are passed, as a module's attributes and the defaults are)."""
    if not isinstance(arrays[0], torch.Tensor) or torch.compiler.is_compiling():
        return None   # (NumPy arrays would find the NumPy plans: the usual path refuses them)
    if torch.is_grad_enabled():
        try:
            if any(t.requires_grad for t in arrays):
                return None
        except AttributeError:   # not a tensor: the usual path names it
            return None
    return record.planned(arrays, options)


def mhc_pre(x, phi, bias, alpha, *, iterations=20, norm_eps=NORM_EPS, variant="paper",
            hc_eps=HC_EPS):
    """``mhc_array.mhc_pre`` for torch tensors, differentiable w.r.t. ``x`` and the
    three parameters (``phi, bias, alpha``, or V4's ``fn, base, scale``). Returns
    ``(h_in, h_pre, h_post, h_res)`` (coefficients in float32, float64 for float64
    ``x``); the backward runs the Sinkhorn part in the native backward kernel.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.randn(8, 4, 16, requires_grad=True)        # 8 tokens, n = 4, C = 16
    >>> phi = torch.randn(64, 24) * 0.1
    >>> bias, alpha = torch.zeros(24), torch.full((3,), 0.5)
    >>> h_in, h_pre, h_post, h_res = mt.mhc_pre(x, phi, bias, alpha)
    >>> h_in.shape, h_res.shape
    (torch.Size([8, 16]), torch.Size([8, 4, 4]))
    >>> h_in.sum().backward()
    >>> x.grad.shape
    torch.Size([8, 4, 16])
    """
    res = _planned(MHC_PRE, (x, phi, bias, alpha), (iterations, norm_eps, variant, hc_eps))
    if res is not None:
        return res
    opts = validated(MHC_PRE, (iterations, norm_eps, variant, hc_eps))
    names = ("x", "phi", "bias", "alpha") if opts["variant"] == "paper" else \
        ("x", "fn", "base", "scale")
    check_points(**dict(zip(names, (x, phi, bias, alpha))))
    args = (x, phi, bias, alpha, int(opts["iterations"]), float(opts["norm_eps"]),
            str(opts["variant"]), float(opts["hc_eps"]))
    if _inference(x, phi, bias, alpha):
        return _mhc_pre_impl(*args)
    return _mhc_pre_op(*args)


def mhc_post(x, f_out, h_post, h_res):
    """``mhc_array.mhc_post`` for torch tensors, differentiable w.r.t. all four:
    ``x_next[i] = sum_j h_res[i, j] x[j] + h_post[i] f_out`` in ``x``'s dtype.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.randn(8, 4, 16)
    >>> f = torch.randn(8, 16, requires_grad=True)
    >>> out = mt.mhc_post(x, f, torch.ones(8, 4), torch.eye(4).expand(8, 4, 4))
    >>> bool(torch.allclose(out, x + f.unsqueeze(-2)))
    True
    """
    res = _planned(MHC_POST, (x, f_out, h_post, h_res), ())
    if res is not None:
        return res
    check_points(x=x, f_out=f_out, h_post=h_post, h_res=h_res)
    if _inference(x, f_out, h_post, h_res):
        return _mhc_post_impl(x, f_out, h_post, h_res)
    return _mhc_post_op(x, f_out, h_post, h_res)


def mhc_post_pre(x, f_out, h_post, h_res, phi, bias, alpha, *, iterations=20,
                 norm_eps=NORM_EPS, variant="paper", hc_eps=HC_EPS):
    """``mhc_array.mhc_post_pre`` for torch tensors (the layer boundary: the post
    step of one connection and the pre step of the next in one pass), differentiable
    w.r.t. every input. Returns ``(x_next, h_in, h_pre, h_post, h_res)``. The
    backward recomputes the pre step's coefficients from the saved ``x_next`` and
    runs both backward kernels.

    >>> import torch, mhc_array.torch as mt
    >>> a, b = mt.MHCConnection(4, 16, seed=0), mt.MHCConnection(4, 16, seed=1)
    >>> x = torch.randn(8, 4, 16, requires_grad=True)
    >>> h_in, _, h_post, h_res = a.pre(x)
    >>> x_next, h_in2, *_ = b.post_pre(x, torch.tanh(h_in), h_post, h_res)
    >>> h_in2.sum().backward()
    >>> x.grad.shape, b.phi.grad.shape
    (torch.Size([8, 4, 16]), torch.Size([64, 24]))
    """
    res = _planned(MHC_POST_PRE, (x, f_out, h_post, h_res, phi, bias, alpha),
                   (iterations, norm_eps, variant, hc_eps))
    if res is not None:
        return res
    opts = validated(MHC_POST_PRE, (iterations, norm_eps, variant, hc_eps))
    params = ("phi", "bias", "alpha") if opts["variant"] == "paper" else ("fn", "base", "scale")
    check_points(**dict(zip(("x", "f_out", "h_post", "h_res") + params,
                            (x, f_out, h_post, h_res, phi, bias, alpha))))
    args = (x, f_out, h_post, h_res, phi, bias, alpha, int(opts["iterations"]),
            float(opts["norm_eps"]), str(opts["variant"]), float(opts["hc_eps"]))
    if _inference(*args[:7]):
        return _mhc_post_pre_impl(*args)
    return _mhc_post_pre_op(*args)
