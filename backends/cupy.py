"""The CUDA backend: kernels launched through CuPy for arrays on a CUDA device.

Not built yet (the CUDA kernels are the subject of a later change): every call
it would serve falls back (``auto``) to the ``array_api`` backend, which runs
in CuPy/PyTorch on the device itself, and forcing it is a
``BackendUnavailableError`` carrying ``UNAVAILABLE``.
"""

NAME = "cupy"

UNAVAILABLE = "the CUDA kernels are not part of this build yet"


def cannot_serve(x, library, kernel):
    return UNAVAILABLE


def silent_reason(why):
    return False
