"""Shared fixtures: the array libraries under test and the backend x ISA matrix."""

import contextlib
import functools
import os
import sys
import threading
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mhc_array as mx  # noqa: E402

# ---------------------------------------------------------------- tolerances

# SPEC 2.2: float32 within 1e-5 relative of a float64 reference, float64 within 1e-12.
#: the extern "C" kernels of a native/cuda source (each defined for _f32 and _f64)
KERNEL_RE = r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)##SUF'
DIST_TOL = {"float32": dict(rtol=1e-5, atol=0.0), "float64": dict(rtol=1e-12, atol=0.0)}
# Sinkhorn: 20 iterations of float32 sums/divisions; entries are O(1/n).
SINK_TOL = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-13)}


# ---------------------------------------------------------------- array libraries


class Lib:
    """One array library: conversions from/to NumPy and type/dtype checks."""

    def __init__(self, name):
        self.name = name
        if name == "numpy":
            self.mod = np
        else:
            self.mod = pytest.importorskip(name)

    def __repr__(self):
        return f"Lib({self.name})"

    def dtype(self, name):
        return getattr(self.mod, name)

    def asarray(self, a):
        """A fresh array of this library holding a copy of NumPy array ``a``."""
        a = np.array(a, copy=True)
        if self.name == "numpy":
            return a
        if self.name == "torch":
            return self.mod.from_numpy(a)
        return self.mod.asarray(a)

    def to_numpy(self, r):
        """A NumPy copy of a result of this library."""
        if self.name == "numpy":
            return np.array(r, copy=True)
        if self.name == "torch":
            r = r.detach().cpu()
            if r.dtype == self.mod.bfloat16:
                r = r.float()
            return r.numpy().copy()
        return np.array(np.from_dlpack(r), copy=True)

    def is_array(self, r):
        if self.name == "numpy":
            # a 0-d result may be a NumPy scalar, as NumPy's own reductions return
            return isinstance(r, np.ndarray) or (isinstance(r, np.generic) and r.shape == ())
        if self.name == "torch":
            return isinstance(r, self.mod.Tensor)
        return type(r).__module__.startswith("array_api_strict")

    def check(self, r, dtype, shape):
        """``r`` is an array of this library with ``dtype`` (name) and ``shape``."""
        assert self.is_array(r), f"expected a {self.name} array, got {type(r)!r}"
        assert r.dtype == self.dtype(dtype), f"dtype {r.dtype}, expected {dtype}"
        assert tuple(r.shape) == tuple(shape), f"shape {tuple(r.shape)}, expected {shape}"


LIBS = ["numpy", "torch", "array_api_strict"]


@pytest.fixture(params=LIBS)
def lib(request):
    return Lib(request.param)


@pytest.fixture
def np_lib():
    return Lib("numpy")


# ---------------------------------------------------------------- backends x ISA

ISA_ORDER = ["portable", "sse", "avx2", "avx512"]
BACKEND_PARAMS = [("array_api", None)] + [("native", isa) for isa in
                                          ("avx512", "avx2", "sse", "portable")]


@functools.lru_cache(maxsize=None)
def native_available():
    return bool(mx.config()["backends"]["native"]["available"])


@functools.lru_cache(maxsize=None)
def cpu_supports(isa):
    """Whether this CPU runs ``isa`` (so that forcing it does not fall back)."""
    cfg = mx.config()
    best = cfg.get("isa_best")
    if best in ISA_ORDER:
        return ISA_ORDER.index(isa) <= ISA_ORDER.index(best)
    feats = mx.cpu_features()
    need = {"portable": [], "sse": ["sse2"], "avx2": ["avx2", "fma"],
            "avx512": ["avx512f"]}[isa]
    return all(feats.get(f, False) for f in need)


@contextlib.contextmanager
def forced(name, isa):
    with mx.use_backend(name):
        if isa is None:
            yield
        else:
            with mx.use_isa(isa):
                yield


@pytest.fixture(params=BACKEND_PARAMS,
                ids=[b if i is None else f"{b}-{i}" for b, i in BACKEND_PARAMS])
def backend(request):
    """Run the test under one backend (and ISA level for native)."""
    name, isa = request.param
    if name == "native":
        if not native_available():
            pytest.skip("native backend unavailable: "
                        f"{mx.config()['backends']['native']['reason']}")
        if not cpu_supports(isa):
            pytest.skip(f"this CPU lacks {isa} (forcing it would only fall back; the "
                        "fallback is tested in test_config)")
    with forced(name, isa):
        assert mx.get_backend() == name
        yield name


@pytest.fixture(autouse=True)
def _restore_config():
    """Each test leaves the process-wide configuration as it found it."""
    before = (mx.get_backend(), mx.get_isa(), mx.get_num_threads())
    yield
    mx.set_backend(before[0])
    mx.set_isa(before[1])
    mx.set_num_threads(before[2])


# ---------------------------------------------------------------- helpers


class Unchanged:
    """Snapshot arrays (any library) and check later that none was modified."""

    def __init__(self, lib, *arrays):
        self.lib = lib
        self.arrays = [a for a in arrays if a is not None]
        self.copies = [lib.to_numpy(a) for a in self.arrays]

    def check(self):
        for a, c in zip(self.arrays, self.copies):
            np.testing.assert_array_equal(self.lib.to_numpy(a), c,
                                          err_msg="an input was modified")


def rng_for(*key):
    """A reproducible RNG per test case."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))



def run_in_threads(work, count, timeout=120):
    """Run ``work(k)`` for k < count in ``count`` Python threads released together
    (a barrier); fail on the first exception of any of them, or on a thread that
    has not returned within ``timeout`` seconds."""
    errors, barrier = [], threading.Barrier(count)

    def body(k):
        try:
            barrier.wait()
            work(k)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append((k, exc))

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not return"
    assert not errors, errors
