"""Backends of mhc_array, one module per backend, all with the same functions:

- ``native``: C kernels (cffi) for CPU arrays, one variant per ISA level;
- ``cupy``: CUDA kernels for arrays on a CUDA device;
- ``array_api``: the same math in the caller's own array namespace (any device).

Each module offers ``cannot_serve(x, library, kernel)`` (None when it can, else
why not), ``silent_reason(why)`` and the kernels ``sinkhorn``, ``distance``
and ``pairwise`` with one signature across backends. The frontend
(``mhc_array._dispatch``) picks the module; the modules never pick each other.
"""
