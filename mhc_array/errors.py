"""The exception hierarchy of mhc_array (SPEC 2.5).

Every error is a subclass of :class:`MHCArrayError` and of the built-in class a
NumPy user would expect (``ValueError``, ``TypeError``, ``RuntimeError``), so
``except ValueError`` keeps working.
"""

__all__ = [
    "MHCArrayError",
    "ShapeError",
    "DomainError",
    "UnsupportedDTypeError",
    "BackendUnavailableError",
    "NativeError",
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
        "poincare": "lies outside the Poincare ball of curvature -K (needs K*|p|^2 < 1)",
        "spherical": "is a zero vector, which has no direction on the sphere",
    }

    def __init__(self, message, *, argument=None, index=None):
        super().__init__(message)
        self.argument = argument
        self.index = index

    @classmethod
    def at(cls, argument, shape, flat_index, what):
        """The error for entry ``flat_index`` (C order) of ``argument`` of ``shape``:
        the message names ``argument[i, j, ...]``."""
        index = []
        for s in reversed(shape):
            index.append(flat_index % s if s else 0)
            flat_index //= s if s else 1
        index = tuple(reversed(index))
        where = f"{argument}[{', '.join(map(str, index))}]" if index else argument
        return cls(f"{where} {what}", argument=argument, index=index)


class UnsupportedDTypeError(MHCArrayError, TypeError):
    """An argument has a dtype the function cannot compute with (e.g. complex)."""


class BackendUnavailableError(MHCArrayError, RuntimeError):
    """The requested backend cannot serve this input (the message says why)."""


class NativeError(MHCArrayError, RuntimeError):
    """The native C library reported a failure (out of memory, internal error)."""
