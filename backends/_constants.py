"""The constants that the C kernels, the CUDA kernels and the backends share:
flags, codes and limits, each stated once, in ``native/cuda/mhc_constants.h``
(``native/include/mhc_native.h`` includes it for C and the compiled module,
``mhc_cuda.cuh`` for the CUDA sources; it is installed with them as
``mhc_array._cuda``).

Each ``#define MHC_<NAME> <value>`` of that header is ``<NAME>`` here. The
values are the compiled module's when the native backend has loaded it (the
values its C kernels were built with), else those of the header's text, so that
a machine without a C compiler has them too.
"""

import os
import re

from .native import lib

_HERE = os.path.dirname(os.path.abspath(__file__))
#: where the CUDA sources and mhc_constants.h are: the repository's native/cuda,
#: or the installed copy
SOURCE_DIRS = (os.path.normpath(os.path.join(_HERE, os.pardir, "native", "cuda")),
               os.path.normpath(os.path.join(_HERE, os.pardir, "_cuda")))
HEADER = "mhc_constants.h"

_DEFINE = re.compile(r"#[ \t]*define[ \t]+(MHC_\w+)(?:[ \t]+(.*?))?[ \t]*$", re.M)


def header_path():
    """The path of mhc_constants.h, or None when this installation has none."""
    for d in SOURCE_DIRS:
        path = os.path.join(d, HEADER)
        if os.path.isfile(path):
            return path
    return None


def parse(text):
    """``{"MHC_<NAME>": value}`` of the ``#define`` lines of a header's ``text``
    (an int or a float each; the include guard, without a value, skipped)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    values = {}
    for name, value in _DEFINE.findall(text):
        if not value:
            continue
        if re.fullmatch(r"[0-9]+", value):
            values[name] = int(value)
        elif re.fullmatch(r"[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+", value):
            values[name] = float(value)
        else:
            raise ValueError(f"{HEADER}: {name} is not an integer or decimal literal: {value!r}")
    return values


def _read_header():
    path = header_path()
    if path is None:
        raise ImportError(f"{HEADER} is not part of this installation (native/cuda)")
    with open(path) as f:
        return parse(f.read())


#: where the values were read: the compiled module or the header's path
SOURCE = "mhc_array._native" if lib is not None else header_path()
_VALUES = None if lib is not None else _read_header()


def _value(name):
    name = "MHC_" + name
    return getattr(lib, name) if _VALUES is None else _VALUES[name]


# Sinkhorn flags
SK_LOGITS = _value("SK_LOGITS")
SK_COLS_FIRST = _value("SK_COLS_FIRST")
# Sinkhorn matrices with n*m up to these go to the C SoA kernel / a CUDA thread each
SK_SMALL_MAX = _value("SK_SMALL_MAX")
CUDA_SK_SMALL_MAX = _value("CUDA_SK_SMALL_MAX")
CUDA_BLOCK = _value("CUDA_BLOCK")               # threads per block of the CUDA launches
CUDA_SK_SCRATCH = _value("CUDA_SK_SCRATCH")   # doubles per thread of sinkhorn.cu's scratch
# distances: manifold codes, on_domain_error modes, the "clip" margin
EUCLIDEAN = _value("EUCLIDEAN")
POINCARE = _value("POINCARE")
SPHERICAL = _value("SPHERICAL")
DOM_RAISE = _value("DOM_RAISE")
DOM_NAN = _value("DOM_NAN")
DOM_CLIP = _value("DOM_CLIP")
CLIP_MARGIN = _value("CLIP_MARGIN")
# the mHC connection: variant codes, the most streams, mhc.cu's sums per round
HC_PAPER = _value("HC_PAPER")
HC_DEEPSEEK_V4 = _value("HC_DEEPSEEK_V4")
HC_ROWS = _value("HC_ROWS")      # flag: V4's projection given in the rows layout (n*C, K)
HC_MAX_STREAMS = _value("HC_MAX_STREAMS")
CUDA_HC_CHUNK = _value("CUDA_HC_CHUNK")
# curvature: the regularisation epsilon scaling starts at (relative to the cost range)
OT_REG_START = _value("OT_REG_START")
