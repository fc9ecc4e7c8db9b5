"""mhc_array: the kernels of mHC (Manifold-Constrained Hyper-Connections) and
manifold geometry, fast, from any array library.

Pass a NumPy, PyTorch, CuPy, JAX, Dask or array_api_strict array; the result
comes back in the same library, on the same device. See ``show_config()`` for
the backends in use.
"""

__version__ = "0.1.0"


def _complete_package_path():
    """Make the package whole when this ``__init__`` runs from the source folder.

    The repository keeps the backends beside the frontend (``backends/``,
    installed as ``mhc_array.backends``) and the compiled module is built into
    the installed package. ``python -m mhc_array`` (or ``import mhc_array``) run
    from the repository root finds the source folder ``mhc_array/`` first on
    ``sys.path``, which has neither. Then the installed copy, if there is one,
    is searched first (so that frontend, backends and compiled module come from
    one install), else the repository root (an editable install or a bare
    checkout: ``mhc_array.backends`` is ``backends/`` itself).
    """
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(here, "backends", "__init__.py")):
        return  # an installed package: already whole
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), __name__)
        if (os.path.isfile(os.path.join(candidate, "backends", "__init__.py"))
                and os.path.realpath(candidate) != os.path.realpath(here)):
            __path__.insert(0, candidate)
            return
    root = os.path.dirname(here)
    if os.path.isfile(os.path.join(root, "backends", "__init__.py")):
        __path__.append(root)


_complete_package_path()

from ._api import (  # noqa: E402
    check_manifold,
    euclidean_distance,
    geometric_distance,
    pairwise_distance,
    poincare_distance,
    project_to_manifold,
    sinkhorn_knopp,
    spherical_distance,
)
from ._config import (  # noqa: E402
    get_backend,
    get_isa,
    get_num_threads,
    set_backend,
    set_isa,
    set_num_threads,
    use_backend,
    use_isa,
    use_num_threads,
)
from ._mhc import MHCLayer, mhc_post, mhc_post_pre, mhc_pre  # noqa: E402
from .curvature import estimate_curvature, ollivier_ricci_curvature  # noqa: E402
from ._info import config, cpu_features, empty_aligned, show_config  # noqa: E402
from ._stats import reset_stats, stats  # noqa: E402
from .errors import (  # noqa: E402
    BackendUnavailableError,
    ChunkWarning,
    DomainError,
    MHCArrayError,
    NativeError,
    ShapeError,
    UnsupportedDTypeError,
)

__all__ = [
    "__version__",
    "sinkhorn_knopp",
    "euclidean_distance", "poincare_distance", "spherical_distance",
    "geometric_distance", "pairwise_distance", "check_manifold", "project_to_manifold",
    "mhc_pre", "mhc_post", "mhc_post_pre", "MHCLayer",
    "ollivier_ricci_curvature", "estimate_curvature",
    "set_backend", "get_backend", "use_backend",
    "set_isa", "get_isa", "use_isa",
    "set_num_threads", "get_num_threads", "use_num_threads",
    "cpu_features", "config", "show_config", "empty_aligned",
    "stats", "reset_stats",
    "MHCArrayError", "ShapeError", "DomainError", "UnsupportedDTypeError",
    "BackendUnavailableError", "NativeError", "ChunkWarning",
]

if "torch" in __import__("sys").modules:  # torch.compile over the plain functions
    from . import _dynamo
    _dynamo.register()
