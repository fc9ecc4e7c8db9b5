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


# ---- structural properties (issue "Reliability"): what must hold whatever the input,
# checked on every backend / ISA level without a reference implementation ----------

@st.composite
def logits(draw, dtype=np.float64):
    batch = draw(st.sampled_from([(), (2,), (5,)]))
    n, m = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return draw(hnp.arrays(dtype, batch + (n, m), elements=st.floats(
        -20, 20, width=32 if dtype == np.float32 else 64)))


@SETTINGS
@given(x=logits(), iterations=st.integers(1, 8), order=st.sampled_from(["rows-first", "cols-first"]),
       seed=st.integers(0, 2**32 - 1))
def test_sinkhorn_structure(x, iterations, order, seed):
    rng = np.random.default_rng(seed)
    n, m = x.shape[-2:]
    pr, pc = rng.permutation(n), rng.permutation(m)
    shift = float(rng.uniform(-50, 50))
    for cfg in configs():
        with forced(*cfg):
            r = mx.sinkhorn_knopp(x, iterations=iterations, logits=True, order=order)
            # rows and columns permuted in -> permuted out
            rp = mx.sinkhorn_knopp(x[..., pr, :][..., pc], iterations=iterations, logits=True,
                                   order=order)
            # a constant added to the logits changes nothing (exp(x - max))
            rs = mx.sinkhorn_knopp(x + shift, iterations=iterations, logits=True, order=order)
        assert np.all(r >= 0), cfg
        # the last normalised side sums to its target: rows to 1, columns to n/m
        last = -2 if order == "rows-first" else -1   # column sums / row sums
        target = n / m if order == "rows-first" else 1.0
        np.testing.assert_allclose(r.sum(axis=last), target, rtol=1e-9, err_msg=str(cfg))
        np.testing.assert_allclose(rp, r[..., pr, :][..., pc], rtol=1e-12, atol=1e-300,
                                   err_msg=str(cfg))
        np.testing.assert_allclose(rs, r, rtol=1e-9, atol=1e-15, err_msg=str(cfg))


@SETTINGS
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 6)).map(
    lambda s: (s[0], s[1], s[1])), elements=st.floats(0.05, 20)))
def test_sinkhorn_idempotent_near_convergence(x):
    """Square positive matrices: once converged (2000 iterations), more iterations do
    not move the result."""
    for cfg in configs():
        with forced(*cfg):
            a = mx.sinkhorn_knopp(x, iterations=2000)
            b = mx.sinkhorn_knopp(a, iterations=3)
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-12, err_msg=str(cfg))
        np.testing.assert_allclose(a.sum(-2), 1.0, rtol=1e-7, err_msg=str(cfg))
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-7, err_msg=str(cfg))


def _mobius_add(a, b, K):
    """Mobius addition on the ball of curvature -K (float64, plain formula)."""
    ab, a2, b2 = (a * b).sum(-1, keepdims=True), (a * a).sum(-1, keepdims=True), \
        (b * b).sum(-1, keepdims=True)
    num = (1 + 2 * K * ab + K * b2) * a + (1 - K * a2) * b
    return num / (1 + 2 * K * ab + K * K * a2 * b2)


@SETTINGS
@given(d=st.integers(1, 10), k=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       K=st.sampled_from([0.5, 1.0, 3.0]))
def test_metric_axioms_and_isometries(d, k, seed, K):
    """Symmetry, identity and the triangle inequality on all three manifolds; the
    Poincare distance is invariant under Mobius translations and rotations of the ball,
    the spherical one under orthogonal maps and positive rescaling."""
    rng = np.random.default_rng(seed)
    x, y, z = (ref.ball_points(rng, (k,), d, K, rmax=0.7) for _ in range(3))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = ref.ball_points(rng, (), d, K, rmax=0.5)
    tx, ty = _mobius_add(a, x, K), _mobius_add(a, y, K)
    for cfg in configs():
        with forced(*cfg):
            for man in ("euclidean", "poincare", "spherical"):
                dist = lambda u, v, m=man: mx.geometric_distance(u, v, manifold=m, curvature=K)
                dxy, dyx, dyz, dxz = dist(x, y), dist(y, x), dist(y, z), dist(x, z)
                np.testing.assert_allclose(dxy, dyx, rtol=1e-12, atol=1e-15, err_msg=man)
                # the angle of x with itself is only as exact as acos near 1 allows
                assert np.all(dist(x, x) <= (1e-7 if man == "spherical" else 0)), (man, cfg)
                assert np.all(dxz <= dxy + dyz + 1e-9 * (1 + dxz)), (man, cfg)
                if man == "poincare":
                    np.testing.assert_allclose(dist(tx, ty), dxy, rtol=1e-8, atol=1e-10,
                                               err_msg=str(cfg))
                    np.testing.assert_allclose(dist(x @ q, y @ q), dxy, rtol=1e-9, atol=1e-12)
                elif man == "spherical":
                    np.testing.assert_allclose(dist(x @ q, 3.5 * (y @ q)), dxy, rtol=1e-9,
                                               atol=1e-12, err_msg=str(cfg))
                else:
                    np.testing.assert_allclose(dist(x @ q + 1, y @ q + 1), dxy, rtol=1e-9,
                                               atol=1e-12, err_msg=str(cfg))


@SETTINGS
@given(n=st.sampled_from([1, 2, 4]), C=st.integers(1, 20), T=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), iterations=st.integers(1, 30),
       variant=st.sampled_from(["paper", "deepseek-v4"]))
def test_mhc_structure(n, C, T, seed, iterations, variant):
    """h_res has the iteration's exact side summing to 1 (rows for the paper's
    column-first order, applied transposed for V4) and is non-negative; n = 1 is a
    gated residual: x_next = h_res * x + h_post * f with h_res = 1."""
    rng = np.random.default_rng(seed)
    K = (2 + n) * n
    x = rng.standard_normal((T, n, C))
    if variant == "paper":
        phi = rng.standard_normal((n * C, K)) * 0.5
        bias, alpha = rng.standard_normal(K), rng.uniform(0.1, 2.0, 3)
    else:
        phi, bias, alpha = (rng.standard_normal((K, n * C)) * 0.5, rng.standard_normal(K),
                            rng.uniform(0.1, 2.0, 3))
    f = rng.standard_normal((T, C))
    for cfg in configs():
        with forced(*cfg):
            h_in, h_pre, h_post, h_res = mx.mhc_pre(x, phi, bias, alpha, iterations=iterations,
                                                    variant=variant)
            out = mx.mhc_post(x, f, h_post, h_res)
        assert np.all(h_res >= 0) and np.all(h_pre > 0) and np.all((h_post > 0) & (h_post < 2))
        # paper: rows last (cols-first order); V4: comb's last step normalises columns
        # (+ hc_eps in the denominator), and h_res = comb^T: rows of h_res again
        if variant == "paper":
            np.testing.assert_allclose(h_res.sum(-1), 1.0, rtol=1e-9, err_msg=str(cfg))
        else:  # each column sum s becomes s / (s + hc_eps): in (0, 1], below 1 by ~eps/s
            assert np.all(h_res.sum(-1) <= 1 + 1e-12) and np.all(h_res.sum(-1) > 0), cfg
        np.testing.assert_allclose(h_in, np.einsum("ti,tic->tc", h_pre, x), rtol=1e-10,
                                   atol=1e-12)
        if n == 1:
            np.testing.assert_allclose(h_res, 1.0, rtol=1e-5 if variant != "paper" else 1e-12)
            np.testing.assert_allclose(out[:, 0], h_res[:, 0, 0, None] * x[:, 0] +
                                       h_post * f, rtol=1e-10, atol=1e-12)


@st.composite
def wild_arrays(draw, min_last=1):
    """Any float32/float64 values (NaN, inf, huge, subnormal), read through a strided
    view (every other row, or reversed) to exercise the copy/stride paths."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(min_last, 6)))
    base = draw(hnp.arrays(dtype, (shape[0] * 2,) + shape[1:], elements=st.floats(
        allow_nan=True, allow_infinity=True, width=32 if dtype == np.float32 else 64)))
    view = draw(st.sampled_from(["step", "reversed", "plain"]))
    return base[::2] if view == "step" else base[::-1] if view == "reversed" else base


@SETTINGS
@given(x=wild_arrays(), order=st.sampled_from(["rows-first", "cols-first"]))
def test_sinkhorn_wild_values(x, order):
    """Never a crash or a changed input; a matrix with NaN or inf logits gives NaN
    there only; finite matrices agree with the float64 reference."""
    x0 = x.copy()
    finite = np.isfinite(x).all(axis=(-2, -1))
    want = ref.sinkhorn(np.where(np.isfinite(x), x, 0).astype(np.float64), iterations=6,
                        logits=True, order=order)
    tol = SINK_TOL["float32" if x.dtype == np.float32 else "float64"]
    for cfg in configs():
        with forced(*cfg):
            r = mx.sinkhorn_knopp(x, iterations=6, logits=True, order=order)
        np.testing.assert_array_equal(x, x0)
        assert r.shape == x.shape and r.dtype == x.dtype
        np.testing.assert_allclose(r[finite], want[finite], **tol, err_msg=str(cfg))
        assert np.all(np.isnan(r[np.isnan(x).any(axis=(-2, -1))])), cfg


@SETTINGS
@given(x=wild_arrays(), manifold=st.sampled_from(["euclidean", "poincare", "spherical"]))
def test_distances_wild_values(x, manifold):
    """Any values with on_domain_error="nan": never a crash or a changed input; rows
    with non-finite coordinates give NaN or inf, never a finite wrong value; finite rows
    inside the domain agree with the float64 reference."""
    x0 = x.copy()
    c = x[0, 0]
    for cfg in configs():
        with forced(*cfg):
            r = mx.geometric_distance(x, c, manifold=manifold, on_domain_error="nan")
        np.testing.assert_array_equal(x, x0)
        assert r.shape == x.shape[:-1] and r.dtype == x.dtype
        x64, c64 = x.astype(np.float64), c.astype(np.float64)
        with np.errstate(all="ignore"):
            want = ref.distance(manifold, x64, c64)
            bad = ~np.isfinite(x64).all(-1) | ~np.isfinite(c64).all()
            if manifold == "poincare":
                bad |= ((x64 ** 2).sum(-1) >= 1) | ((c64 ** 2).sum() >= 1)
            if manifold == "spherical":
                bad |= ~(np.abs(x64).max(-1) > 0) | ~(np.abs(c64).max() > 0)
        assert not np.any(np.isfinite(r[~np.isfinite(x64).all(-1) | ~np.isfinite(c64).all()])), cfg
        ok = ~bad & np.isfinite(want) & (np.abs(want) < 1e30)
        tol = DIST_TOL["float32" if x.dtype == np.float32 else "float64"]
        # a result in the subnormal range is exact only to the spacing of subnormals (a
        # correctly rounded float32 1.3438e-42 is 1.7e-4 from the float64 1.3436e-42)
        tol = dict(tol, atol=float(np.finfo(x.dtype).smallest_subnormal))
        if manifold == "spherical":  # angles of near-parallel vectors: absolute slack
            tol = dict(tol, atol=1e-6 if x.dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(r[ok], want[ok], **tol, err_msg=str(cfg))
