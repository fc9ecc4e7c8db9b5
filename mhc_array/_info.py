"""Introspection and utilities of SPEC 2.5: ``cpu_features``, ``config``,
``show_config`` and ``empty_aligned``."""

import importlib.metadata
import importlib.util
import platform
import sys

import numpy as np

from . import _config, _dispatch
from .errors import ShapeError

__all__ = ["cpu_features", "config", "show_config", "empty_aligned"]

def cpu_features():
    """The CPU features the native library detected (CPUID and XGETBV), as a dict of
    bools; empty when the native library is unavailable.

    >>> feats = mx.cpu_features()
    >>> all(isinstance(v, bool) for v in feats.values())
    True
    """
    return _dispatch.backend("native").describe()["cpu_features"]


def config():
    """The configuration as a dict: version, backends (available or why not), ISA
    level requested and in use, thread count, CUDA device, how the native part was
    compiled.

    >>> info = mx.config()
    >>> info["backends"]["array_api"]
    {'available': True, 'reason': None}
    >>> info["isa"] in (None, "avx512", "avx2", "sse", "portable"), info["num_threads"] >= 1
    (True, True)
    """
    from . import __version__
    nat = _dispatch.backend("native")
    native = nat.describe()
    backends = {}
    for name in ("native", "cupy", "array_api"):
        why = getattr(_dispatch.backend(name), "UNAVAILABLE", None)
        backends[name] = {"available": why is None, "reason": why}
    isa_req = _config.get_isa()
    info = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backend": _config.get_backend(),
        "backends": backends,
        "isa_requested": isa_req,
        "isa": None if nat.lib is None else nat.level_in_use(isa_req),
        "isa_best": native["isa_best"],
        "num_threads": _config.get_num_threads(),
        "cpu_features": native["cpu_features"],
        "native_build": native["build"],
        "native_auto_rules": native.get("auto_rules", []),
        "cuda": _cuda_info(),
        "versions": _versions(),
    }
    return info


#: the distributions a bug report needs the versions of (read from their metadata:
#: nothing is imported)
OPTIONAL = ("torch", "dask", "distributed", "cupy-cuda12x", "cupy-cuda13x", "jax", "jaxlib",
            "scipy", "transformers", "array-api-compat", "array-api-strict", "cffi")


def _versions():
    """{distribution: version or None (not installed)} of ``OPTIONAL``."""
    out = {}
    for name in OPTIONAL:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cuda_info():
    if importlib.util.find_spec("cupy") is None:
        return "cupy not installed"
    try:
        import cupy
        dev = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
        return f"device {dev.id}: {name}"
    except Exception as exc:  # noqa: BLE001 - report, never fail
        return f"no usable CUDA device ({exc.__class__.__name__}: {exc})"


def show_config(file=None):
    """Print ``config()`` in a readable form (what ``python -m mhc_array info`` prints).

    >>> mx.show_config()
    mhc_array 0.1.0  (Python ...)
    backend setting: auto
    ...
    """
    info = config()
    out = file or sys.stdout
    print(f"mhc_array {info['version']}  (Python {info['python']}, NumPy {info['numpy']}, "
          f"{info['platform']})", file=out)
    print(f"backend setting: {info['backend']}", file=out)
    for name, b in info["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:<10} {state}", file=out)
    print(f"ISA: {info['isa']} (requested {info['isa_requested']}, best {info['isa_best']})",
          file=out)
    feats = [k for k, v in info["cpu_features"].items() if v]
    print(f"CPU features: {' '.join(feats) if feats else '(unknown)'}", file=out)
    print(f"threads: {info['num_threads']}", file=out)
    print(f"CUDA: {info['cuda']}", file=out)
    rules = "".join(f"; auto rule: {r}" for r in info.get("native_auto_rules", []))
    print(f"native build: {info['native_build']}{rules}", file=out)
    found = [f"{k} {v}" for k, v in info["versions"].items() if v is not None]
    print(f"libraries: {', '.join(found) if found else '(none of the optional ones)'}",
          file=out)


def empty_aligned(shape, dtype="float32", alignment=64, like=None):
    """An uninitialised array of ``shape`` and ``dtype`` whose data starts at a multiple
    of ``alignment`` bytes, in the library (and device) of ``like`` (NumPy by default).

    >>> a = mx.empty_aligned((3, 5), dtype="float32", alignment=64)
    >>> a.shape, a.dtype, a.ctypes.data % 64
    ((3, 5), dtype('float32'), 0)
    """
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1 \
            or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two; got {alignment!r}")
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ShapeError(f"shape must have non-negative sizes; got {shape}")
    size = _dispatch.checked_size(shape, "shape")
    if like is not None:
        xp, lib = _dispatch.namespace_of(like, "like")
        dt = getattr(xp, dtype) if isinstance(dtype, str) else dtype
        if _dispatch.device_type(like) != 1:
            return xp.empty(shape, dtype=dt, device=xp.asarray(like).device)
        np_dt = np.dtype(str(dt).rsplit(".", 1)[-1])
        return xp.from_dlpack(_aligned_numpy(shape, size, np_dt, alignment))
    return _aligned_numpy(shape, size, np.dtype(dtype), alignment)


def _aligned_numpy(shape, size, dt, alignment):
    nbytes = size * dt.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dt).reshape(shape)

