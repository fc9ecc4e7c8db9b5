"""Validators of keyword options, shared by the records (``_api.py``, ``_mhc.py``,
``curvature/``), the curvature functions' own arguments and the configuration
(``_config.py``).

A validator is ``check(name, value) -> value`` (normalised) that raises a
``TypeError`` or ``ValueError`` naming the option, what it expects and what
came. The common, valid case returns after one or two tests: they run on
every call.
"""

import math
import numbers
import operator

MAX_ITERATIONS = 2**31 - 1


def choice(*choices):
    """A validator accepting one of the strings ``choices``."""
    allowed = frozenset(choices)
    shown = ", ".join(map(repr, choices))

    def check(name, value):
        if value.__class__ is str and value in allowed:
            return value
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
    check.choices = choices
    return check


def real(name, value, *, positive=False):
    """A finite real Python/NumPy number (not a bool), >= 0 (or > 0 with ``positive``)."""
    if value.__class__ is float and 0 < value < math.inf:  # the common case
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {need}; got {value!r}")
    return value


def nonnegative(name, value):
    """A finite real number >= 0."""
    if value.__class__ is float and 0 <= value < math.inf:
        return value
    return real(name, value)


def positive(name, value):
    """A finite real number > 0."""
    return real(name, value, positive=True)


def iterations(name, value):
    """An int in [0, 2**31 - 1] (a bool or float is a TypeError)."""
    if value.__class__ is int and 0 <= value <= MAX_ITERATIONS:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if not 0 <= value <= MAX_ITERATIONS:
        raise ValueError(f"{name} must be in [0, 2**31 - 1]; got {value}")
    return value


def flag(name, value):
    """A bool (Python or NumPy)."""
    if value is True or value is False:
        return value
    if type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return bool(value)


def positive_int(name, value):
    """An int >= 1 (a bool is a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def int_range(low, high=None):
    """A validator accepting an int in ``[low, high)`` (no upper bound when ``high`` is
    None); a bool or float is a TypeError."""
    need = f">= {low}" + ("" if high is None else f" and < {high}")

    def check(name, value):
        if value.__class__ is int and low <= value and (high is None or value < high):
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
        value = operator.index(value)
        if value < low or (high is not None and value >= high):
            raise ValueError(f"{name} must be {need}; got {value}")
        return value
    return check


def fraction(name, value):
    """A finite real number in [0, 1)."""
    if value.__class__ is float and 0 <= value < 1:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not 0 <= value < 1:  # NaN too
        raise ValueError(f"{name} must be a finite number >= 0 and < 1; got {value!r}")
    return value


def validated(record, values):
    """The options ``values`` (a tuple, in the order of ``record.options``: (name,
    validator) pairs) validated and normalised, as a dict with ``record.fixed``
    added. Here, not in the pipeline, so that ``torch.compile`` traces it in
    ``mhc_array.torch``'s functions (the pipeline is on Dynamo's skip list)."""
    if len(values) != len(record.options):
        raise TypeError(f"{record.name}: {len(record.options)} options expected, "
                        f"got {len(values)}")
    checked = {name: check(name, v) for (name, check), v in zip(record.options, values)}
    if record.fixed:
        checked.update(record.fixed)
    return checked
