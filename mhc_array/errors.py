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

    def __init__(self, message, *, argument=None, index=None):
        super().__init__(message)
        self.argument = argument
        self.index = index


class UnsupportedDTypeError(MHCArrayError, TypeError):
    """An argument has a dtype the function cannot compute with (e.g. complex)."""


class BackendUnavailableError(MHCArrayError, RuntimeError):
    """The requested backend cannot serve this input (the message says why)."""


class NativeError(MHCArrayError, RuntimeError):
    """The native C library reported a failure (out of memory, internal error)."""
