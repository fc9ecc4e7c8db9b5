"""W1: Sinkhorn-Knopp forward (NumPy and PyTorch loops as peers, floors from the
arithmetic or the matrices' bandwidth), forward + backward against autograd
through the torch loop, and the batch scaling rows of the full run; on the GPU
(``gpu_rows``) the same rows on CUDA tensors."""

import numpy as np

from .. import _api
from ._measure import arith_floor, read_floor


def _logits(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _numpy_sinkhorn(x, iterations):
    """The NumPy loop the targets are stated against."""
    M = np.exp(x - x.max(axis=(-2, -1), keepdims=True))
    for _ in range(iterations):
        M /= M.sum(-1, keepdims=True)
        M /= M.sum(-2, keepdims=True)
    return M


def _numpy_sinkhorn_plain(x, iterations):
    M = x.copy()
    for _ in range(iterations):
        M /= M.sum(-1, keepdims=True)
        M /= M.sum(-2, keepdims=True)
    return M


def _torch_sinkhorn(torch, logits):
    def run(x, iterations):
        M = torch.exp(x - x.amax(dim=(-2, -1), keepdim=True)) if logits else x.clone()
        for _ in range(iterations):
            M = M / M.sum(-1, keepdim=True)
            M = M / M.sum(-2, keepdim=True)
        return M
    return run


def _sinkhorn(s, name, batch, n, m, iterations, logits):
    torch, rng, mhc = s.torch, s.rng, s.mhc
    compiled, compile_peers = s.compiled, s.compile_peers
    x = _logits(rng, (batch, n, m)) if logits else rng.random((batch, n, m), np.float32)
    cands = {}
    if not s.gpu:
        cands["numpy"] = (_numpy_sinkhorn if logits else _numpy_sinkhorn_plain,
                          (x, iterations))
    if torch is not None:
        tx = s.tensor(x)
        cands["torch eager"] = (_torch_sinkhorn(torch, logits), (tx, iterations))
        if compile_peers and (fn := compiled(_torch_sinkhorn(torch, logits))) is not None:
            cands["torch.compile"] = (fn, (tx, iterations))
    xa = s.array(x)
    for label, ctx in mhc:
        cands[label] = (lambda a: _api.sinkhorn_knopp(a, iterations=iterations,
                                                     logits=logits), (xa,), ctx)
    if s.gpu:
        floor = s.floor(2 * x.nbytes, "one read of the matrices + one write")
    elif n * m <= 64:
        floor = arith_floor(batch, n, m, iterations, logits)
    else:
        floor = read_floor(x, iterations + 2, f"{iterations} reads + 1 write of the matrices")
    return (name, cands, floor)


def _sinkhorn_backward(s, name, batch, n, iterations):
    """Sinkhorn from logits, forward + backward (upstream gradient randn): ours (the
    native backward kernel) vs autograd through the plain torch loop."""
    torch, rng = s.torch, s.rng
    compiled, compile_peers = s.compiled, s.compile_peers
    if torch is None:
        return
    import mhc_array.torch as mt
    x0 = s.tensor(_logits(rng, (batch, n, n)))
    g = s.tensor(_logits(rng, (batch, n, n)))
    loop = _torch_sinkhorn(torch, True)

    def plain(fn):
        def run():
            x = x0.clone().requires_grad_()
            fn(x, iterations).backward(g)
        return run
    cands = {"torch eager": (plain(loop), ())}
    if compile_peers and (fn := compiled(loop)) is not None:
        cands["torch.compile"] = (plain(fn), ())
    return s.grad_row(name, cands, plain(lambda x, it: mt.sinkhorn_knopp(x, iterations=it,
                                                                       logits=True)))


def rows(s):
    return [_sinkhorn(s, "W1 sinkhorn 4096 x 4x4, 20 it, logits", 4096, 4, 4, 20, True),
            _sinkhorn(s, "W1 sinkhorn 4096 x 4x4, 10 it, logits", 4096, 4, 4, 10, True),
            _sinkhorn(s, "W1b sinkhorn 8 x 512x1024, 10 it", 8, 512, 1024, 10, False)]


def training_rows(s):
    row = _sinkhorn_backward(s, "W1 sinkhorn fwd+bwd 4096 x 4x4, 20 it, logits (torch)",
                             4096, 4, 20)
    return [row] if row is not None else []


def large_rows(s):
    """The full run's large batch and its scaling in the number of matrices."""
    work = [_sinkhorn(s, "W1 sinkhorn 65536 x 4x4, 20 it, logits", 65536, 4, 4, 20, True)]
    for b in (1, 8, 32, 128):
        work.append(_sinkhorn(s, f"scaling sinkhorn {b}x512 x 4x4, 10 it", b * 512, 4, 4, 10,
                              True))
    return work


def gpu_rows():
    """The GPU run's W1: (name, build(setting, name)) -- forward and forward +
    backward, 4096 and 65536 matrices 4x4 from logits, 20 iterations."""
    rows = []
    for b in (4096, 65536):
        rows.append((f"GPU W1 sinkhorn {b} x 4x4, 20 it, logits",
                     lambda s, name, b=b: _sinkhorn(s, name, b, 4, 4, 20, True)))
    for b in (4096, 65536):
        rows.append((f"GPU W1 sinkhorn fwd+bwd {b} x 4x4, 20 it, logits (torch)",
                     lambda s, name, b=b: _sinkhorn_backward(s, name, b, 4, 20)))
    return rows
