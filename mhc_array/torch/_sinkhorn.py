"""``mhc_array.torch.sinkhorn_knopp``: the ops ``mhc_array::sinkhorn_knopp`` and
``mhc_array::sinkhorn_knopp_backward`` (the non-public record ``SINKHORN_BACKWARD``:
the exact gradient of the unrolled iterations)."""

from typing import Optional

import torch

from .._api import SINKHORN, SINKHORN_BACKWARD
from .._options import validated
from ._common import fresh, plain

Tensor = torch.Tensor


@torch.library.custom_op("mhc_array::sinkhorn_knopp", mutates_args=())
def _sinkhorn_op(x: Tensor, row_sums: Optional[Tensor], col_sums: Optional[Tensor],
                 iterations: int, tau: float, logits: bool, order: str) -> Tensor:
    res = SINKHORN((plain(x), plain(row_sums), plain(col_sums)),
                   (iterations, tau, logits, order))
    return fresh(res, x)


@_sinkhorn_op.register_fake
def _(x, row_sums, col_sums, iterations, tau, logits, order):
    return x.new_empty(x.shape)


@torch.library.custom_op("mhc_array::sinkhorn_knopp_backward", mutates_args=())
def _sinkhorn_backward_op(grad: Tensor, x: Tensor, row_sums: Optional[Tensor],
                          col_sums: Optional[Tensor], iterations: int, tau: float, logits: bool,
                          order: str) -> Tensor:
    res = SINKHORN_BACKWARD((plain(x), plain(row_sums), plain(col_sums), plain(grad)),
                            (iterations, tau, logits, order))
    return fresh(res, x, grad)


@_sinkhorn_backward_op.register_fake
def _(grad, x, row_sums, col_sums, iterations, tau, logits, order):
    return x.new_empty(x.shape)


def _sinkhorn_setup_context(ctx, inputs, output):
    x, row_sums, col_sums, iterations, tau, logits, order = inputs
    ctx.save_for_backward(x, row_sums, col_sums)
    ctx.options = (iterations, tau, logits, order)


def _sinkhorn_backward(ctx, grad):
    x, row_sums, col_sums = ctx.saved_tensors
    gx = None
    if ctx.needs_input_grad[0]:
        gx = _sinkhorn_backward_op(grad, x, row_sums, col_sums, *ctx.options)
    return gx, None, None, None, None, None, None


_sinkhorn_op.register_autograd(_sinkhorn_backward, setup_context=_sinkhorn_setup_context)


def sinkhorn_knopp(x, *, iterations=20, tau=0.0, logits=False, order="rows-first",
                   row_sums=None, col_sums=None):
    """``mhc_array.sinkhorn_knopp`` for torch tensors, differentiable w.r.t. ``x``
    (the exact gradient of the unrolled iterations; the backward recomputes the
    forward). The targets ``row_sums`` / ``col_sums`` (optional tensors) are held
    fixed: no gradient flows to them. Returns a new tensor of x's shape and dtype.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.zeros(2, 3, 3, requires_grad=True)
    >>> P = mt.sinkhorn_knopp(x, logits=True)       # uniform logits: every entry 1/3
    >>> round(P[0, 0, 0].item(), 4)
    0.3333
    >>> P[:, 0, 0].sum().backward()
    >>> [round(v, 4) for v in x.grad[0, 0].tolist()]
    [0.1481, -0.0741, -0.0741]
    """
    opts = validated(SINKHORN, (iterations, tau, logits, order))  # errors name the option
    iterations, tau, logits, order = (opts[k] for k in ("iterations", "tau", "logits", "order"))
    for name, t in (("x", x), ("row_sums", row_sums), ("col_sums", col_sums)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    return _sinkhorn_op(x, row_sums, col_sums, int(iterations), float(tau), bool(logits),
                        str(order))
