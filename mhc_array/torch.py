"""PyTorch integration (SPEC 2.7): differentiable functions for torch tensors,
registered as ``torch.library`` custom ops with fake kernels, so that they run
under ``torch.compile(fullgraph=True)`` without graph breaks.

Imported only when used (``import mhc_array`` does not import torch)::

    import mhc_array.torch as mt
    P = mt.sinkhorn_knopp(logits, logits=True)   # differentiable w.r.t. logits
    P.sum().backward()

The ops compute through the library's pipeline (``mhc_array``'s configuration
chooses the backend: ``native`` for CPU tensors, ``array_api`` elsewhere);
float16/bfloat16 are computed in float32 and returned in the input dtype.
Their results are fresh tensors (never an input or a view of one).

Ops: ``mhc_array::sinkhorn_knopp`` and its backward
``mhc_array::sinkhorn_knopp_backward``.
"""

from typing import Optional

import torch

from ._api import SINKHORN, SINKHORN_BACKWARD

__all__ = ["sinkhorn_knopp"]

Tensor = torch.Tensor


def _fresh(res, *inputs):
    """``res`` as a contiguous tensor that shares no memory with ``inputs``."""
    if not isinstance(res, torch.Tensor):
        res = torch.as_tensor(res)
    res = res.contiguous()
    ptr = res.untyped_storage().data_ptr()
    if any(t is not None and t.untyped_storage().data_ptr() == ptr for t in inputs):
        res = res.clone()
    return res


def _plain(t):
    return None if t is None else t.detach()


# ---------------------------------------------------------------- Sinkhorn-Knopp

@torch.library.custom_op("mhc_array::sinkhorn_knopp", mutates_args=())
def _sinkhorn_op(x: Tensor, row_sums: Optional[Tensor], col_sums: Optional[Tensor],
                 iterations: int, tau: float, logits: bool, order: str) -> Tensor:
    res = SINKHORN((_plain(x), _plain(row_sums), _plain(col_sums)),
                   (iterations, tau, logits, order))
    return _fresh(res, x)


@_sinkhorn_op.register_fake
def _(x, row_sums, col_sums, iterations, tau, logits, order):
    return x.new_empty(x.shape)


@torch.library.custom_op("mhc_array::sinkhorn_knopp_backward", mutates_args=())
def _sinkhorn_backward_op(grad: Tensor, x: Tensor, row_sums: Optional[Tensor],
                          col_sums: Optional[Tensor], iterations: int, tau: float, logits: bool,
                          order: str) -> Tensor:
    res = SINKHORN_BACKWARD((_plain(x), _plain(row_sums), _plain(col_sums), _plain(grad)),
                            (iterations, tau, logits, order))
    return _fresh(res, x, grad)


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
    fixed: no gradient flows to them. Returns a new tensor of x's shape and dtype."""
    opts = SINKHORN.validate((iterations, tau, logits, order))  # errors name the option
    iterations, tau, logits, order = (opts[k] for k in ("iterations", "tau", "logits", "order"))
    for name, t in (("x", x), ("row_sums", row_sums), ("col_sums", col_sums)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    return _sinkhorn_op(x, row_sums, col_sums, int(iterations), float(tau), bool(logits),
                        str(order))
