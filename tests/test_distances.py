"""Distances (SPEC 2.2) against the extended-precision references in reference.py
(and scipy.spatial.distance.cdist for Euclidean pairwise distances)."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import mhc_array as mx
import reference as ref
from conftest import DIST_TOL, Unchanged, rng_for

MANIFOLDS = ["euclidean", "poincare", "spherical"]
FUNCS = {"euclidean": mx.euclidean_distance, "poincare": mx.poincare_distance,
         "spherical": mx.spherical_distance}

# (batch, d): d in {1, 2, 4, 8, 32}; the big batch only with d = 4.
CASES = [((), 1), ((), 2), ((1,), 4), ((2, 3, 5), 8), ((1,), 32), ((4096,), 4), ((2, 3, 5), 32)]
CASE_IDS = ["x".join(map(str, b)) + f"-d{d}" for b, d in CASES]


def points(manifold, rng, shape, d, curvature=1.0):
    if manifold == "poincare":
        return ref.ball_points(rng, shape, d, curvature)
    if manifold == "spherical":
        return ref.sphere_points(rng, shape, d)
    return 2.0 * rng.standard_normal(tuple(shape) + (d,))


def call(manifold, x, c, *, geometric=False, **kw):
    if geometric:
        return mx.geometric_distance(x, c, manifold=manifold, **kw)
    if manifold == "euclidean":
        return mx.euclidean_distance(x, c)
    return FUNCS[manifold](x, c, **kw)


def assert_dist(got, want, dtype, **override):
    tol = dict(DIST_TOL[dtype])
    tol.update(override)
    np.testing.assert_allclose(got, want, **tol)


# ---------------------------------------------------------------- the main grid


@pytest.mark.parametrize("cmode", ["point", "same"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_grid(backend, lib, manifold, case, dtype, cmode):
    batch, d = case
    rng = rng_for("grid", manifold, case, dtype, cmode)
    x_np = points(manifold, rng, batch, d).astype(dtype)
    c_np = points(manifold, rng, () if cmode == "point" else batch, d).astype(dtype)
    x, c = lib.asarray(x_np), lib.asarray(c_np)
    keep = Unchanged(lib, x, c)
    want = ref.distance(manifold, x_np, c_np)
    # d = 1 on the sphere: same-sign points are exactly parallel (angle 0) but their unit
    # vectors x/|x| are only exact to rounding, so the stable formula returns ~1e-16
    # there; allow that much absolute slack (x == c exactly is required to give 0 in
    # test_near_zero_distances)
    extra = dict(atol=1e-15) if manifold == "spherical" else {}
    for geometric in (False, True):
        r = call(manifold, x, c, geometric=geometric)
        lib.check(r, dtype, batch)
        assert_dist(lib.to_numpy(r), want, dtype, **extra)
    keep.check()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_broadcasting(backend, lib, manifold, dtype):
    rng = rng_for("bcast", manifold, dtype)
    x_np = points(manifold, rng, (3, 4), 5).astype(dtype)
    for c_shape, out_shape in [((3, 1), (3, 4)), ((4,), (3, 4)), ((1, 1), (3, 4)),
                               ((2, 3, 4), (2, 3, 4)), ((2, 1, 1), (2, 3, 4))]:
        c_np = points(manifold, rng, c_shape, 5).astype(dtype)
        r = call(manifold, lib.asarray(x_np), lib.asarray(c_np))
        lib.check(r, dtype, out_shape)
        xb, cb = np.broadcast_arrays(x_np, c_np)
        assert_dist(lib.to_numpy(r), ref.distance(manifold, xb, cb), dtype)
    # x a single point, c a batch
    c_np = points(manifold, rng, (6,), 5).astype(dtype)
    r = call(manifold, lib.asarray(x_np[0, 0]), lib.asarray(c_np))
    lib.check(r, dtype, (6,))
    assert_dist(lib.to_numpy(r), ref.distance(manifold, x_np[0, 0], c_np), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("curvature", [0.25, 2.0, 7.5])
def test_poincare_curvature(backend, lib, curvature, dtype):
    rng = rng_for("curv", curvature, dtype)
    x_np = ref.ball_points(rng, (50,), 6, curvature).astype(dtype)
    c_np = ref.ball_points(rng, (50,), 6, curvature).astype(dtype)
    want = ref.poincare(x_np, c_np, curvature)
    r = mx.poincare_distance(lib.asarray(x_np), lib.asarray(c_np), curvature=curvature)
    lib.check(r, dtype, (50,))
    assert_dist(lib.to_numpy(r), want, dtype)
    r = mx.geometric_distance(lib.asarray(x_np), lib.asarray(c_np), manifold="poincare",
                              curvature=curvature)
    assert_dist(lib.to_numpy(r), want, dtype)
    # the curvature is really used: K = 1 gives other values (or a domain error)
    if curvature < 1:
        r1 = mx.poincare_distance(x_np, c_np, on_domain_error="nan")
        assert not np.allclose(r1, want, rtol=1e-3, equal_nan=True)


def test_curvature_ignored_by_flat_and_sphere(backend):
    rng = rng_for("flat-curv")
    x, c = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    for manifold in ("euclidean", "spherical"):
        r = mx.geometric_distance(x, c, manifold=manifold, curvature=3.0)
        assert_dist(r, ref.distance(manifold, x, c), "float64")


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_near_zero_distances(backend, manifold, dtype):
    rng = rng_for("near0", manifold, dtype)
    x = points(manifold, rng, (64,), 16)
    c = (x + 1e-4 * rng.standard_normal(x.shape) * np.abs(x).mean()).astype(dtype)
    x = x.astype(dtype)
    want = ref.distance(manifold, x, c)
    assert np.all(want > 0)
    assert_dist(call(manifold, x, c), want, dtype)
    # identical points: exactly 0
    for geometric in (False, True):
        r = call(manifold, x, x.copy(), geometric=geometric)
        np.testing.assert_array_equal(r, 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_near_antipodal(backend, dtype):
    rng = rng_for("antipodal", dtype)
    x = ref.sphere_points(rng, (64,), 16)
    c = (-x * rng.uniform(0.5, 2, (64, 1)) + 1e-3 * rng.standard_normal(x.shape)).astype(dtype)
    x = x.astype(dtype)
    want = ref.spherical(x, c)
    assert np.all(want > np.pi - 1e-2) and np.all(want <= np.pi)
    assert_dist(mx.spherical_distance(x, c), want, dtype)
    # exactly antipodal: pi
    r = mx.spherical_distance(x, -x)
    assert_dist(r, np.full(64, np.pi), dtype)


@pytest.mark.parametrize("d", [1000, 4096, 4099])
def test_float32_accuracy_long_vectors_every_angle_and_radius(backend, d):
    """float32 sums over long vectors lose accuracy coherently when every term has
    the same sign and size; the native kernels' float-lane fast path must still meet
    1e-5 on both sides of where it hands over to double (cos angle 0.8 and -0.99,
    K|x|^2 = 1/2), for constant-magnitude and random vectors."""
    rng = rng_for("long", d)
    u = np.full(d, 1 / np.sqrt(d))                        # all terms equal
    v = rng.standard_normal(d)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    cosines = np.concatenate([np.linspace(-1, 1, 41)[1:-1], [0.79, 0.8, 0.81, -0.985, -0.99, -0.995]])
    angles = np.arccos(np.clip(cosines, -1, 1))
    sph_x = np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v
    sph_x = np.concatenate([sph_x, rng.standard_normal((16, d))])
    sph_x = (sph_x * rng.uniform(0.1, 10, (len(sph_x), 1))).astype(np.float32)
    c = (u * 3).astype(np.float32)
    want = ref.euclidean(sph_x, c)
    assert_dist(mx.euclidean_distance(sph_x, c), want, "float32")
    want = ref.spherical(sph_x, c)
    ok = want > 0
    assert_dist(np.asarray(mx.spherical_distance(sph_x, c))[ok], want[ok], "float32")
    for K in (1.0, 2.5):
        radii2 = np.concatenate([np.linspace(0.01, 0.99, 25), [0.49, 0.5, 0.51]]) / K
        dirs = np.concatenate([np.tile(u, (14, 1)), rng.standard_normal((14, d))])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        px = (np.sqrt(radii2)[:, None] * dirs).astype(np.float32)
        pc = (-0.3 / np.sqrt(K) * u).astype(np.float32)
        want = ref.poincare(px, pc, curvature=K)
        assert_dist(mx.poincare_distance(px, pc, curvature=K), want, "float32")
        want = ref.poincare(px[1:], px[:-1], curvature=K)     # c varies per row
        assert_dist(mx.poincare_distance(px[1:], px[:-1], curvature=K), want, "float32")


@pytest.mark.parametrize("d", [3, 64])
def test_spherical_float32_every_angle_fine_grid(backend, d):
    """2001 angles between cos = -0.999 and 0.9 (the native float path takes its
    arccos lane-wise on [-0.99, 0.8]): each within 1e-5 of the float64 angle."""
    rng = rng_for("sphgrid", d)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(d)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    ang = np.arccos(np.linspace(-0.999, 0.9, 2001))
    x = (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v) * rng.uniform(0.5, 3, (2001, 1))
    x = x.astype(np.float32)
    c = (2 * u).astype(np.float32)
    assert_dist(mx.spherical_distance(x, c), ref.spherical(x, c), "float32")


@pytest.mark.parametrize("curvature", [1.0, 0.3])
def test_poincare_float32_every_scale(backend, curvature):
    """Distances from 1e-13 to ~15 (z from ~1e-26 to ~1e12, across the native
    float path's lane-wise log1p and its 1 + u == 1 branch), to a centre and to an
    off-centre point: each within 1e-5 of the float64 reference."""
    rng = rng_for("poinscale", curvature)
    d = 24
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    R = 1 / np.sqrt(curvature)
    for centre in (np.zeros(d), 0.3 * R * rng.standard_normal(d) / np.sqrt(d)):
        c = centre.astype(np.float32)
        steps = np.concatenate([np.logspace(-13, -1, 300), 1 - np.logspace(-1, -6.5, 200)])
        radius = R - np.linalg.norm(c) - 1e-6 * R
        x = (c.astype(np.float64) + np.outer(steps * radius, u)).astype(np.float32)
        want = ref.poincare(x, c, curvature=curvature)
        ok = want > 0
        assert_dist(np.asarray(mx.poincare_distance(x, c, curvature=curvature))[ok], want[ok],
                    "float32")


def _rel_err(got, want):
    return np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want))


def test_naive_formulas_would_fail():
    """The accuracy tests have teeth: on the same kind of inputs, the naive float32
    formulas (arccosh(1 + z), arccos of a clipped cosine) are off by far more than
    1e-5 relative, while the library meets it."""
    rng = rng_for("naive")
    f32 = np.float32
    # Poincare, tiny distances
    x = ref.ball_points(rng, (64,), 16)
    c = (x + 1e-4 * rng.standard_normal(x.shape) * np.abs(x).mean()).astype(f32)
    x = x.astype(f32)
    want = ref.poincare(x, c)
    nx, nc = (x * x).sum(-1), (c * c).sum(-1)
    z = f32(2) * ((x - c) ** 2).sum(-1) / ((f32(1) - nx) * (f32(1) - nc))
    naive = np.arccosh(f32(1) + z.astype(f32))
    assert naive.dtype == f32
    assert _rel_err(naive, want) > 1e-5
    assert _rel_err(mx.poincare_distance(x, c), want) <= 1e-5

    # sphere, tiny angles
    xs = ref.sphere_points(rng, (64,), 16)
    cs = (xs + 1e-4 * rng.standard_normal(xs.shape)).astype(f32)
    xs = xs.astype(f32)

    def naive_angle(a, b):
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        return np.arccos(np.clip(cos.astype(f32), f32(-1), f32(1)))

    want = ref.spherical(xs, cs)
    assert naive_angle(xs, cs).dtype == f32
    assert _rel_err(naive_angle(xs, cs), want) > 1e-5
    assert _rel_err(mx.spherical_distance(xs, cs), want) <= 1e-5

    # sphere, near-antipodal
    ca = (-xs + 3e-4 * rng.standard_normal(xs.shape)).astype(f32)
    want = ref.spherical(xs, ca)
    assert _rel_err(naive_angle(xs, ca), want) > 1e-5
    assert _rel_err(mx.spherical_distance(xs, ca), want) <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("curvature", [1.0, 3.0])
def test_poincare_near_boundary(backend, lib, curvature, dtype):
    """Points with K|x|^2 = 1 - 1e-3 (and some at 1 - 1e-3 on both sides)."""
    rng = rng_for("boundary", curvature, dtype)
    v = rng.standard_normal((40, 8))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    x = v * np.sqrt((1 - 1e-3) / curvature)
    c = ref.ball_points(rng, (40,), 8, curvature)
    c[:10] = -x[:10] * 0.999999  # two near-boundary points far apart
    c[10:20] = x[10:20] * (1 - 1e-4)  # radially close to x
    x, c = x.astype(dtype), c.astype(dtype)
    assert np.all(curvature * (x.astype(np.float64) ** 2).sum(-1) < 1)
    want = ref.poincare(x, c, curvature)
    assert np.all(np.isfinite(want))
    r = mx.poincare_distance(lib.asarray(x), lib.asarray(c), curvature=curvature)
    lib.check(r, dtype, (40,))
    assert_dist(lib.to_numpy(r), want, dtype)


# ---------------------------------------------------------------- domain errors


def _ball_with_outliers(dtype, curvature=1.0):
    rng = rng_for("outliers", dtype, curvature)
    x = ref.ball_points(rng, (3, 4), 5, curvature)
    x[0, 3] *= 1.5 / (np.sqrt(curvature) * np.linalg.norm(x[0, 3]))  # radius 1.5/sqrt(K)
    x[2, 1] *= 1.0 / (np.sqrt(curvature) * np.linalg.norm(x[2, 1]))  # on the boundary-ish
    x[2, 1] *= 1.01
    c = ref.ball_points(rng, (5,), 5, curvature)[0]
    return x.astype(dtype), c.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_poincare_domain_raise(backend, lib, dtype):
    x, c = _ball_with_outliers(dtype)
    xa, ca = lib.asarray(x), lib.asarray(c)
    keep = Unchanged(lib, xa, ca)
    for f in (lambda: mx.poincare_distance(xa, ca),
              lambda: mx.geometric_distance(xa, ca, manifold="poincare"),
              lambda: mx.poincare_distance(xa, ca, on_domain_error="raise")):
        with pytest.raises(mx.DomainError) as ei:
            f()
        assert "0,3" in str(ei.value).replace(" ", ""), str(ei.value)  # the first one
    keep.check()
    # c outside
    with pytest.raises(mx.DomainError):
        mx.poincare_distance(lib.asarray(x[1]), lib.asarray(2 * np.ones(5, dtype)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_poincare_domain_nan(backend, lib, dtype):
    x, c = _ball_with_outliers(dtype)
    r = lib.to_numpy(mx.poincare_distance(lib.asarray(x), lib.asarray(c),
                                          on_domain_error="nan"))
    bad = np.zeros((3, 4), bool)
    bad[0, 3] = bad[2, 1] = True
    assert np.array_equal(np.isnan(r), bad)
    assert_dist(r[~bad], ref.poincare(x, c)[~bad], dtype)
    # a bad reference point poisons every entry
    r = lib.to_numpy(mx.poincare_distance(lib.asarray(x[1]), lib.asarray(2 * np.ones(5, dtype)),
                                          on_domain_error="nan"))
    assert np.all(np.isnan(r))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("curvature", [1.0, 4.0])
def test_poincare_domain_clip(backend, lib, dtype, curvature):
    x, c = _ball_with_outliers(dtype, curvature)
    r = lib.to_numpy(mx.poincare_distance(lib.asarray(x), lib.asarray(c), curvature=curvature,
                                          on_domain_error="clip"))
    assert np.all(np.isfinite(r))
    want = ref.poincare(ref.clip_to_ball(x, curvature), c, curvature)
    inside = np.ones((3, 4), bool)
    inside[0, 3] = inside[2, 1] = False
    assert_dist(r[inside], want[inside], dtype)
    # clipped points sit 1e-5 inside the boundary, where the distance is ill-conditioned
    # in float32 (the gap 1 - K|x|^2 ~ 2e-5 is resolved to ~1e-2 relative by float32
    # coordinates), so only float64 is held to a tight tolerance there
    tol = dict(rtol=1e-9) if dtype == "float64" else dict(rtol=2e-3)
    np.testing.assert_allclose(r[~inside], want[~inside], **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sphere_zero_vector(backend, lib, dtype):
    rng = rng_for("zero-vec", dtype)
    x = ref.sphere_points(rng, (2, 5), 4).astype(dtype)
    x[1, 2] = 0.0
    c = ref.sphere_points(rng, (), 4).astype(dtype)
    xa, ca = lib.asarray(x), lib.asarray(c)
    with pytest.raises(mx.DomainError) as ei:
        mx.spherical_distance(xa, ca)
    assert "1,2" in str(ei.value).replace(" ", ""), str(ei.value)
    with pytest.raises(mx.DomainError):
        mx.geometric_distance(xa, ca, manifold="spherical")
    bad = np.zeros((2, 5), bool)
    bad[1, 2] = True
    for mode in ("nan", "clip"):  # clip: zero vectors give NaN
        r = lib.to_numpy(mx.spherical_distance(xa, ca, on_domain_error=mode))
        assert np.array_equal(np.isnan(r), bad), mode
        assert_dist(r[~bad], ref.spherical(x, c)[~bad], dtype)
    # zero reference point
    with pytest.raises(mx.DomainError):
        mx.spherical_distance(xa, lib.asarray(np.zeros(4, dtype)))
    r = lib.to_numpy(mx.spherical_distance(xa, lib.asarray(np.zeros(4, dtype)),
                                           on_domain_error="nan"))
    assert np.all(np.isnan(r))


def test_euclidean_has_no_domain(backend):
    x = np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 0.0]])
    np.testing.assert_array_equal(mx.euclidean_distance(x, np.zeros(2)), [0.0, 5.0, 100.0])
    r = mx.geometric_distance(x, np.zeros(2), manifold="euclidean", on_domain_error="raise")
    np.testing.assert_array_equal(r, [0.0, 5.0, 100.0])


# ---------------------------------------------------------------- pairwise


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_pairwise(backend, lib, manifold, dtype):
    rng = rng_for("pairwise", manifold, dtype)
    for N, M, d in [(7, 5, 3), (1, 1, 1), (1, 9, 4), (33, 17, 32)]:
        x = points(manifold, rng, (N,), d).astype(dtype)
        y = points(manifold, rng, (M,), d).astype(dtype)
        xa, ya = lib.asarray(x), lib.asarray(y)
        keep = Unchanged(lib, xa, ya)
        r = mx.pairwise_distance(xa, ya, manifold=manifold)
        lib.check(r, dtype, (N, M))
        want = ref.pairwise(manifold, x, y)
        if manifold == "euclidean":
            want_scipy = cdist(x.astype(np.float64), y.astype(np.float64))
            np.testing.assert_allclose(want, want_scipy, rtol=1e-13)
            want = want_scipy
        assert_dist(lib.to_numpy(r), want, dtype)
        keep.check()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pairwise_poincare_curvature(backend, dtype):
    rng = rng_for("pw-curv", dtype)
    x = ref.ball_points(rng, (6,), 4, 2.5).astype(dtype)
    y = ref.ball_points(rng, (8,), 4, 2.5).astype(dtype)
    r = mx.pairwise_distance(x, y, manifold="poincare", curvature=2.5)
    assert r.shape == (6, 8) and r.dtype == dtype
    assert_dist(r, ref.pairwise("poincare", x, y, 2.5), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pairwise_no_dot_product_shortcut(backend, dtype):
    """Far from the origin and close together: |x|^2 + |y|^2 - 2xy cancels
    catastrophically; a direct computation keeps full relative precision."""
    rng = rng_for("pw-offset", dtype)
    x = (1000.0 + 1e-2 * rng.standard_normal((20, 16))).astype(dtype)
    y = (1000.0 + 1e-2 * rng.standard_normal((10, 16))).astype(dtype)
    want = cdist(x.astype(np.float64), y.astype(np.float64))
    r = mx.pairwise_distance(x, y)
    assert_dist(r, want, dtype)
    # and the shortcut would indeed fail here (so this test has teeth)
    x64, y64 = x.astype(dtype), y.astype(dtype)
    sq = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2 * x64 @ y64.T
    shortcut = np.sqrt(np.maximum(sq, 0))
    assert _rel_err(shortcut, want) > 10 * DIST_TOL[dtype]["rtol"]
    # identical rows: exactly zero
    r = mx.pairwise_distance(x, x.copy())
    np.testing.assert_array_equal(np.diag(r), 0.0)


@pytest.mark.parametrize("manifold", ["poincare", "spherical"])
def test_pairwise_domain(backend, manifold):
    rng = rng_for("pw-dom", manifold)
    x = points(manifold, rng, (4,), 3)
    y = points(manifold, rng, (3,), 3)
    if manifold == "poincare":
        y[1] = [2.0, 0.0, 0.0]
    else:
        y[1] = 0.0
    with pytest.raises(mx.DomainError):
        mx.pairwise_distance(x, y, manifold=manifold)
    r = mx.pairwise_distance(x, y, manifold=manifold, on_domain_error="nan")
    assert np.all(np.isnan(r[:, 1]))
    mask = np.ones((4, 3), bool)
    mask[:, 1] = False
    assert_dist(r[mask], ref.pairwise(manifold, x, y)[mask], "float64")


def test_pairwise_zero_size(backend, lib):
    x = lib.asarray(np.zeros((0, 3)))
    y = lib.asarray(np.ones((4, 3)))
    lib.check(mx.pairwise_distance(x, y), "float64", (0, 4))
    lib.check(mx.pairwise_distance(y, x), "float64", (4, 0))


# ---------------------------------------------------------------- dtypes, layouts


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_zero_size_batch(backend, lib, manifold):
    for dtype in ("float32", "float64"):
        x = lib.asarray(np.zeros((0, 3), dtype))
        c = lib.asarray(np.full(3, 0.1, dtype))
        lib.check(call(manifold, x, c), dtype, (0,))
        x = lib.asarray(np.zeros((2, 0, 3), dtype))
        lib.check(call(manifold, x, c), dtype, (2, 0))


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_non_contiguous(backend, manifold):
    rng = rng_for("nc", manifold)
    base = points(manifold, rng, (6, 8), 10).astype(np.float32)
    before = base.copy()
    c = points(manifold, rng, (), 5).astype(np.float32)
    for name, v in {"column-strided": base[:, :, ::2], "row-strided": base[:, ::2, :5],
                    "transposed": base[:, :, :5].transpose(1, 0, 2),
                    "negative": base[::-1, :, 4::-1]}.items():
        r = call(manifold, v, c)
        assert r.shape == v.shape[:-1], name
        assert_dist(r, ref.distance(manifold, v, c), "float32", err_msg=name)
        cv = v[..., ::-1]
        r = call(manifold, v, cv)
        assert_dist(r, ref.distance(manifold, v, cv), "float32", err_msg=name)
    np.testing.assert_array_equal(base, before)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_read_only(backend, manifold):
    rng = rng_for("ro", manifold)
    x = points(manifold, rng, (5,), 3)
    c = points(manifold, rng, (), 3)
    x.setflags(write=False)
    c.setflags(write=False)
    assert_dist(call(manifold, x, c), ref.distance(manifold, x, c), "float64")
    assert_dist(mx.pairwise_distance(x, x, manifold=manifold),
                ref.pairwise(manifold, x, x), "float64", atol=1e-15)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_float16_and_int(backend, manifold):
    rng = rng_for("f16", manifold)
    x = points(manifold, rng, (9,), 4).astype(np.float16)
    c = points(manifold, rng, (), 4).astype(np.float16)
    r = call(manifold, x, c)
    assert r.dtype == np.float16 and r.shape == (9,)
    np.testing.assert_allclose(r.astype(np.float64), ref.distance(manifold, x, c),
                               rtol=2e-3, atol=1e-4)
    if manifold != "poincare":
        xi = rng.integers(1, 5, (9, 4))
        ci = rng.integers(1, 5, (4,)).astype(np.int32)
        r = call(manifold, xi, ci)
        assert r.dtype == np.float64
        assert_dist(r, ref.distance(manifold, xi, ci), "float64")
    # mixed float32 / float64 arguments compute in float64
    x32 = points(manifold, rng, (9,), 4).astype(np.float32)
    c64 = points(manifold, rng, (), 4)
    r = call(manifold, x32, c64)
    assert r.dtype == np.float64
    assert_dist(r, ref.distance(manifold, x32, c64), "float64")


def test_torch_bfloat16(backend):
    torch = pytest.importorskip("torch")
    rng = rng_for("bf16d")
    x = torch.from_numpy(ref.sphere_points(rng, (7,), 4)).to(torch.bfloat16)
    c = torch.from_numpy(ref.sphere_points(rng, (), 4)).to(torch.bfloat16)
    r = mx.spherical_distance(x, c)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.bfloat16 and r.shape == (7,)
    np.testing.assert_allclose(r.float().numpy(), ref.spherical(x.float().numpy(),
                                                                c.float().numpy()),
                               rtol=1e-2, atol=1e-2)


def test_complex_unsupported(backend, lib):
    x = lib.asarray(np.ones((3, 2), np.complex64))
    c = lib.asarray(np.ones(2, np.complex64))
    for manifold in MANIFOLDS:
        with pytest.raises(mx.UnsupportedDTypeError):
            call(manifold, x, c)
    with pytest.raises(mx.UnsupportedDTypeError):
        mx.pairwise_distance(x, x)


# ---------------------------------------------------------------- check / project


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_manifold(lib, dtype):
    rng = rng_for("check", dtype)
    # sphere: unit points, clearly off points
    u = ref.sphere_points(rng, (6,), 5)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    pts = np.concatenate([u, 1.01 * u[:2], 0.5 * u[:2], np.zeros((1, 5))]).astype(dtype)
    r = mx.check_manifold(lib.asarray(pts), manifold="spherical")
    lib.check(r, "bool", (11,))
    want = ref.check_manifold("spherical", pts)
    assert want[:6].all() and not want[6:].any()
    np.testing.assert_array_equal(lib.to_numpy(r), want)
    # a looser atol accepts 1.01 u
    r = mx.check_manifold(lib.asarray(pts), manifold="spherical", atol=0.02)
    np.testing.assert_array_equal(lib.to_numpy(r), ref.check_manifold("spherical", pts,
                                                                       atol=0.02))
    # ball, curvature 1 and 4
    for K in (1.0, 4.0):
        b = np.concatenate([ref.ball_points(rng, (5,), 5, K, rmax=0.99),
                            u[:3] * 1.2 / np.sqrt(K),
                            u[:2] * np.sqrt((1 - 1e-7) / K)]).astype(dtype)
        r = mx.check_manifold(lib.asarray(b.reshape(2, 5, 5)), manifold="poincare",
                              curvature=K)
        lib.check(r, "bool", (2, 5))
        want = ref.check_manifold("poincare", b, K).reshape(2, 5)
        assert want.sum() == 5
        np.testing.assert_array_equal(lib.to_numpy(r), want)
    # euclidean: finite
    e = rng.standard_normal((4, 3)).astype(dtype)
    e[1, 2] = np.inf
    e[3, 0] = np.nan
    r = mx.check_manifold(lib.asarray(e), manifold="euclidean")
    np.testing.assert_array_equal(lib.to_numpy(r), [True, False, True, False])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_project_to_manifold(lib, dtype):
    rng = rng_for("project", dtype)
    x = (3 * rng.standard_normal((4, 3, 6))).astype(dtype)
    xa = lib.asarray(x)
    keep = Unchanged(lib, xa)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-14, atol=1e-16)
    r = mx.project_to_manifold(xa, manifold="spherical")
    lib.check(r, dtype, x.shape)
    np.testing.assert_allclose(lib.to_numpy(r), ref.project("spherical", x), **tol)
    assert np.all(lib.to_numpy(mx.check_manifold(r, manifold="spherical")))
    for K in (1.0, 0.3):
        r = mx.project_to_manifold(xa, manifold="poincare", curvature=K)
        lib.check(r, dtype, x.shape)
        got = lib.to_numpy(r)
        np.testing.assert_allclose(got, ref.project("poincare", x, K), **tol)
        assert np.all(K * (got.astype(np.float64) ** 2).sum(-1) < 1)
        # points already inside are left alone
        inside = ref.ball_points(rng, (5,), 6, K).astype(dtype)
        got = lib.to_numpy(mx.project_to_manifold(lib.asarray(inside), manifold="poincare",
                                                  curvature=K))
        np.testing.assert_allclose(got, inside, **tol)
    r = mx.project_to_manifold(xa, manifold="euclidean")
    lib.check(r, dtype, x.shape)
    np.testing.assert_array_equal(lib.to_numpy(r), x)
    keep.check()


def test_non_contiguous_torch(backend):
    torch = pytest.importorskip("torch")
    rng = rng_for("nc-torch")
    base = torch.from_numpy(ref.sphere_points(rng, (6, 8), 10))
    for v in (base[:, :, ::2], base.transpose(0, 1), base[:, ::3, 1:4]):
        c = torch.from_numpy(ref.sphere_points(rng, (), v.shape[-1]))
        for manifold in MANIFOLDS:
            if manifold == "poincare":
                vv, cc = v / 40.0, c / 40.0  # inside the ball
            else:
                vv, cc = v, c
            r = call(manifold, vv, cc)
            assert isinstance(r, torch.Tensor) and tuple(r.shape) == tuple(v.shape[:-1])
            assert_dist(r.numpy(), ref.distance(manifold, vv.numpy(), cc.numpy()), "float64")
        r = mx.pairwise_distance(v[0], v[1])
        assert_dist(r.numpy(), cdist(v[0].numpy(), v[1].numpy()), "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spherical_vectors_of_very_different_norms(backend, dtype):
    """Near-pi and near-0 angles between a unit vector and one 1e3..1e25 times longer
    (found by property testing: the near-pi formula divided by the smaller norm and
    cancelled to 0 for an angle of pi)."""
    dt = getattr(np, dtype)
    big = [1e3, 1e10, 1e19, 1e25] + ([1e150] if dtype == "float64" else [])
    xs, cs = [], []
    for v in big:
        for sign in (-1.0, 1.0):
            for eps in (0.0, 1e-3, 0.3):
                xs.append([1.0, eps, 0.0])
                cs.append([sign * v, 0.0, eps * v])
    x, c = np.array(xs, dt), np.array(cs, dt)
    want = ref.spherical(x.astype(np.float64), c.astype(np.float64))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mx.spherical_distance(x, c), want, **tol)
    np.testing.assert_allclose(mx.spherical_distance(c, x), want, **tol)


@pytest.mark.parametrize("d", [5, 40, 300])
@pytest.mark.parametrize("scale", [6.2e-39, 1e-20, 1e-16])
def test_spherical_float32_tiny_vectors(backend, d, scale):
    """Spherical distances of float32 vectors whose norms are below 1e-15 (found by property
    testing: the float lanes' products of such values underflow while the tail's are exact
    in double, and x = c of five values 6.2e-39 gave 1.107 instead of 0)."""
    x = np.full((3, d), scale, np.float32)
    x[1, 0] *= 2
    x[2, ::2] *= -1
    c = np.full(d, scale, np.float32)
    want = ref.spherical(x.astype(np.float64), c.astype(np.float64)[None, :])
    np.testing.assert_allclose(mx.spherical_distance(x, c), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mx.spherical_distance(x, np.tile(c, (3, 1))), want,
                               rtol=1e-5, atol=1e-6)
    assert mx.spherical_distance(x, c)[0] == 0
