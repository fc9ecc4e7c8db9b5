"""Configuration, introspection, stats and utilities (SPEC 2.5, 2.6)."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import mhc_array as mx
import reference as ref
from conftest import SINK_TOL, DIST_TOL, cpu_supports, forced, native_available, rng_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, env=None, timeout=120):
    full_env = dict(os.environ)
    for k in ("MHC_ARRAY_BACKEND", "MHC_ARRAY_ISA", "MHC_ARRAY_NUM_THREADS"):
        full_env.pop(k, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


needs_native = pytest.mark.skipif("not native_available()", reason="native backend unavailable")


# ---------------------------------------------------------------- backend / ISA / threads


def test_backend_set_get_use():
    assert mx.get_backend() == "auto"
    for name in ("auto", "native", "cupy", "array_api"):
        with mx.use_backend(name):
            assert mx.get_backend() == name
        assert mx.get_backend() == "auto"
    mx.set_backend("array_api")
    assert mx.get_backend() == "array_api"
    with mx.use_backend("auto"):
        assert mx.get_backend() == "auto"
    assert mx.get_backend() == "array_api"
    mx.set_backend("auto")
    assert mx.get_backend() == "auto"


def test_use_backend_restores_on_exception():
    with pytest.raises(KeyError):
        with mx.use_backend("array_api"):
            raise KeyError("boom")
    assert mx.get_backend() == "auto"


def test_isa_set_get_use():
    assert mx.get_isa() == "auto"
    for level in ("auto", "avx512", "avx2", "sse", "portable"):
        with mx.use_isa(level):
            assert mx.get_isa() == level
    mx.set_isa("sse")
    assert mx.get_isa() == "sse"
    with mx.use_isa("portable"):
        assert mx.get_isa() == "portable"
    assert mx.get_isa() == "sse"


def test_num_threads():
    n0 = mx.get_num_threads()
    assert isinstance(n0, int) and n0 >= 1
    mx.set_num_threads(1)
    assert mx.get_num_threads() == 1
    mx.set_num_threads(3)
    assert mx.get_num_threads() == 3


@pytest.mark.parametrize("setter,bad", [
    ("set_backend", "bogus_backend"), ("use_backend", "torch"), ("set_backend", ""),
    ("set_isa", "neon"), ("use_isa", "avx1024"), ("set_isa", "avx-512-xyz"),
])
def test_invalid_names(setter, bad):
    before = (mx.get_backend(), mx.get_isa())
    with pytest.raises(ValueError) as ei:
        with getattr(mx, setter)(bad) if setter.startswith("use") else _noop(setter, bad):
            pass
    assert repr(bad) in str(ei.value) or bad in str(ei.value)
    assert (mx.get_backend(), mx.get_isa()) == before


class _noop:
    """Calls ``mx.<setter>(bad)`` on construction (a set_* call) and is a no-op context."""

    def __init__(self, setter, bad):
        getattr(mx, setter)(bad)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_threads(bad):
    n0 = mx.get_num_threads()
    with pytest.raises(ValueError):
        mx.set_num_threads(bad)
    assert mx.get_num_threads() == n0


@pytest.mark.parametrize("bad", [1.5, "2", None])
def test_invalid_thread_types(bad):
    with pytest.raises((TypeError, ValueError)):
        mx.set_num_threads(bad)


def test_use_backend_is_thread_local():
    """A use_backend/use_isa inside one thread is invisible to another thread."""
    barrier = threading.Barrier(2, timeout=30)
    seen = {}

    def a():
        with mx.use_backend("array_api"), mx.use_isa("portable"):
            barrier.wait()  # 1: a is inside its block
            seen["a_in"] = (mx.get_backend(), mx.get_isa())
            barrier.wait()  # 2: b has looked
            barrier.wait()  # 3: b is inside its own block
            seen["a_still"] = (mx.get_backend(), mx.get_isa())
            barrier.wait()  # 4

    def b():
        barrier.wait()  # 1
        seen["b_sees"] = (mx.get_backend(), mx.get_isa())
        barrier.wait()  # 2
        with mx.use_backend("native"), mx.use_isa("sse"):
            barrier.wait()  # 3
            seen["b_in"] = (mx.get_backend(), mx.get_isa())
            barrier.wait()  # 4

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert seen["a_in"] == ("array_api", "portable")
    assert seen["b_sees"] == ("auto", "auto")
    assert seen["a_still"] == ("array_api", "portable")
    assert seen["b_in"] == ("native", "sse")
    assert (mx.get_backend(), mx.get_isa()) == ("auto", "auto")


def test_use_backend_thread_does_not_change_calls_elsewhere():
    """While another thread holds use_backend("cupy") (which cannot serve NumPy),
    calls in this thread still work."""
    inside, release = threading.Event(), threading.Event()

    def holder():
        with mx.use_backend("cupy"):
            inside.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert inside.wait(30)
        x = np.random.default_rng(0).uniform(0.1, 1, (3, 3))
        np.testing.assert_allclose(mx.sinkhorn_knopp(x), ref.sinkhorn(x), **SINK_TOL["float64"])
    finally:
        release.set()
        t.join(30)


@pytest.mark.parametrize("backend_name", ["array_api", "native"])
def test_concurrent_calls(backend_name):
    """Many threads calling at once (native releases the GIL) get correct results."""
    if backend_name == "native" and not native_available():
        pytest.skip("native backend unavailable")
    errors = []
    barrier = threading.Barrier(4, timeout=30)

    def work(k):
        try:
            rng = rng_for("threads", k)
            x = rng.uniform(0.1, 1, (64, 8, 8)).astype(np.float32)
            p = ref.sphere_points(rng, (500,), 16)
            q = ref.sphere_points(rng, (), 16)
            with mx.use_backend(backend_name):
                barrier.wait()
                for _ in range(5):
                    r = mx.sinkhorn_knopp(x)
                    np.testing.assert_allclose(r, ref.sinkhorn(x), **SINK_TOL["float32"])
                    d = mx.spherical_distance(p, q)
                    np.testing.assert_allclose(d, ref.spherical(p, q), **DIST_TOL["float64"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors


def test_cupy_backend_on_numpy_array():
    x = np.ones((3, 3), np.float32)
    with mx.use_backend("cupy"):
        with pytest.raises(mx.BackendUnavailableError) as ei:
            mx.sinkhorn_knopp(x)
        assert str(ei.value)  # says why
        assert isinstance(ei.value, RuntimeError)
        with pytest.raises(mx.BackendUnavailableError):
            mx.euclidean_distance(x, x)
        with pytest.raises(mx.BackendUnavailableError):
            mx.pairwise_distance(x, x)


def test_auto_backend_works_on_every_library(lib):
    """auto never fails for lack of a fast backend."""
    x_np = rng_for("auto").uniform(0.1, 1, (2, 3, 3))
    r = mx.sinkhorn_knopp(lib.asarray(x_np))
    lib.check(r, "float64", (2, 3, 3))
    np.testing.assert_allclose(lib.to_numpy(r), ref.sinkhorn(x_np), **SINK_TOL["float64"])


@needs_native
def test_isa_levels_agree_and_are_applied():
    """Every ISA level the CPU has gives the reference result (the fixture covers the
    grid; this checks the level is reported as in use by config())."""
    x = rng_for("isa").uniform(0.1, 1, (16, 7, 7)).astype(np.float32)
    for level in ("portable", "sse", "avx2", "avx512"):
        if not cpu_supports(level):
            continue
        with forced("native", level):
            assert mx.config()["isa"] == level
            np.testing.assert_allclose(mx.sinkhorn_knopp(x), ref.sinkhorn(x),
                                       **SINK_TOL["float32"])


@needs_native
def test_isa_fallback_warns():
    """Forcing a level the CPU lacks falls back to the best one with a warning."""
    missing = [lv for lv in ("avx512", "avx2", "sse") if not cpu_supports(lv)]
    if not missing:
        pytest.skip("this CPU has every ISA level; no fallback to trigger")
    code = f"""
import warnings, numpy as np, mhc_array as mx
x = np.random.default_rng(0).uniform(0.1, 1, (4, 4)).astype(np.float32)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    mx.set_isa({missing[0]!r})
    mx.set_backend("native")
    r = mx.sinkhorn_knopp(x)
assert any({missing[0]!r} in str(m.message) for m in w), [str(m.message) for m in w]
r64 = x.astype(np.float64)
for _ in range(20):
    r64 = r64 / r64.sum(-1, keepdims=True)
    r64 = r64 / r64.sum(-2, keepdims=True)
np.testing.assert_allclose(r, r64, rtol=2e-5, atol=1e-6)
print("ok")
"""
    p = run_py(code)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok" in p.stdout


# ---------------------------------------------------------------- environment, import


def test_environment_variables():
    code = ("import mhc_array as mx; "
            "print(mx.get_backend(), mx.get_isa(), mx.get_num_threads())")
    p = run_py(code, {"MHC_ARRAY_BACKEND": "array_api", "MHC_ARRAY_ISA": "sse",
                      "MHC_ARRAY_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["array_api", "sse", "1"]
    p = run_py(code, {"MHC_ARRAY_BACKEND": "native", "MHC_ARRAY_ISA": "portable",
                      "MHC_ARRAY_NUM_THREADS": "2"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["native", "portable", "2"]
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[:2] == ["auto", "auto"]
    assert int(p.stdout.split()[2]) >= 1


def test_environment_backend_is_used():
    code = """
import numpy as np, mhc_array as mx
mx.reset_stats()
mx.sinkhorn_knopp(np.ones((3, 3)))
print(sorted(mx.stats()["sinkhorn_knopp"]))
"""
    p = run_py(code, {"MHC_ARRAY_BACKEND": "array_api"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['array_api']"


def test_import_does_not_import_frameworks():
    code = """
import sys
import mhc_array as mx
import numpy as np
mx.sinkhorn_knopp(np.ones((2, 4, 4), np.float32))
mx.spherical_distance(np.ones((3, 2)), np.ones(2))
mx.pairwise_distance(np.ones((3, 2)), np.ones((2, 2)))
print([m for m in ("torch", "cupy", "jax", "dask", "tensorflow") if m in sys.modules])
"""
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# ---------------------------------------------------------------- introspection


def test_cpu_features():
    f = mx.cpu_features()
    assert isinstance(f, dict)
    assert all(isinstance(k, str) and isinstance(v, bool) for k, v in f.items())
    if native_available():
        assert f, "cpu_features() is empty although the native backend is available"
        if sys.platform.startswith("linux") and os.path.exists("/proc/cpuinfo"):
            flags = set()
            for line in open("/proc/cpuinfo"):
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            for k in ("avx2", "avx512f", "sse2"):
                if k in f and flags:
                    assert f[k] == (k in flags), k


def test_config():
    c = mx.config()
    assert c["version"] == mx.__version__
    assert set(c["backends"]) >= {"native", "cupy", "array_api"}
    for name, b in c["backends"].items():
        assert isinstance(b["available"], bool), name
        if b["available"]:
            assert b["reason"] is None, name
        else:
            assert isinstance(b["reason"], str) and b["reason"], name
    assert c["backends"]["array_api"]["available"] is True
    assert "isa" in c and "num_threads" in c
    assert c["num_threads"] == mx.get_num_threads()
    mx.set_num_threads(1)
    assert mx.config()["num_threads"] == 1


def test_show_config(capsys):
    mx.show_config()
    out = capsys.readouterr().out
    assert mx.__version__ in out
    for name in ("native", "cupy", "array_api"):
        assert name in out


def test_cli_info():
    p = subprocess.run([sys.executable, "-m", "mhc_array", "info"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert mx.__version__ in p.stdout
    assert "array_api" in p.stdout


# ---------------------------------------------------------------- stats


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stats_zero_copy_contiguous(backend, dtype):
    rng = rng_for("stats", dtype)
    x = rng.uniform(0.1, 1, (8, 4, 4)).astype(dtype)
    rows = rng.uniform(0.1, 1, (8, 4, 9)).astype(dtype)[:, :, :4]  # row-strided
    p = rng.standard_normal((10, 3)).astype(dtype)
    c = rng.standard_normal(3).astype(dtype)
    mx.reset_stats()
    assert mx.stats() == {} or all(not v for v in mx.stats().values())
    mx.sinkhorn_knopp(x)
    mx.sinkhorn_knopp(x, logits=True)
    out = np.empty_like(x)
    mx.sinkhorn_knopp(x, out=out)
    mx.euclidean_distance(p, c)
    mx.pairwise_distance(p, p)
    s = mx.stats()
    e = s["sinkhorn_knopp"][backend]
    assert e["calls"] == 3
    assert e["zero_copy_calls"] == 3
    assert e["copies"] == 0 and e["bytes_copied"] == 0
    assert e["seconds"] >= 0
    assert s["euclidean_distance"][backend]["calls"] == 1
    assert s["euclidean_distance"][backend]["copies"] == 0
    assert s["pairwise_distance"][backend]["copies"] == 0
    if backend == "native":
        # SPEC 2.6: row-strided inputs are read in place
        mx.reset_stats()
        mx.sinkhorn_knopp(rows)
        assert mx.stats()["sinkhorn_knopp"]["native"]["copies"] == 0
    mx.reset_stats()
    assert "sinkhorn_knopp" not in mx.stats() or not mx.stats()["sinkhorn_knopp"]


@needs_native
def test_stats_counts_copy_for_column_strided():
    x = rng_for("stats-strided").uniform(0.1, 1, (8, 4, 8)).astype(np.float32)
    v = x[:, :, ::2]
    with forced("native", None):
        mx.reset_stats()
        r = mx.sinkhorn_knopp(v)
        e = mx.stats()["sinkhorn_knopp"]["native"]
        assert e["calls"] == 1 and e["zero_copy_calls"] == 0
        assert e["copies"] >= 1
        assert e["bytes_copied"] >= v.size * 4
        np.testing.assert_allclose(r, ref.sinkhorn(v), **SINK_TOL["float32"])
        mx.reset_stats()
        p = rng_for("stats-p").standard_normal((10, 6))
        mx.euclidean_distance(p[:, ::2], p[0, ::2])
        assert mx.stats()["euclidean_distance"]["native"]["copies"] >= 1


def test_stats_dtype_conversion_counted(backend):
    """float16 input is computed in float32: a conversion copy, counted."""
    x = np.ones((4, 3, 3), np.float16)
    mx.reset_stats()
    mx.sinkhorn_knopp(x)
    e = mx.stats()["sinkhorn_knopp"][backend]
    assert e["calls"] == 1 and e["copies"] >= 1 and e["bytes_copied"] > 0


def test_stats_per_backend_keys():
    if not native_available():
        pytest.skip("native backend unavailable")
    x = np.ones((3, 3), np.float64)
    mx.reset_stats()
    with mx.use_backend("array_api"):
        mx.sinkhorn_knopp(x)
    with mx.use_backend("native"):
        mx.sinkhorn_knopp(x)
        mx.sinkhorn_knopp(x)
    s = mx.stats()["sinkhorn_knopp"]
    assert s["array_api"]["calls"] == 1 and s["native"]["calls"] == 2


# ---------------------------------------------------------------- empty_aligned


@pytest.mark.parametrize("alignment", [16, 64, 128, 4096])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_aligned(alignment, dtype):
    for shape in [(7,), (3, 5), (2, 3, 4), (0,), 5]:
        a = mx.empty_aligned(shape, dtype=dtype, alignment=alignment)
        assert isinstance(a, np.ndarray)
        assert a.dtype == np.dtype(dtype)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.flags.c_contiguous and a.flags.writeable
        if a.size:
            assert a.ctypes.data % alignment == 0
            a[...] = 1.5
            assert np.all(a == 1.5)


def test_empty_aligned_default():
    a = mx.empty_aligned((10, 3))
    assert a.dtype == np.float32 and a.ctypes.data % 64 == 0


def test_empty_aligned_like_torch():
    torch = pytest.importorskip("torch")
    t = torch.zeros(2)
    a = mx.empty_aligned((5, 8), dtype="float64", alignment=128, like=t)
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float64 and a.shape == (5, 8)
    assert a.data_ptr() % 128 == 0
    a.fill_(2.0)  # usable
    assert float(a.sum()) == 80.0


def test_empty_aligned_usable_as_input_and_out(backend):
    x = mx.empty_aligned((6, 4, 4), dtype="float32")
    x[...] = rng_for("aligned").uniform(0.1, 1, x.shape)
    out = mx.empty_aligned((6, 4, 4), dtype="float32")
    r = mx.sinkhorn_knopp(x, out=out)
    assert r is out
    np.testing.assert_allclose(out, ref.sinkhorn(x), **SINK_TOL["float32"])


@pytest.mark.parametrize("alignment", [0, 3, 48, -64])
def test_empty_aligned_bad_alignment(alignment):
    with pytest.raises(ValueError):
        mx.empty_aligned((4,), alignment=alignment)
