"""The native backend specifically: CPU detection, layouts read in place, huge
values, threads, and concurrent calls from many Python threads. Every result
is compared with the float64 references of tests/reference.py."""


import re

import numpy as np
import pytest

import mhc_array as mx
import reference as ref
from mhc_array.backends import native
from conftest import cpu_supports, native_available, run_in_threads

pytestmark = pytest.mark.skipif(not native_available(), reason="native backend not built")

ISAS = [isa for isa in ("avx512", "avx2", "sse", "portable") if cpu_supports(isa)]


def _unaligned(a, offset_bytes=4):
    """A copy of ``a`` whose data starts ``offset_bytes`` past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_cpu_features_match_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    feats = mx.cpu_features()
    for ours, linux in (("sse4_1", "sse4_1"), ("avx2", "avx2"), ("fma", "fma"),
                        ("avx512f", "avx512f"), ("avx512bw", "avx512bw")):
        # the kernel lists a feature only when the OS enables its register state,
        # which is what CPUID+XGETBV report together
        usable = feats[ours] and (feats["os_avx512"] if ours.startswith("avx512")
                                  else feats["os_avx"] or ours == "sse4_1")
        assert usable == (linux in flags), (ours, feats)
    best = mx.config()["isa_best"]
    expected = ("avx512" if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= set(flags)
                else "avx2" if {"avx2", "fma"} <= set(flags)
                else "sse" if "sse4_1" in flags else "portable")
    assert best == expected


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unaligned_and_row_strided_inputs_are_read_in_place(isa, dtype):
    """Not vector-aligned (an element past a 64-byte boundary), row-strided: no copy."""
    rng = np.random.default_rng(1)
    item = np.dtype(dtype).itemsize
    x = _unaligned((rng.standard_normal((37, 19)) * 0.05).astype(dtype), item)
    wide = (rng.standard_normal((37, 29)) * 0.05).astype(dtype)
    rows = wide[:, 3:22]  # row stride 29, last axis contiguous
    c = _unaligned((rng.standard_normal(19) * 0.05).astype(dtype), item)
    tol = dict(rtol=1e-5) if dtype == "float32" else dict(rtol=1e-12)
    mx.reset_stats()
    with mx.use_backend("native"), mx.use_isa(isa):
        for arr in (x, rows):
            for manifold in ("euclidean", "poincare", "spherical"):
                got = mx.geometric_distance(arr, c, manifold=manifold)
                want = ref.distance(manifold, arr.astype(np.float64), c.astype(np.float64))
                np.testing.assert_allclose(got, want, **tol)
        m = _unaligned(rng.random((64, 5, 7)).astype(dtype), item)
        got = mx.sinkhorn_knopp(m, iterations=7)
        np.testing.assert_allclose(got, ref.sinkhorn(m.astype(np.float64), iterations=7),
                                   rtol=2e-5 if dtype == "float32" else 1e-10)
        strided = rng.random((9, 6, 11)).astype(dtype)[:, :, 2:9]  # rows of 7 in 11
        got = mx.sinkhorn_knopp(strided, iterations=5, logits=True)
        np.testing.assert_allclose(
            got, ref.sinkhorn(strided.astype(np.float64), iterations=5, logits=True),
            rtol=2e-5 if dtype == "float32" else 1e-10, atol=1e-7)
    copies = sum(e["copies"] for per in mx.stats().values() for e in per.values())
    assert copies == 0


@pytest.mark.parametrize("isa", ISAS)
def test_element_misaligned_float64_is_copied_not_misread(isa):
    """float64 data starting 4 bytes off an 8-byte boundary (NumPy allows it; C does
    not): computed correctly through one counted copy."""
    rng = np.random.default_rng(4)
    x = _unaligned((rng.standard_normal((33, 21)) * 0.05), 4)
    assert not x.flags.aligned
    mx.reset_stats()
    with mx.use_backend("native"), mx.use_isa(isa):
        got = mx.poincare_distance(x, x[3])
        s = mx.sinkhorn_knopp(_unaligned(rng.random((5, 3, 3)), 4), iterations=4)
    np.testing.assert_allclose(got, ref.distance("poincare", x, x[3]), rtol=1e-12)
    assert np.all(np.isfinite(s))
    st = mx.stats()
    assert st["poincare_distance"]["native"]["copies"] >= 1
    assert st["sinkhorn_knopp"]["native"]["copies"] >= 1


def test_abi_refuses_misaligned_pointers():
    """The C ABI checks every pointer's alignment itself (MHC_ERR_MISALIGNED) and
    writes nothing, whatever the Python side passes."""
    from mhc_array._native import ffi, lib
    raw = np.zeros(64 + 1, np.uint8)
    base = (-raw.ctypes.data) % 8
    good = ffi.cast("double *", raw.ctypes.data + base)
    bad = ffi.cast("double *", raw.ctypes.data + base + 4)
    out = np.full(4, -1.0)
    pout = ffi.cast("double *", out.ctypes.data)
    bad_out = ffi.cast("double *", out.ctypes.data + 4)
    for x, c, o in ((bad, good, pout), (good, bad, pout), (good, good, bad_out)):
        st = lib.mhc_distance_f64(0, x, 2, c, 0, o, 2, 2, 1.0, 0, 0, 1, ffi.NULL)
        assert st == lib.MHC_ERR_MISALIGNED
        st = lib.mhc_pairwise_f64(0, x, 1, 2, c, 1, 2, 2, o, 1.0, 0, 0, 1, ffi.NULL)
        assert st == lib.MHC_ERR_MISALIGNED
    st = lib.mhc_sinkhorn_f64(bad, 4, 2, pout, 4, 2, 1, 2, 2, ffi.NULL, 0, ffi.NULL, 0, 3,
                              0.0, 0, 0, 1, ffi.NULL)
    assert st == lib.MHC_ERR_MISALIGNED
    st = lib.mhc_sinkhorn_f64(good, 4, 2, pout, 4, 2, 1, 2, 2, bad, 0, ffi.NULL, 0, 3,
                              0.0, 0, 0, 1, ffi.NULL)
    assert st == lib.MHC_ERR_MISALIGNED
    np.testing.assert_array_equal(out, -1.0)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_byte_swapped_inputs_computed_in_native_order(dtype):
    """Big-endian NumPy data is neither misread as little-endian nor demoted: it is
    converted (one counted copy) and the result has the native dtype, like a ufunc's."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((7, 12)) * 0.05).astype(dtype)
    m = rng.random((9, 4, 4)).astype(dtype)
    native = np.dtype(dtype).newbyteorder("=")
    tol = dict(rtol=1e-5) if native == np.float32 else dict(rtol=1e-12)
    with mx.use_backend("native"):
        for manifold in ("euclidean", "poincare", "spherical"):
            got = mx.geometric_distance(x, x[2], manifold=manifold)
            assert got.dtype == native
            want = ref.distance(manifold, x.astype(np.float64), x[2].astype(np.float64))
            np.testing.assert_allclose(got, want, **tol, atol=1e-7)
        got = mx.sinkhorn_knopp(m)
        assert got.dtype == native
        np.testing.assert_allclose(got, ref.sinkhorn(m.astype(np.float64)),
                                   rtol=2e-5 if native == np.float32 else 1e-10, atol=1e-7)


@pytest.mark.parametrize("isa", ISAS)
def test_huge_values(isa):
    """Squares of these float32 values overflow float32; distances must not."""
    x = np.full((3, 16), 1e30, np.float32)
    x[1] *= -1
    c = np.zeros(16, np.float32)
    with mx.use_backend("native"), mx.use_isa(isa):
        got = mx.euclidean_distance(x, c)
        np.testing.assert_allclose(got, np.full(3, 4e30), rtol=1e-6)
        ang = mx.spherical_distance(x, np.full(16, 1e30, np.float32))
        np.testing.assert_allclose(ang, [0, np.pi, 0], rtol=1e-6, atol=1e-6)
        logits = np.array([[[1e30, 0], [0, -1e30]]], np.float32)
        got = mx.sinkhorn_knopp(logits, logits=True, iterations=3)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref.sinkhorn(logits.astype(np.float64), iterations=3,
                                                     logits=True), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_give_the_same_results(dtype):
    """A call large enough to be split over threads agrees with the reference."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((65536, 4, 4)).astype(dtype)
    pts = (rng.standard_normal((4000, 1024)) * 0.02).astype(dtype)
    c = pts[7]
    want_s = ref.sinkhorn(x.astype(np.float64), iterations=20, logits=True)
    want_d = ref.distance("spherical", pts.astype(np.float64), c.astype(np.float64))
    for n in (1, 2, 3):
        with mx.use_backend("native"), mx.use_num_threads(n):
            got = mx.sinkhorn_knopp(x, logits=True)
            np.testing.assert_allclose(got, want_s, rtol=2e-5 if dtype == "float32" else 1e-10,
                                       atol=1e-7)
            got = mx.spherical_distance(pts, c)
            np.testing.assert_allclose(got, want_d, rtol=1e-5 if dtype == "float32" else 1e-12,
                                       atol=1e-6 if dtype == "float32" else 1e-13)


def test_domain_error_index_from_a_later_thread_chunk():
    pts = np.zeros((4000, 1024), np.float32)
    pts[3999, 0] = 1.5  # outside the unit ball, in the last chunk
    pts[2500, 0] = 2.0  # the first offending row
    with mx.use_backend("native"), mx.use_num_threads(2):
        with pytest.raises(mx.DomainError, match=r"x\[2500\]") as info:
            mx.poincare_distance(pts, np.zeros(1024, np.float32))
    assert info.value.index == (2500,)


def test_concurrent_threaded_calls_share_the_helper_pool():
    """8 Python threads at once, each call large enough to be posted to the helper
    pool (2 to 4 threads): posts replace each other in the pool's slot, and every
    call must still finish with its own, correct result."""
    rng = np.random.default_rng(13)
    jobs = []
    for k in range(8):
        x = rng.standard_normal((8192 + 8 * k, 4, 4)).astype(np.float32)
        p = (rng.standard_normal((1200 + k, 256)) * 0.04).astype(np.float32)
        jobs.append((2 + k % 3, x, p, p[k]))
    wants = [(ref.sinkhorn(x, iterations=20, logits=True), ref.distance("poincare", p, c))
             for _, x, p, c in jobs]

    def worker(k):
        nth, x, p, c = jobs[k]
        with mx.use_backend("native"), mx.use_num_threads(nth):
            for _ in range(5):
                np.testing.assert_allclose(mx.sinkhorn_knopp(x, logits=True), wants[k][0],
                                           rtol=2e-5, atol=1e-7)
                np.testing.assert_allclose(mx.poincare_distance(p, c), wants[k][1], rtol=1e-5)

    run_in_threads(worker, len(jobs))


def test_threaded_calls_work_in_a_forked_child():
    """The helper threads do not survive fork(); a child must start its own pool
    instead of posting to helpers that do not exist (and never hang)."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    rng = np.random.default_rng(14)
    x = rng.standard_normal((16384, 4, 4)).astype(np.float32)
    want = ref.sinkhorn(x, iterations=20, logits=True)
    with mx.use_backend("native"), mx.use_num_threads(2):
        mx.sinkhorn_knopp(x, logits=True)          # the parent's pool is running now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_sinkhorn, args=(x, q))
    proc.start()
    try:
        got = q.get(timeout=60)        # before join: the child flushes its queue on exit
    except Exception:  # noqa: BLE001 - queue.Empty
        proc.kill()
        pytest.fail("the forked child hung in a threaded native call")
    proc.join(timeout=60)
    assert proc.exitcode == 0
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def _child_sinkhorn(x, q):
    with mx.use_backend("native"), mx.use_num_threads(2):
        q.put(np.asarray(mx.sinkhorn_knopp(x, logits=True)))


def test_concurrent_calls_from_eight_threads():
    """8 Python threads, each with its own inputs, ISA level and thread count,
    calling the native kernels at once (the GIL is released in C)."""
    rng = np.random.default_rng(3)
    jobs = []
    for k in range(8):
        dtype = ("float32", "float64")[k % 2]
        x = rng.standard_normal((512 + k, 4, 4)).astype(dtype)
        p = (rng.standard_normal((300 + k, 96)) * 0.05).astype(dtype)
        jobs.append((ISAS[k % len(ISAS)], 1 + k % 2, x, p, p[k]))
    wants = [(ref.sinkhorn(x.astype(np.float64), iterations=20, logits=True),
              ref.distance("poincare", p.astype(np.float64), c.astype(np.float64)))
             for _, _, x, p, c in jobs]

    def worker(k):
        isa, nth, x, p, c = jobs[k]
        with mx.use_backend("native"), mx.use_isa(isa), mx.use_num_threads(nth):
            for _ in range(20):
                s = mx.sinkhorn_knopp(x, logits=True)
                d = mx.poincare_distance(p, c)
                f32 = x.dtype == np.float32
                np.testing.assert_allclose(s, wants[k][0], rtol=2e-5 if f32 else 1e-10,
                                           atol=1e-7)
                np.testing.assert_allclose(d, wants[k][1], rtol=1e-5 if f32 else 1e-12)

    run_in_threads(worker, len(jobs))


def test_without_native_everything_runs_on_array_api(tmp_path):
    """The native module unavailable (as when it cannot be built or loaded): import
    works, config() says why, auto falls back with one warning, results agree."""
    import subprocess
    import sys
    code = """
import warnings, numpy as np, mhc_array as mx
cfg = mx.config()["backends"]["native"]
assert not cfg["available"] and "MHC_ARRAY_DISABLE_NATIVE" in cfg["reason"], cfg
x = np.random.default_rng(0).random((6, 4, 4))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = mx.sinkhorn_knopp(x)
    b = mx.sinkhorn_knopp(x)
assert sum("native backend unavailable" in str(m.message) for m in w) == 1, [str(m.message) for m in w]
assert list(mx.stats()["sinkhorn_knopp"]) == ["array_api"]
np.save(r"%s", a)
try:
    with mx.use_backend("native"):
        mx.sinkhorn_knopp(x)
except mx.BackendUnavailableError as e:
    assert "MHC_ARRAY_DISABLE_NATIVE" in str(e)
else:
    raise AssertionError("forcing native must fail")
""" % (tmp_path / "a.npy")
    env = dict(__import__("os").environ, MHC_ARRAY_DISABLE_NATIVE="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    x = np.random.default_rng(0).random((6, 4, 4))
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ref.sinkhorn(x), rtol=1e-10)


# ---------------------------------------------------------------- the raw C ABI
# Ported from native/tests/check_native.py (a script nothing ran). Status codes
# are read from lib, never written as numbers.

ISA_CODES = {"portable": 0, "sse": 1, "avx2": 2, "avx512": 3}
SK_PARAMS = ("x", "x_bstride", "x_rstride", "out", "out_bstride", "out_rstride", "batch",
             "n", "m", "row_sums", "rs_bstride", "col_sums", "cs_bstride", "iterations",
             "tau", "flags", "isa", "n_threads", "err_index")
DIST_PARAMS = ("manifold", "x", "x_rstride", "c", "c_rstride", "out", "rows", "d",
               "curvature", "on_domain_error", "isa", "n_threads", "err_index")
PAIR_PARAMS = ("manifold", "x", "nx", "x_rstride", "y", "ny", "y_rstride", "d", "out",
               "curvature", "on_domain_error", "isa", "n_threads", "err_index")


def _abi(dtype):
    from mhc_array._native import ffi, lib
    return ffi, lib, ("f32", "float") if dtype == "float32" else ("f64", "double")


def _call(fn, params, args, **override):
    args = dict(args, **override)
    return fn(*[args[p] for p in params])


def _sinkhorn_args(dtype, rng):
    """A valid call on x (2, 3, 3) -> out (2, 3, 3); returns (ffi, lib, fn, args, x, out, err)."""
    ffi, lib, (sfx, ct) = _abi(dtype)
    x = rng.uniform(0.1, 1.0, (2, 3, 3)).astype(dtype)
    out = np.full_like(x, 42)
    err = ffi.new("int64_t *", 123)
    args = dict(x=ffi.from_buffer(f"{ct}[]", x), x_bstride=9, x_rstride=3,
                out=ffi.from_buffer(f"{ct}[]", out), out_bstride=9, out_rstride=3, batch=2,
                n=3, m=3, row_sums=ffi.NULL, rs_bstride=0, col_sums=ffi.NULL, cs_bstride=0,
                iterations=5, tau=0.0, flags=0, isa=-1, n_threads=1, err_index=err)
    return ffi, lib, getattr(lib, f"mhc_sinkhorn_{sfx}"), args, x, out, err


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("override", [
    dict(batch=-1), dict(iterations=-5), dict(tau=-1.0), dict(n_threads=-1),
    dict(batch=2**40, n=2**20, m=2**20),      # batch*n*m overflows int64
    dict(x_bstride=2**62, batch=3),           # an addressed offset overflows int64
], ids=["neg-batch", "neg-iterations", "neg-tau", "neg-threads", "size-overflow",
        "stride-overflow"])
def test_abi_sinkhorn_rejects_invalid_arguments(dtype, override):
    ffi, lib, fn, args, _, out, err = _sinkhorn_args(dtype, np.random.default_rng(20))
    assert _call(fn, SK_PARAMS, args, **override) == lib.MHC_ERR_INVALID_DIMENSION
    assert err[0] == -1
    np.testing.assert_array_equal(out, 42)  # nothing written


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_abi_sinkhorn_null_input_empty_batch_and_null_err_index(dtype):
    ffi, lib, fn, args, x, out, err = _sinkhorn_args(dtype, np.random.default_rng(21))
    assert _call(fn, SK_PARAMS, args, x=ffi.NULL) == lib.MHC_ERR_NULL_POINTER
    err[0] = 123
    assert _call(fn, SK_PARAMS, args, batch=0) == lib.MHC_OK
    assert err[0] == -1
    np.testing.assert_array_equal(out, 42)
    # err_index may be NULL: the call runs and computes the result
    assert _call(fn, SK_PARAMS, args, err_index=ffi.NULL) == lib.MHC_OK
    np.testing.assert_allclose(out, ref.sinkhorn(x.astype(np.float64), iterations=5),
                               rtol=2e-5 if dtype == "float32" else 1e-10)


def _distance_args(dtype):
    """Valid calls on x, c (3, 3) -> out (3,) and pairwise x (3, 3) x c (3, 3) -> (3, 3)."""
    ffi, lib, (sfx, ct) = _abi(dtype)
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((3, 3)) * 0.2).astype(dtype)
    c = (rng.standard_normal((3, 3)) * 0.2).astype(dtype)
    out = np.full(9, 42, dtype)
    err = ffi.new("int64_t *", 123)
    px, pc, po = (ffi.from_buffer(f"{ct}[]", a) for a in (x, c, out))
    common = dict(manifold=lib.MHC_POINCARE, d=3, curvature=1.0,
                  on_domain_error=lib.MHC_DOM_RAISE, isa=-1, n_threads=1, err_index=err)
    dist = dict(common, x=px, x_rstride=3, c=pc, c_rstride=3, out=po, rows=3)
    pair = dict(common, x=px, nx=3, x_rstride=3, y=pc, ny=3, y_rstride=3, out=po)
    return (ffi, lib, (getattr(lib, f"mhc_distance_{sfx}"), DIST_PARAMS, dist),
            (getattr(lib, f"mhc_pairwise_{sfx}"), PAIR_PARAMS, pair), out, err)


DIST_BAD = [("distance", dict(manifold=7)), ("distance", dict(rows=-3)),
            ("distance", dict(curvature=-1.0)), ("distance", dict(curvature=0.0)),
            ("distance", dict(n_threads=-1)), ("distance", dict(on_domain_error=3)),
            ("pairwise", dict(manifold=7)), ("pairwise", dict(nx=-1)),
            ("pairwise", dict(ny=-2)), ("pairwise", dict(curvature=0.0)),
            ("pairwise", dict(nx=2**40, ny=2**40, x_rstride=0, y_rstride=0))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which,override", DIST_BAD,
                         ids=[f"{w}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for w, o in DIST_BAD])
def test_abi_distance_rejects_invalid_arguments(dtype, which, override):
    ffi, lib, dist, pair, out, err = _distance_args(dtype)
    fn, params, args = dist if which == "distance" else pair
    assert _call(fn, params, args, **override) == lib.MHC_ERR_INVALID_DIMENSION
    assert err[0] == -1
    np.testing.assert_array_equal(out, 42)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_abi_distance_null_pointers_and_empty_calls(dtype):
    ffi, lib, dist, pair, out, err = _distance_args(dtype)
    for fn, params, args in (dist, pair):
        for name in ("x", "c" if params is DIST_PARAMS else "y", "out"):
            assert _call(fn, params, args, **{name: ffi.NULL}) == lib.MHC_ERR_NULL_POINTER
    for fn, params, args, empty in ((*dist, dict(rows=0)), (*pair, dict(nx=0)),
                                    (*pair, dict(ny=0))):
        err[0] = 123
        assert _call(fn, params, args, **empty) == lib.MHC_OK
        assert err[0] == -1
    np.testing.assert_array_equal(out, 42)
    # a valid call with err_index NULL computes the distances
    fn, params, args = dist
    assert _call(fn, params, args, err_index=ffi.NULL) == lib.MHC_OK


def test_resolve_isa_and_vector_lanes():
    from mhc_array._native import lib
    best = lib.mhc_best_isa()
    assert best == ISA_CODES[mx.config()["isa_best"]]
    assert lib.mhc_resolve_isa(-1) == best
    assert lib.mhc_resolve_isa(99) == best
    assert lib.mhc_resolve_isa(0) == 0
    # elements per vector: portable 1, then 16-, 32- and 64-byte vectors
    lanes = {4: (1, 4, 8, 16), 8: (1, 2, 4, 8)}
    for name, isa in ISA_CODES.items():
        level = isa if cpu_supports(name) else lib.mhc_resolve_isa(isa)
        assert lib.mhc_resolve_isa(isa) == level
        assert level <= isa
        for elem in (4, 8):
            assert lib.mhc_vector_lanes(isa, elem) == lanes[elem][level], (name, elem)
        assert lib.mhc_vector_lanes(isa, 2) == 0
    for isa in (-1, 99):
        assert lib.mhc_vector_lanes(isa, 4) == lanes[4][best]


# ---------------------------------------------------------------- through the public API


def _edge_points(rng, rows, d, curvature):
    """Random directions at radius sqrt(1 - 1e-4) / sqrt(K) (K|p|^2 = 1 - 1e-4)."""
    v = rng.standard_normal((rows, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * np.sqrt(1 - 1e-4) / np.sqrt(curvature)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3, 15, 16, 17, 1024, 1031])
def test_poincare_near_the_boundary_every_width_and_layout(isa, dtype, d):
    """Points with K|p|^2 = 1 - 1e-4, far apart and 1e-6 apart, for widths around the
    vector lengths; x and c contiguous, row-strided, and c one broadcast point."""
    rng = np.random.default_rng(d)
    rows = 40
    tol = dict(rtol=1e-5) if dtype == "float32" else dict(rtol=1e-12)
    for K in (1.0, 0.37):
        edge = _edge_points(rng, rows, d, K)
        noise = rng.standard_normal((rows, d))
        cases = {"edge": (edge, _edge_points(rng, rows, d, K)),
                 "edge-tiny": (edge, edge * (1 - 1e-6) + 1e-6 * noise / np.sqrt(d * K))}
        for name, (a, b) in cases.items():
            a, b = a.astype(dtype), b.astype(dtype)
            wide_a = np.full((rows, d + 5), np.nan, dtype)
            wide_b = np.full((rows, d + 2), np.nan, dtype)
            wide_a[:, :d], wide_b[:, :d] = a, b
            layouts = {"contiguous": (a, b), "row-strided": (wide_a[:, :d], wide_b[:, :d]),
                       "c-broadcast": (a, b[0])}
            for layout, (x, c) in layouts.items():
                want = ref.poincare(x, c, K)
                assert np.all(np.isfinite(want))
                with mx.use_backend("native"), mx.use_isa(isa):
                    got = mx.poincare_distance(x, c, curvature=K)
                np.testing.assert_allclose(got, want, **tol, err_msg=f"{name} {layout} K={K}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [
    dict(iterations=20, logits=True),
    dict(iterations=20, tau=0.1, order="cols-first"),
    dict(iterations=0, logits=True),
    dict(iterations=1, logits=True, order="cols-first"),
], ids=["logits", "tau-cols-first", "zero-iterations", "one-iteration"])
def test_sinkhorn_large_matrices(dtype, kw):
    """Two 512 x 1024 matrices (the large-matrix kernel) at every ISA level."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 512, 1024))
    if not kw.get("logits"):
        x = np.abs(x)
    x = x.astype(dtype)
    want = ref.sinkhorn(x.astype(np.float64), **kw)
    # entries are O(1/1024): an absolute slack far below them
    tol = dict(rtol=2e-5, atol=1e-9) if dtype == "float32" else dict(rtol=1e-10, atol=1e-15)
    for isa in ISAS:
        with mx.use_backend("native"), mx.use_isa(isa):
            got = mx.sinkhorn_knopp(x, **kw)
        np.testing.assert_allclose(got, want, **tol, err_msg=isa)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sinkhorn_domain_error_index_with_threads(dtype):
    """A negative entry (not logits) at matrix 3000, element 5 of 4096 4x4 matrices,
    split over 2 threads: the error names that entry, and x is unchanged."""
    x = np.abs(np.random.default_rng(6).standard_normal((4096, 4, 4))).astype(dtype)
    x[3000, 1, 1] = -1
    x[3500, 0, 0] = -2  # a later one, not the first
    keep = x.copy()
    with mx.use_backend("native"), mx.use_num_threads(2):
        with pytest.raises(mx.DomainError, match=r"x\[3000, 1, 1\]") as info:
            mx.sinkhorn_knopp(x)
    assert info.value.index == (3000, 1, 1)
    np.testing.assert_array_equal(x, keep)


def _amd_family_19h():
    """AMD family 19h (Zen 3/4), read from /proc/cpuinfo, independently of the library."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M)
    if not (vendor and family):
        return None
    return vendor.group(1) == "AuthenticAMD" and int(family.group(1)) == 0x19


def test_auto_rules_follow_the_cpu():
    """`auto` takes the large-matrix Sinkhorn from AVX2 exactly on AVX-512 CPUs whose
    units are 256 bits wide (AMD family 19h), where AVX2's kernel was measured faster:
    there auto's results are AVX2's, bit for bit; elsewhere no rule applies."""
    if not native_available():
        pytest.skip("the native backend is not built")
    zen4 = _amd_family_19h()
    if zen4 is None:
        pytest.skip("no /proc/cpuinfo vendor and family to check against")
    lib = native.lib
    half = bool(zen4 and cpu_supports("avx512"))
    assert bool(lib.mhc_avx512_half_width()) == half
    assert bool(lib.mhc_auto_rules() & lib.MHC_RULE_SK_LARGE_AVX2) == half
    assert bool(mx.config()["native_auto_rules"]) == half
    x = np.random.default_rng(0).random((3, 40, 70)).astype(np.float32)
    with mx.use_isa("auto"):
        got = mx.sinkhorn_knopp(x, iterations=7)
    want_level = "avx2" if half else mx.config()["isa_best"]
    with mx.use_isa(want_level):
        want = mx.sinkhorn_knopp(x, iterations=7)
    np.testing.assert_array_equal(got, want)


def test_auto_rule_of_the_rows_projection():
    """On AVX-512 CPUs with 256-bit units `auto` projects float32 streams onto phi's
    rows (the paper's layout) with AVX2's kernel and onto V4's fn with AVX-512's:
    h_pre and h_post (scalar code after the projection) equal those levels' bit for
    bit, on several tile shapes (8, 4 and 1 token); elsewhere the rule is off."""
    if not native_available():
        pytest.skip("the native backend is not built")
    zen4 = _amd_family_19h()
    if zen4 is None:
        pytest.skip("no /proc/cpuinfo vendor and family to check against")
    half = bool(zen4 and cpu_supports("avx512"))
    assert bool(native.lib.mhc_auto_rules() & native.lib.MHC_RULE_HC_ROWS_AVX2) == half
    rng = np.random.default_rng(5)
    n, C, T, K = 4, 200, 13, 24
    x = rng.standard_normal((T, n, C)).astype(np.float32)
    w = (rng.standard_normal((n * C, K)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal(K) * 0.3).astype(np.float32)
    alpha = np.array([0.7, 0.4, 0.9], np.float32)
    for variant, phi in (("paper", w), ("deepseek-v4", np.ascontiguousarray(w.T))):
        with mx.use_isa("auto"):
            got = mx.mhc_pre(x, phi, bias, alpha, variant=variant)
        level = ("avx2" if variant == "paper" else "avx512") if half else mx.config()["isa_best"]
        with mx.use_isa(level):
            want = mx.mhc_pre(x, phi, bias, alpha, variant=variant)
        np.testing.assert_array_equal(got[1], want[1])   # h_pre
        np.testing.assert_array_equal(got[2], want[2])   # h_post


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_v4_projection_in_rows_layout(dtype):
    """MHC_HC_ROWS: DeepSeek-V4's connection with its projection given as (n*C, K)
    rows (a module's prepared copy of fn) gives V4's coefficients; the paper variant
    and the backward refuse the flag."""
    if not native_available():
        pytest.skip("the native backend is not built")
    ffi, lib = native.ffi, native.lib
    sfx, ctype = ("f32", "float[]") if dtype == np.float32 else ("f64", "double[]")
    rng = np.random.default_rng(3)
    n, C, T, K = 4, 40, 7, 24
    x = rng.standard_normal((T, n, C)).astype(dtype)
    fn = (rng.standard_normal((K, n * C)) * 0.05).astype(dtype)
    rows = np.zeros((n * C, K + 3), dtype)            # a row stride beyond K
    rows[:, :K] = fn.T
    b = (rng.standard_normal(K) * 0.3).astype(dtype)
    a = np.array([0.7, 0.4, 0.9], dtype)
    want = ref.mhc_pre(x.astype(np.float64), fn.astype(np.float64), b.astype(np.float64),
                       a.astype(np.float64), variant="deepseek-v4")
    outs = [np.empty((T, C), dtype), np.empty((T, n), dtype), np.empty((T, n), dtype),
            np.empty((T, n, n), dtype)]
    P = lambda v: ffi.from_buffer(ctype, v)       # noqa: E731
    pre = getattr(lib, f"mhc_hc_pre_{sfx}")
    for variant, ok in ((lib.MHC_HC_DEEPSEEK_V4 | lib.MHC_HC_ROWS, True),
                        (lib.MHC_HC_PAPER | lib.MHC_HC_ROWS, False)):
        st = pre(P(x), n * C, T, n, C, P(rows), K + 3, P(b), P(a), variant, 20, 1e-6, 1e-6,
                 *[P(o) for o in outs], ffi.NULL, -1, 1)
        if not ok:
            assert st == lib.MHC_ERR_INVALID_DIMENSION
            continue
        assert st == lib.MHC_OK
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for got, w in zip(outs, want):
            np.testing.assert_allclose(got, w, rtol=tol, atol=tol)
    g = [np.zeros_like(o) for o in outs]
    gx = np.empty_like(x)
    z = [np.empty((T, K), dtype) for _ in range(3)]
    st = getattr(lib, f"mhc_hc_pre_backward_{sfx}")(
        P(x), n * C, T, n, C, P(rows), K + 3, P(np.ascontiguousarray(fn)), P(b), P(a),
        lib.MHC_HC_DEEPSEEK_V4 | lib.MHC_HC_ROWS, 20, 1e-6, 1e-6, *[P(v) for v in g],
        P(gx), n * C, *[P(v) for v in z], ffi.NULL, -1, 1)
    assert st == lib.MHC_ERR_INVALID_DIMENSION


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse", "portable"])
@pytest.mark.parametrize("C", [37, 64, 100])
def test_hc_post_bf16_is_the_float_kernel_rounded_once(isa, C):
    """mhc_hc_post_bf16 (bfloat16 streams read and written as they are) equals
    mhc_hc_post_f32 on the streams widened to float32, rounded to bfloat16 by torch
    (an independent conversion: nearest even, NaN kept, subnormals rounded -- the
    AVX-512 BF16 instruction flushes them, so its kernel must not), bit for bit; in
    place too; h_res read through its transpose's strides (V4's comb in place); and
    near the float64 equations."""
    if not cpu_supports(isa):
        pytest.skip(f"this CPU lacks {isa}")
    torch = pytest.importorskip("torch")
    ffi, lib = native.ffi, native.lib
    g = torch.Generator().manual_seed(C)
    T, n = 7, 4
    x = torch.randn(T, n, C, generator=g).to(torch.bfloat16)
    f = torch.randn(T, C, generator=g).to(torch.bfloat16)
    x[0, 0, 0], x[1, 1, 3], f[2, 5] = float("nan"), float("inf"), 3e38
    x[6], f[6] = x[6] * 1e-38, f[6] * 1e-38          # sums in the subnormal range
    p, r = torch.rand(T, n, generator=g) * 2, torch.rand(T, n, n, generator=g)
    U = lambda t: ffi.cast("uint16_t *", t.data_ptr())    # noqa: E731
    F = lambda t: ffi.cast("float *", t.data_ptr())       # noqa: E731
    code = native.ISA_CODES[isa]
    out = torch.empty(T, n, C, dtype=torch.bfloat16)
    x_before = x.clone()
    assert lib.mhc_hc_post_bf16(U(x), n * C, U(f), C, F(p), n, F(r), n * n, n, 1, U(out), n * C,
                                T, n, C, code, 1) == lib.MHC_OK
    assert torch.equal(x.view(torch.int16), x_before.view(torch.int16))
    xf, ff, o32 = x.float(), f.float(), torch.empty(T, n, C)
    assert lib.mhc_hc_post_f32(F(xf), n * C, F(ff), C, F(p), F(r), F(o32), n * C, T, n, C,
                               code, 1) == lib.MHC_OK
    want = o32.to(torch.bfloat16)
    assert bool((want[6].float().abs() < 1.1754944e-38).any() & (want[6] != 0).any())

    def same(got):
        return bool(((got.view(torch.int16) == want.view(torch.int16))
                     | (got.isnan() & want.isnan())).all())
    assert same(out)
    inplace = x.clone()
    assert lib.mhc_hc_post_bf16(U(inplace), n * C, U(f), C, F(p), n, F(r), n * n, n, 1,
                                U(inplace), n * C, T, n, C, code, 1) == lib.MHC_OK
    assert same(inplace)
    comb = r.transpose(-1, -2).contiguous()          # h_res = comb^T, read in place
    assert lib.mhc_hc_post_bf16(U(x), n * C, U(f), C, F(p), n, F(comb), n * n, 1, n, U(out),
                                n * C, T, n, C, code, 1) == lib.MHC_OK
    assert same(out)
    fine = torch.isfinite(want.float())
    ref64 = ref.mhc_post(*(t.double().numpy() for t in (x, f, p, r)))
    np.testing.assert_allclose(out.float().numpy()[fine.numpy()], ref64[fine.numpy()],
                               rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse", "portable"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4", "rows"])
@pytest.mark.parametrize("C,T", [(37, 5), (64, 3), (100, 40)])
def test_hc_pre_bf16_is_the_float_kernel_on_widened_streams(isa, variant, C, T):
    """mhc_hc_pre_bf16 (bfloat16 streams read as they are, a sub-block at a time)
    gives mhc_hc_pre_f32's coefficients on the streams widened to float32 bit for
    bit, and its h_in rounded to bfloat16 by torch (nearest even); x untouched;
    strided tokens; T = 40 at C = 100 spans several sub-blocks (with a workspace
    and without); near the float64 equations."""
    if not cpu_supports(isa):
        pytest.skip(f"this CPU lacks {isa}")
    torch = pytest.importorskip("torch")
    ffi, lib = native.ffi, native.lib
    g = torch.Generator().manual_seed(C + T)
    n = 4
    K = (2 + n) * n
    L = n * C
    xs = torch.randn(T, L + 8, generator=g).to(torch.bfloat16)    # token stride L + 8
    x = xs[:, :L]
    if variant == "paper":
        phi, flag = torch.randn(L, K, generator=g) * 0.05, lib.MHC_HC_PAPER
    elif variant == "deepseek-v4":
        phi, flag = torch.randn(K, L, generator=g) * 0.05, lib.MHC_HC_DEEPSEEK_V4
    else:
        phi, flag = (torch.randn(L, K, generator=g) * 0.05,
                     lib.MHC_HC_DEEPSEEK_V4 | lib.MHC_HC_ROWS)
    bias = torch.randn(K, generator=g) * 0.3
    alpha = torch.tensor([0.7, 0.4, 0.9])
    U = lambda t: ffi.cast("uint16_t *", t.data_ptr())    # noqa: E731
    F = lambda t: ffi.cast("float *", t.data_ptr())       # noqa: E731
    code = native.ISA_CODES[isa]
    before = xs.clone()
    xf = x.float().contiguous()
    want = [torch.empty(T, C), torch.empty(T, n), torch.empty(T, n), torch.empty(T, n, n)]
    assert lib.mhc_hc_pre_f32(F(xf), L, T, n, C, F(phi), phi.shape[1], F(bias), F(alpha),
                              flag, 20, 1e-6, 1e-6, *[F(w) for w in want], ffi.NULL, code,
                              1) == lib.MHC_OK
    for threads in (1, 2):
        got = [torch.empty(T, C, dtype=torch.bfloat16), torch.empty(T, n), torch.empty(T, n),
               torch.empty(T, n, n)]
        ws = lib.mhc_hc_ws_create() if threads == 2 else ffi.NULL
        assert lib.mhc_hc_pre_bf16(U(xs), L + 8, T, n, C, F(phi), phi.shape[1], F(bias),
                                   F(alpha), flag, 20, 1e-6, 1e-6, U(got[0]),
                                   *[F(w) for w in got[1:]], ws, code, threads) == lib.MHC_OK
        if ws != ffi.NULL:
            lib.mhc_hc_ws_destroy(ws)
        assert torch.equal(got[0].view(torch.int16),
                           want[0].to(torch.bfloat16).view(torch.int16)), threads
        for a, b in zip(got[1:], want[1:]):
            assert torch.equal(a, b), threads
    assert torch.equal(xs.view(torch.int16), before.view(torch.int16))
    v = "paper" if variant == "paper" else "deepseek-v4"
    fn = phi.T if variant == "rows" else phi
    ref64 = ref.mhc_pre(x.reshape(T, n, C).double().numpy(), fn.double().numpy(),
                        bias.double().numpy(), alpha.double().numpy(), variant=v)
    np.testing.assert_allclose(got[0].double().numpy(), ref64[0], rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(got[3].double().numpy(), ref64[3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse", "portable"])
@pytest.mark.parametrize("variant", ["paper", "deepseek-v4", "rows"])
@pytest.mark.parametrize("C,T,f_tstride,inplace", [(37, 5, 37, False), (64, 3, 0, True),
                                                   (100, 40, 104, True)])
def test_hc_post_pre_bf16_is_the_float_kernel_on_widened_streams(isa, variant, C, T,
                                                                  f_tstride, inplace):
    """mhc_hc_post_pre_bf16 gives mhc_hc_post_pre_f32's results on x and f widened
    to float32: the coefficients bit for bit, x_next and h_in rounded to bfloat16 by
    torch; one f for every token (stride 0), x_next written over x, the new
    coefficients over the old ones, several sub-blocks."""
    if not cpu_supports(isa):
        pytest.skip(f"this CPU lacks {isa}")
    torch = pytest.importorskip("torch")
    ffi, lib = native.ffi, native.lib
    g = torch.Generator().manual_seed(C + T)
    n = 4
    K, L = (2 + n) * n, n * C
    x = torch.randn(T, L, generator=g).to(torch.bfloat16)
    f = torch.randn(max(T * f_tstride, C), generator=g).to(torch.bfloat16)
    hp, hr = torch.rand(T, n, generator=g) * 2, torch.rand(T, n, n, generator=g)
    if variant == "paper":
        phi, flag = torch.randn(L, K, generator=g) * 0.05, lib.MHC_HC_PAPER
    elif variant == "deepseek-v4":
        phi, flag = torch.randn(K, L, generator=g) * 0.05, lib.MHC_HC_DEEPSEEK_V4
    else:
        phi, flag = (torch.randn(L, K, generator=g) * 0.05,
                     lib.MHC_HC_DEEPSEEK_V4 | lib.MHC_HC_ROWS)
    bias, alpha = torch.randn(K, generator=g) * 0.3, torch.tensor([0.7, 0.4, 0.9])
    U = lambda t: ffi.cast("uint16_t *", t.data_ptr())    # noqa: E731
    F = lambda t: ffi.cast("float *", t.data_ptr())       # noqa: E731
    code = native.ISA_CODES[isa]
    want = [torch.empty(T, L), torch.empty(T, C), torch.empty(T, n), torch.empty(T, n),
            torch.empty(T, n, n)]
    assert lib.mhc_hc_post_pre_f32(
        F(x.float()), L, F(f.float()), f_tstride, F(hp), F(hr), F(want[0]), L, T, n, C,
        F(phi), phi.shape[1], F(bias), F(alpha), flag, 20, 1e-6, 1e-6,
        *[F(w) for w in want[1:]], ffi.NULL, code, 1) == lib.MHC_OK
    xin = x.clone()
    out = xin if inplace else torch.empty(T, L, dtype=torch.bfloat16)
    h_in = torch.empty(T, C, dtype=torch.bfloat16)
    coef = [torch.empty(T, n), hp.clone() if inplace else torch.empty(T, n),
            hr.clone() if inplace else torch.empty(T, n, n)]
    php, phr = (coef[1], coef[2]) if inplace else (hp, hr)
    ws = lib.mhc_hc_ws_create()
    assert lib.mhc_hc_post_pre_bf16(
        U(xin), L, U(f), f_tstride, F(php), F(phr), U(out), L, T, n, C, F(phi), phi.shape[1],
        F(bias), F(alpha), flag, 20, 1e-6, 1e-6, U(h_in), *[F(w) for w in coef], ws, code,
        1) == lib.MHC_OK
    lib.mhc_hc_ws_destroy(ws)
    if not inplace:
        assert torch.equal(xin.view(torch.int16), x.view(torch.int16))
    for got, w in ((out, want[0]), (h_in, want[1])):
        assert torch.equal(got.view(torch.int16), w.to(torch.bfloat16).view(torch.int16))
    for got, w in zip(coef, want[2:]):
        assert torch.equal(got, w)


def test_hc_pre_bf16_refuses_bad_arguments():
    if not native_available():
        pytest.skip("the native backend is not built")
    ffi, lib = native.ffi, native.lib
    n, C = 1, 4
    K = (2 + n) * n
    buf = np.zeros(64, np.uint16)
    fl = np.ones(64, np.float32)
    u = ffi.cast("uint16_t *", buf.ctypes.data)
    odd = ffi.cast("uint16_t *", buf.ctypes.data + 1)
    fp = ffi.cast("float *", fl.ctypes.data)

    def call(x, h_in, n=n, ts=n * C, ldp=K):
        return lib.mhc_hc_pre_bf16(x, ts, 2, n, C, fp, ldp, fp, fp, lib.MHC_HC_PAPER, 3, 1e-6,
                                   0.0, h_in, fp + 16, fp + 20, fp + 24, ffi.NULL, -1, 1)
    assert call(ffi.NULL, u + 32) == lib.MHC_ERR_NULL_POINTER
    assert call(u, ffi.NULL) == lib.MHC_ERR_NULL_POINTER
    assert call(odd, u + 32) == lib.MHC_ERR_MISALIGNED
    assert call(u, odd + 32) == lib.MHC_ERR_MISALIGNED
    assert call(u, u + 32, n=0) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 32, ts=n * C - 1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 32, ldp=K - 1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 32) == lib.MHC_OK


def test_hc_post_bf16_refuses_bad_arguments():
    if not native_available():
        pytest.skip("the native backend is not built")
    ffi, lib = native.ffi, native.lib
    buf = np.zeros(64, np.uint16)
    fl = np.ones(16, np.float32)
    u = ffi.cast("uint16_t *", buf.ctypes.data)
    odd = ffi.cast("uint16_t *", buf.ctypes.data + 1)
    fp = ffi.cast("float *", fl.ctypes.data)
    def args(x, f, o, n=1, C=4, ts=4, rs=(1, 1, 1)):
        return (x, ts, f, C, fp, 1, fp, *rs, o, ts, 2, n, C, -1, 1)
    assert lib.mhc_hc_post_bf16(*args(ffi.NULL, u, u)) == lib.MHC_ERR_NULL_POINTER
    for rs in ((-1, 1, 1), (1, -1, 1), (1, 1, -1), (2**63 - 1, 1, 1)):  # negative, overflow
        assert lib.mhc_hc_post_bf16(*args(u, u + 40, u + 16, rs=rs)) == \
            lib.MHC_ERR_INVALID_DIMENSION, rs
    assert lib.mhc_hc_post_bf16(*args(odd, u, u + 32)) == lib.MHC_ERR_MISALIGNED
    assert lib.mhc_hc_post_bf16(*args(u, u + 40, u, n=0)) == lib.MHC_ERR_INVALID_DIMENSION
    # out overlapping x without being x
    assert lib.mhc_hc_post_bf16(*args(u, u + 40, u + 2)) == lib.MHC_ERR_INVALID_DIMENSION
    assert lib.mhc_hc_post_bf16(*args(u, u + 40, u + 16)) == lib.MHC_OK


def test_hc_post_pre_bf16_refuses_bad_arguments():
    if not native_available():
        pytest.skip("the native backend is not built")
    ffi, lib = native.ffi, native.lib
    n, C = 1, 4
    K = (2 + n) * n
    buf = np.zeros(128, np.uint16)
    fl = np.ones(64, np.float32)
    u = ffi.cast("uint16_t *", buf.ctypes.data)
    odd = ffi.cast("uint16_t *", buf.ctypes.data + 1)
    fp = ffi.cast("float *", fl.ctypes.data)

    def call(x, out, h_in, n=n, ldp=K, h_post2=fp + 32):
        return lib.mhc_hc_post_pre_bf16(x, n * C, u + 16, C, fp + 16, fp + 24, out, n * C, 2,
                                        n, C, fp, ldp, fp, fp, lib.MHC_HC_PAPER, 3, 1e-6, 0.0,
                                        h_in, fp + 40, h_post2, fp + 48, ffi.NULL, -1, 1)
    assert call(ffi.NULL, u + 32, u + 48) == lib.MHC_ERR_NULL_POINTER
    assert call(u, u + 32, ffi.NULL) == lib.MHC_ERR_NULL_POINTER
    assert call(odd, u + 32, u + 48) == lib.MHC_ERR_MISALIGNED
    assert call(u, u + 32, odd + 48) == lib.MHC_ERR_MISALIGNED
    assert call(u, u + 32, u + 48, n=0) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 32, u + 48, ldp=K - 1) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 2, u + 48) == lib.MHC_ERR_INVALID_DIMENSION      # out overlaps x
    assert call(u, u + 32, u + 36) == lib.MHC_ERR_INVALID_DIMENSION     # h_in overlaps out
    assert call(u, u + 32, u + 48, h_post2=fp + 17) == lib.MHC_ERR_INVALID_DIMENSION
    assert call(u, u + 32, u + 48) == lib.MHC_OK
    assert call(u, u, u + 48) == lib.MHC_OK                             # in place


def test_hc_post_bf16_rounds_ties_to_even():
    """1 + 2^-8 and 1 + 3 * 2^-8 lie halfway between bfloat16 neighbours: nearest
    even gives 1.0 and 1 + 2^-6 (0x3F80, 0x3F82); one stream, h_res = h_post = 1."""
    if not native_available():
        pytest.skip("the native backend is not built")
    ffi, lib = native.ffi, native.lib
    C = 40                                     # vector lanes and a scalar tail
    x = np.full(C, 0x3F80, np.uint16)          # 1.0
    f = np.where(np.arange(C) % 2 == 0, 0x3B80, 0x3C40).astype(np.uint16)  # 2^-8, 3 * 2^-8
    one = np.ones(1, np.float32)
    out = np.zeros(C, np.uint16)
    U = lambda a: ffi.cast("uint16_t *", a.ctypes.data)   # noqa: E731
    F = ffi.cast("float *", one.ctypes.data)
    for isa in ("avx512", "avx2", "sse", "portable"):
        if not cpu_supports(isa):
            continue
        assert lib.mhc_hc_post_bf16(U(x), C, U(f), C, F, 1, F, 1, 1, 1, U(out), C, 1, 1, C,
                                    native.ISA_CODES[isa], 1) == lib.MHC_OK
        want = np.where(np.arange(C) % 2 == 0, 0x3F80, 0x3F82)
        np.testing.assert_array_equal(out, want, err_msg=isa)


@pytest.fixture
def small_pool(monkeypatch):
    """The pool of large outputs from 64 KB (its threshold lowered for the test)."""
    if not native_available():
        pytest.skip("the native backend is not built")
    monkeypatch.setattr(native._outputs, "MIN_BYTES", 1 << 16)
    native._outputs.clear()
    yield native._outputs
    native._outputs.clear()


def _connection(seed, T=64, n=4, C=512):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n, C)).astype(np.float32)
    phi = (rng.standard_normal((n * C, (2 + n) * n)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal((2 + n) * n) * 0.3).astype(np.float32)
    return x, phi, bias, np.array([0.7, 0.4, 0.9], np.float32)


def _h_in(args):
    """h_in of mhc_pre in float64 NumPy (the paper's variant, written plainly)."""
    x, phi, bias, alpha = (a.astype(np.float64) for a in args)
    T, n, C = x.shape
    flat = x.reshape(T, n * C)
    r = 1 / np.sqrt((flat ** 2).mean(axis=1, keepdims=True) + 1e-6)
    h_pre = 1 / (1 + np.exp(-(alpha[0] * (flat @ phi[:, :n]) * r + bias[:n])))
    return np.einsum("ti,tic->tc", h_pre, x)


def test_output_pool_never_shares_a_held_result(small_pool):
    """A large output's buffer is handed out again only when nothing holds the earlier
    result: held results (the array, a view of it, a tensor or a DLPack capsule made
    from it) keep their values through later calls; a dropped one's buffer is reused."""
    a, b = _connection(1), _connection(2)
    first = mx.mhc_pre(*a)[0]
    want_a, want_b = _h_in(a), _h_in(b)
    np.testing.assert_allclose(first, want_a, rtol=1e-4, atol=1e-5)
    # (hold the result, read the holder back as NumPy, or None where it cannot be)
    holders = [(lambda r: r[::3], lambda k: k), (lambda r: r.reshape(-1), lambda k: k),
               (memoryview, np.asarray), (lambda r: r.__dlpack__(), None)]
    try:
        import torch
        holders.append((torch.from_numpy, lambda k: k.numpy()))
    except ImportError:
        pass
    for hold, back in holders:
        res = mx.mhc_pre(*a)[0]
        addr, values = res.ctypes.data, res.copy()
        kept = hold(res)
        del res
        other = mx.mhc_pre(*b)[0]
        assert other.ctypes.data != addr
        np.testing.assert_allclose(other, want_b, rtol=1e-4, atol=1e-5)
        if back is not None:
            np.testing.assert_array_equal(back(kept), hold(values) if back is not np.asarray
                                          else values)
        del kept, other
    np.testing.assert_allclose(first, want_a, rtol=1e-4, atol=1e-5)
    # dropped: the next result of that size lies in a pooled buffer, with its own values
    res = mx.mhc_pre(*a)[0]
    del res
    pooled = {buf.ctypes.data for buf in small_pool._bufs}
    res = mx.mhc_pre(*b)[0]
    assert res.ctypes.data in pooled
    np.testing.assert_allclose(res, want_b, rtol=1e-4, atol=1e-5)


def test_output_pool_is_bounded(small_pool):
    """The pool keeps at most MAX_BUFFERS buffers: results held beyond it are their
    callers' alone (each still correct), and outputs below MIN_BYTES never enter it."""
    args = _connection(3)
    want = _h_in(args)
    held = [mx.mhc_pre(*args)[0] for _ in range(small_pool.MAX_BUFFERS + 3)]
    assert len({r.ctypes.data for r in held}) == len(held)
    assert len(small_pool._bufs) == small_pool.MAX_BUFFERS
    for r in held:
        np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
    small_pool.clear()
    mx.mhc_pre(*_connection(4, T=2, C=64))
    assert small_pool._bufs == []


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse", "portable"])
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("fused", [False, True])
def test_hc_pre_large_h_in_streams_past_the_cache(isa, offset, fused):
    """h_in over 32 MB is written with streaming stores after a peel to the vector
    boundary: h_in starting 0, 1 or 3 floats past an aligned address, against the
    float64 equations (one stream: h_in = h_pre * x), by mhc_hc_pre and by the fused
    boundary (x_next = h_res x + h_post f, then its h_in)."""
    if not native_available():
        pytest.skip("the native backend is not built")
    if not cpu_supports(isa):
        pytest.skip(f"this CPU lacks {isa}")
    ffi, lib = native.ffi, native.lib
    rng = np.random.default_rng(offset)
    T, n, C = 2100, 1, 4096                                # h_in: 34.4 MB of float32
    x = rng.standard_normal((T, n, C)).astype(np.float32)
    phi = (rng.standard_normal((n * C, 3)) * 0.02).astype(np.float32)
    bias = (rng.standard_normal(3) * 0.3).astype(np.float32)
    alpha = np.array([0.7, 0.4, 0.9], np.float32)
    raw = np.full(T * C + 64, np.nan, np.float32)
    start = (-raw.ctypes.data % 64) // 4 + offset
    h_in = raw[start:start + T * C].reshape(T, C)
    rest = [np.empty((T, n), np.float32), np.empty((T, n), np.float32),
            np.empty((T, n, n), np.float32)]
    F = lambda a: ffi.cast("float *", a.ctypes.data)      # noqa: E731
    code = native.ISA_CODES[isa]
    if fused:
        f = rng.standard_normal((T, C)).astype(np.float32)
        hp = rng.uniform(0, 2, (T, 1)).astype(np.float32)
        hr = rng.uniform(0.5, 1, (T, 1, 1)).astype(np.float32)
        nxt = np.empty_like(x)
        assert lib.mhc_hc_post_pre_f32(F(x), C, F(f), C, F(hp), F(hr), F(nxt), C, T, n, C,
                                       F(phi), 3, F(bias), F(alpha), lib.MHC_HC_PAPER, 20,
                                       1e-6, 1e-6, F(h_in), *[F(a) for a in rest], ffi.NULL,
                                       code, 1) == lib.MHC_OK
        x = (hr[:, 0].astype(np.float64) * x[:, 0] + hp.astype(np.float64) * f)[:, None, :]
        np.testing.assert_allclose(nxt, x, rtol=2e-5, atol=1e-5)
    else:
        assert lib.mhc_hc_pre_f32(F(x), n * C, T, n, C, F(phi), 3, F(bias), F(alpha),
                                  lib.MHC_HC_PAPER, 20, 1e-6, 1e-6, F(h_in),
                                  *[F(a) for a in rest], ffi.NULL, code, 1) == lib.MHC_OK
    x64 = x.astype(np.float64).reshape(T, C)
    r = 1 / np.sqrt((x64 ** 2).mean(axis=1) + 1e-6)
    h_pre = 1 / (1 + np.exp(-(alpha[0] * (x64 @ phi[:, 0].astype(np.float64)) * r + bias[0])))
    np.testing.assert_allclose(h_in, h_pre[:, None] * x64, rtol=2e-5, atol=1e-6)
    assert np.isnan(raw[:start]).all() and np.isnan(raw[start + T * C:]).all()
