"""What every op of ``mhc_array.torch`` uses: fresh results, detached inputs for
the library's records, argument checks and gradients summed over broadcast axes."""

import torch


def fresh(res, *inputs):
    """``res`` as a contiguous tensor that shares no memory with ``inputs``."""
    return fresh_all((res,), inputs)[0]


def fresh_all(results, inputs):
    """Each of ``results`` as a contiguous tensor that shares no memory with
    ``inputs`` (their storages looked up once: this runs at every decode call)."""
    taken = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
    out = []
    for res in results:
        if not isinstance(res, torch.Tensor):
            res = torch.as_tensor(res)
        res = res.contiguous()
        if res.untyped_storage().data_ptr() in taken:
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
