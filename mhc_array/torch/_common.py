"""What every op of ``mhc_array.torch`` uses: fresh results, detached inputs for
the library's records, argument checks and gradients summed over broadcast axes."""

import torch


def fresh(res, *inputs):
    """``res`` as a contiguous tensor that shares no memory with ``inputs``."""
    return fresh_all((res,), inputs)[0]


def _span(t):
    """The bytes ``[start, end)`` that tensor ``t`` can reach (empty: None)."""
    if not t.numel():
        return None
    start = t.data_ptr()
    reach = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start, start + (reach + 1) * t.element_size()


def fresh_all(results, inputs):
    """Each of ``results`` as a contiguous tensor that shares no memory with
    ``inputs``. Compared by the bytes each can reach, not by ``untyped_storage()``:
    asking a result for its storage leaves a second reference to it, and autograd
    then sums a gradient into a fresh tensor instead of into this one (one more pass
    and a fresh allocation of x's size in every backward)."""
    taken = [s for s in map(_span, (t for t in inputs if t is not None)) if s is not None]
    out = []
    for res in results:
        if not isinstance(res, torch.Tensor):
            res = torch.as_tensor(res)
        res = res.contiguous()
        span = _span(res)
        if span is not None and any(a < span[1] and span[0] < b for a, b in taken):
            res = res.clone()
        out.append(res)
    return tuple(out)


def plain(t):
    return None if t is None else t.detach()


def check_points(**arrays):
    for name, t in arrays.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got {t.dtype}")


def reduce_to(t, like):
    """``t`` summed over the axes along which ``like`` was broadcast, in like's dtype."""
    if t.shape != like.shape:
        t = t.sum_to_size(like.shape)
    return t.to(like.dtype)
