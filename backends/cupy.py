"""The CUDA backend (kernels from ``native/cuda/`` launched through CuPy).

Not built yet: every call it would serve falls back (``auto``) to the
``array_api`` backend, which runs in CuPy/PyTorch on the device itself.
"""

NAME = "cupy"

UNAVAILABLE = "the CUDA kernels are not part of this build yet"


def cannot_serve(x, library, kernel):
    return UNAVAILABLE


def silent_reason(why):
    return False
