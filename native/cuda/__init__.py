"""The CUDA sources of the cupy backend (installed as ``mhc_array._cuda``: data
files read by ``backends/cupy.py``, nothing to import)."""
