"""Dask arrays: the pipeline's calls mapped block-wise over the batch axes.

Imported by the pipeline only when a call's arrays are ``dask.array`` arrays
(``import mhc_array`` never imports dask). The options, the arrays' core
dimensions, dtypes and the relations between shapes are checked when the graph
is built, as for any array; values (a negative entry, a point outside the
ball) are checked where they are computed, on the workers, and raise the same
errors at ``.compute()``.

Each record states its arguments' and results' core dimensions (``Arg.core``,
``Op.results``): that is its generalised-ufunc signature. The batch axes are
broadcast and mapped over chunk by chunk with ``dask.array.apply_gufunc``, each
block computed by the same record (so by the native or CuPy kernels on the
workers); core axes split over several chunks are first rechunked whole, with a
:class:`ChunkWarning` (that costs a shuffle). Small arguments given as NumPy
arrays (a reference point, the mHC parameters) become single-chunk dask arrays:
one key in the graph, passed to every block, not a constant copied into every
task. ``pairwise_distance`` is blocked over both inputs (``blockwise``).
"""

import functools

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from .errors import ChunkWarning, DomainError, warn_at_caller

__all__ = ["run", "signature", "ChunkWarning"]


def signature(cores, results):
    """The generalised-ufunc signature of arguments and results with these core
    dimensions, e.g. ``"(n,m),(n),(m)->(n,m)"`` for ``sinkhorn_knopp``."""
    def dims(core):
        return "(" + ",".join(core) + ")"
    return ",".join(map(dims, cores)) + "->" + ",".join(map(dims, results))


def _whole_core(name, a, core):
    """``a`` with its last ``core`` axes in one chunk each (rechunked with a warning)."""
    if core == 0 or not isinstance(a, da.Array):
        return a
    split = [ax for ax in range(a.ndim - core, a.ndim) if len(a.chunks[ax]) > 1]
    if not split:
        return a
    warn_at_caller(f"mhc_array: {name} is split over chunks along its core axes {split} "
                   f"(chunks {a.chunks}); rechunking them whole, which moves data between "
                   "workers: chunk only the batch axes", ChunkWarning)
    return a.rechunk({ax: -1 for ax in split})


def _single_chunk(a):
    """A NumPy (or other non-dask) argument as a one-chunk dask array: one key."""
    if a is None or isinstance(a, da.Array):
        return a
    return da.from_array(np.asarray(a), chunks=a.shape if a.ndim else ())


def _block(op, where, count, options, places, *blocks):
    """One block: the record called on the blocks (at positions ``where`` of its
    ``count`` array arguments, None elsewhere), the last ``len(loop)`` blocks being
    the global indices of the block along each loop axis. A DomainError names the
    entry's index in the whole array (``places``: see :func:`_global_index`). A
    module-level function with small arguments: cheap to send with every task."""
    loop = len(blocks) - len(where)
    full = [None] * count
    for i, b in zip(where, blocks):
        full[i] = b
    try:
        return op(tuple(full), options)
    except DomainError as e:
        if e.index is None or e.detail is None or e.argument not in places:
            raise
        offsets = [int(b.flat[0]) for b in blocks[len(blocks) - loop:]]
        index = _global_index(e.index, offsets, *places[e.argument])
        raise DomainError.named(e.argument, index, e.detail) from None


def _global_index(index, offsets, batch_ndim, broadcast):
    """``index`` of an entry in an argument's block, in the whole argument: its batch
    axes (the first ``batch_ndim``, aligned with the last loop axes) shifted by the
    block's ``offsets`` along the loop, except where the argument has size 1
    (``broadcast``, per batch axis) and is the same in every block."""
    shift = offsets[len(offsets) - batch_ndim:] if batch_ndim else []
    head = tuple(i if b else i + o for i, o, b in zip(index[:batch_ndim], shift, broadcast))
    return head + tuple(index[batch_ndim:])


def _pairwise_block(op, options, a, b):
    return op((a, b), options)


def run(op, names, arrays, options, out, cdt, rdt):
    """The lazy result of ``op`` on dask arrays (validated by the pipeline)."""
    if out is not None:
        raise TypeError("out= is not supported for dask arrays: results are lazy dask "
                        "arrays; assign the result instead")
    if op.kernel == "pairwise":
        return _pairwise(op, arrays, options, rdt)
    if op.results is None:
        raise TypeError(f"{op.name} does not take dask arrays")
    present = [(n, a, spec.core) for n, a, spec in zip(names, arrays, op.arrays)
               if a is not None]
    args = [_whole_core(n, _single_chunk(a), len(core)) for n, a, core in present]
    where = tuple(i for i, a in enumerate(arrays) if a is not None)
    loop, positions = _loop_positions(args, [len(core) for _, _, core in present])
    places = {n: (a.ndim - len(core), tuple(d == 1 for d in a.shape[:a.ndim - len(core)]))
              for (n, _, core), a in zip(present, args)}
    block = functools.partial(_block, op, where, len(arrays), options, places)
    results = op.results
    if op.restore == "all":
        dtypes = rdt
    elif op.restore == ():
        dtypes = np.bool_ if op.kernel == "check_manifold" else cdt
    else:
        dtypes = tuple(rdt if i in op.restore else cdt for i in range(len(results)))
    like = next(a for a in arrays if isinstance(a, da.Array))._meta  # NumPy may come first
    metas = tuple(meta_from_array(like, 0, dtype=np.dtype(dt)) for dt in
                  (dtypes if isinstance(dtypes, tuple) else (dtypes,)))
    cores = [c for _, _, c in present] + [()] * len(positions)
    return da.apply_gufunc(block, signature(cores, results), *args, *positions,
                           allow_rechunk=True,  # batch chunks unified
                           meta=metas if len(metas) > 1 else metas[0])


def _loop_positions(args, cores):
    """The loop (batch) shape of the call and, per loop axis, a dask array of the
    global indices along it (shape ``(L, 1, ...)``), chunked as the arguments are
    along that axis, so that each block learns where it lies."""
    batch = [tuple(a.shape[:a.ndim - k]) for a, k in zip(args, cores)]
    loop = np.broadcast_shapes(*batch) if batch else ()
    positions = []
    for j, size in enumerate(loop):
        chunks = (size,)
        for a, b in zip(args, batch):
            axis = j - (len(loop) - len(b))
            if axis >= 0 and b[axis] == size and isinstance(a, da.Array):
                chunks = a.chunks[axis]
                break
        shape = (size,) + (1,) * (len(loop) - j - 1)
        positions.append(da.arange(size, chunks=chunks).reshape(shape))
    return loop, positions


def _pairwise(op, arrays, options, rdt):
    x, y = (_whole_core(n, _single_chunk(a), 1) for n, a in zip(("x", "y"), arrays))
    meta = meta_from_array(x._meta, 2, dtype=np.dtype(rdt))
    return da.blockwise(functools.partial(_pairwise_block, op, options), "ij", x, "ik", y, "jk",
                        concatenate=True, dtype=rdt, meta=meta)
