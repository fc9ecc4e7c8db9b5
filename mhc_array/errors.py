"""The exception hierarchy of mhc_array (SPEC 2.5).

Every error is a subclass of :class:`MHCArrayError` and of the built-in class a
NumPy user would expect (``ValueError``, ``TypeError``, ``RuntimeError``), so
``except ValueError`` keeps working. :func:`warn_at_caller` issues the
package's warnings at the caller's line.
"""

import os
import sys
import warnings

__all__ = [
    "MHCArrayError",
    "ShapeError",
    "DomainError",
    "UnsupportedDTypeError",
    "BackendUnavailableError",
    "NativeError",
    "ChunkWarning",
    "warn_at_caller",
]


class MHCArrayError(Exception):
    """Base class of every error raised by mhc_array."""


class ShapeError(MHCArrayError, ValueError):
    """An argument has the wrong shape, or sizes that overflow."""


class DomainError(MHCArrayError, ValueError):
    """An input lies outside the domain of the function.

    ``index`` is the index (a tuple into the argument named ``argument``) of the
    first offending entry, when it is known.
    """

    #: what a point outside each manifold's domain "is", for the message
    OUTSIDE = {
        "poincare": "lies outside the Poincare ball of curvature -K (needs K*|p|^2 < 1; "
                    "on_domain_error='clip' projects such points inside, 'nan' gives NaN)",
        "spherical": "is a zero vector, which has no direction on the sphere "
                     "(on_domain_error='nan' or 'clip' gives NaN)",
    }

    def __init__(self, message, *, argument=None, index=None, detail=None):
        super().__init__(message)
        self.argument = argument
        self.index = index
        self.detail = detail  # what the entry "is" (the message after its name), if known

    @classmethod
    def at(cls, argument, shape, flat_index, what):
        """The error for entry ``flat_index`` (C order) of ``argument`` of ``shape``:
        the message names ``argument[i, j, ...]``."""
        index = []
        for s in reversed(shape):
            index.append(flat_index % s if s else 0)
            flat_index //= s if s else 1
        return cls.named(argument, tuple(reversed(index)), what)

    @classmethod
    def named(cls, argument, index, what):
        """The error for entry ``index`` (a tuple) of ``argument``: ``x[i, j] what``."""
        where = f"{argument}[{', '.join(map(str, index))}]" if index else argument
        return cls(f"{where} {what}", argument=argument, index=index, detail=what)


class ChunkWarning(RuntimeWarning):
    """A core axis of a dask array was split over chunks and had to be rechunked
    whole (data moved between workers): chunk only the batch axes."""


class UnsupportedDTypeError(MHCArrayError, TypeError):
    """An argument has a dtype the function cannot compute with (e.g. complex)."""


class BackendUnavailableError(MHCArrayError, RuntimeError):
    """The requested backend cannot serve this input (the message says why)."""


class NativeError(MHCArrayError, RuntimeError):
    """The native C library reported a failure (out of memory, internal error)."""


_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")


def _internal_dirs():
    """Folders whose frames stand between a caller and a warning: this package, its
    backends (a folder of their own in a source checkout) and, once imported,
    torch (the custom-op machinery of ``mhc_array.torch`` calls into the package)."""
    dirs = [_PACKAGE_DIR]
    backends = sys.modules.get(f"{__package__}.backends")
    if backends is not None:
        dirs += [os.path.join(os.path.abspath(d), "") for d in backends.__path__]
    torch = sys.modules.get("torch")
    if getattr(torch, "__file__", None):
        dirs.append(os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), ""))
    return tuple(dirs)


def warn_at_caller(message, category=RuntimeWarning):
    """``warnings.warn`` attributed to the caller's line: the first frame, going
    outwards, that is not in this package (or torch's machinery around it), however
    deep the call that warns."""
    internal = _internal_dirs()
    frame, level = sys._getframe(1), 2   # stacklevel 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
