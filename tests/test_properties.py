"""Property-based checks (hypothesis) against the same references, on every available
backend/ISA level (looped inside the test: hypothesis and function-scoped fixtures do
not mix)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mhc_array as mx
import reference as ref
from conftest import BACKEND_PARAMS, DIST_TOL, SINK_TOL, cpu_supports, forced, native_available

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def configs():
    for name, isa in BACKEND_PARAMS:
        if name == "native" and (not native_available() or not cpu_supports(isa)):
            continue
        yield name, isa


@st.composite
def matrices(draw, dtype):
    batch = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    n = draw(st.integers(1, 9))
    m = draw(st.integers(1, 9))
    elems = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                      width=32 if dtype == np.float32 else 64)
    x = draw(hnp.arrays(dtype, batch + (n, m), elements=elems))
    return x


@SETTINGS
@given(x=matrices(np.float64), iterations=st.integers(0, 6),
       tau=st.sampled_from([0.0, 1e-3, 0.5]),
       order=st.sampled_from(["rows-first", "cols-first"]))
def test_sinkhorn_float64(x, iterations, tau, order):
    want = ref.sinkhorn(x, iterations=iterations, tau=tau, order=order)
    # entries can be 0 and scales differ by up to 1e3: absolute slack relative to the
    # largest entry of each result
    for cfg in configs():
        with forced(*cfg):
            r = mx.sinkhorn_knopp(x, iterations=iterations, tau=tau, order=order)
        assert r.shape == x.shape and r.dtype == x.dtype
        np.testing.assert_allclose(r, want, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(want).max(
            initial=0.0)), err_msg=str(cfg))


@SETTINGS
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 6),
                                          st.integers(1, 6)),
                    elements=st.floats(-30, 30, width=32)),
       order=st.sampled_from(["rows-first", "cols-first"]))
def test_sinkhorn_logits_float32(x, order):
    want = ref.sinkhorn(x, iterations=8, logits=True, order=order)
    for cfg in configs():
        with forced(*cfg):
            r = mx.sinkhorn_knopp(x, iterations=8, logits=True, order=order)
        assert r.dtype == np.float32
        np.testing.assert_allclose(r, want, **SINK_TOL["float32"], err_msg=str(cfg))


@st.composite
def point_pairs(draw, dtype, scale):
    d = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    # coordinates are 0 or at least 1e-6 in magnitude: tiny distances are tested
    # explicitly in test_distances.py; here the search covers ordinary inputs
    elems = st.floats(-scale, scale, allow_nan=False, allow_subnormal=False,
                      width=32 if dtype == np.float32 else 64).map(
        lambda v: 0.0 if abs(v) < 1e-6 else v)
    x = draw(hnp.arrays(dtype, (k, d), elements=elems))
    c = draw(hnp.arrays(dtype, (k, d), elements=elems))
    return x, c


@SETTINGS
@given(pair=point_pairs(np.float64, 1e3))
def test_euclidean_float64(pair):
    x, c = pair
    want = ref.euclidean(x, c)
    for cfg in configs():
        with forced(*cfg):
            np.testing.assert_allclose(mx.euclidean_distance(x, c), want, rtol=1e-12,
                                       atol=0, err_msg=str(cfg))


@SETTINGS
@given(pair=point_pairs(np.float32, 0.5), K=st.sampled_from([0.5, 1.0, 2.0]))
def test_poincare_float32(pair, K):
    x, c = pair
    # keep both points inside the ball (|x|^2 <= 0.5^2 * 12 may exceed it: rescale)
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    for p in (x64, c64):
        nrm = np.linalg.norm(p, axis=-1, keepdims=True)
        p *= np.where(nrm * np.sqrt(K) > 0.95, 0.95 / np.maximum(nrm * np.sqrt(K), 1e-30), 1.0)
    x, c = x64.astype(np.float32), c64.astype(np.float32)
    want = ref.poincare(x, c, K)
    assert np.all(np.isfinite(want))
    for cfg in configs():
        with forced(*cfg):
            r = mx.poincare_distance(x, c, curvature=K)
        assert r.dtype == np.float32
        # zero distances must be exact zeros; others 1e-5 relative
        np.testing.assert_allclose(r, want, **DIST_TOL["float32"], err_msg=str(cfg))


@SETTINGS
@given(pair=point_pairs(np.float64, 10.0))
def test_spherical_float64(pair):
    x, c = pair
    ok = (np.linalg.norm(x, axis=-1) > 1e-3) & (np.linalg.norm(c, axis=-1) > 1e-3)
    x, c = x[ok], c[ok]
    want = ref.spherical(x, c)
    for cfg in configs():
        with forced(*cfg):
            r = mx.spherical_distance(x, c)
        # parallel vectors of different norms (x and 3x) are only parallel to within
        # the rounding of their unit vectors: 1e-15 absolute slack on the angle
        np.testing.assert_allclose(r, want, rtol=1e-12, atol=1e-15, err_msg=str(cfg))


def test_configs_nonempty():
    assert list(configs())  # at least array_api
    if native_available():
        assert any(name == "native" for name, _ in configs())
    else:
        pytest.skip("native backend unavailable")
