"""The benchmark of ``python -m mhc_array bench``: the workloads of SPEC 4 (the
design notes' section 10), measured live, every backend and ISA level against
NumPy and, when installed, PyTorch eager and SimSIMD.

Candidates of one workload run interleaved, round by round, so that a noisy
neighbour on this shared machine hits them all alike; the table reports the
median time per call and ratios measured in the same run.

Modules (this file only re-exports the commands):

- ``_run``: ``bench``, ``bench --gpu`` and ``bench --from-json``: the workloads in
  the table's order, measured, printed, saved;
- ``_measure``: timing (with the device synchronised on a GPU), the floors (a
  GPU's: its copy rate), the machine and device lines, the progress bar;
- ``_setting``: what the families share (data generator, peers, mhc_array's
  candidates per backend / ISA level, or the CUDA device and the cupy backend);
- the workload families: ``_sinkhorn`` (W1), ``_distances`` (W2), ``_mhc`` (W3, W4
  and the training rows), each with ``gpu_rows()``, its rows of ``bench --gpu``
  (the same builders, on CUDA tensors);
- ``_plot``: the charts of ``--plot``;
- ``_dask``: ``bench --dask``; ``_curvature``: ``bench --curvature``.
"""

from ._curvature import run as run_curvature
from ._dask import run_dask
from ._run import replot, run

__all__ = ["run", "replot", "run_dask", "run_curvature"]
