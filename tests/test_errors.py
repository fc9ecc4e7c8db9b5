"""Bad input: the error classes of SPEC 2.5 and messages that name the argument."""

import numpy as np
import pytest

import mhc_array as mx
from conftest import rng_for

ERRORS = {
    "ShapeError": ValueError,
    "DomainError": ValueError,
    "UnsupportedDTypeError": TypeError,
    "BackendUnavailableError": RuntimeError,
    "NativeError": RuntimeError,
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_hierarchy(name):
    cls = getattr(mx, name)
    assert issubclass(cls, mx.MHCArrayError)
    assert issubclass(cls, ERRORS[name])
    assert issubclass(mx.MHCArrayError, Exception)


def _x(shape=(2, 3, 3), dtype=np.float64):
    return rng_for("err", shape).uniform(0.1, 1, shape).astype(dtype)


def _raises(exc, *names):
    """pytest.raises that also checks that each of ``names`` appears in the message."""
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for n in names:
                assert n in msg, f"{n!r} not named in: {msg}"
            return handled
    return _Ctx()


# ---------------------------------------------------------------- Sinkhorn arguments


@pytest.mark.parametrize("bad", [True, False, 1.0, 20.0, "20", None, np.float64(3)])
def test_iterations_type(backend, bad):
    with _raises(TypeError, "iterations"):
        mx.sinkhorn_knopp(_x(), iterations=bad)


@pytest.mark.parametrize("bad", [-1, -(2**40), 2**31, 2**63])
def test_iterations_range(backend, bad):
    with _raises(ValueError, "iterations"):
        mx.sinkhorn_knopp(_x(), iterations=bad)


def test_iterations_numpy_int_ok(backend):
    r = mx.sinkhorn_knopp(_x(), iterations=np.int64(3))
    assert r.shape == (2, 3, 3)


@pytest.mark.parametrize("bad", [-1e-3, -1, float("nan"), float("inf")])
def test_tau_value(backend, bad):
    with _raises(ValueError, "tau"):
        mx.sinkhorn_knopp(_x(), tau=bad)


@pytest.mark.parametrize("bad", ["0.1", None, [0.1]])
def test_tau_type(backend, bad):
    with _raises((TypeError, ValueError), "tau"):
        mx.sinkhorn_knopp(_x(), tau=bad)


@pytest.mark.parametrize("bad", ["rows", "columns-first", "", None, 1])
def test_order(backend, bad):
    with _raises(ValueError if isinstance(bad, str) else (TypeError, ValueError), "order"):
        mx.sinkhorn_knopp(_x(), order=bad)


def test_x_must_be_a_matrix(backend, lib):
    for shape in [(3,), ()]:
        x = lib.asarray(np.ones(shape))
        with _raises(mx.ShapeError, "x"):
            mx.sinkhorn_knopp(x)


def test_not_an_array(backend):
    with pytest.raises(TypeError):
        mx.sinkhorn_knopp("abc")
    with pytest.raises(TypeError):
        mx.euclidean_distance(object(), np.ones(3))


def test_row_sums_shape(backend):
    x = _x((2, 3, 4))
    with _raises(mx.ShapeError, "row_sums"):
        mx.sinkhorn_knopp(x, row_sums=np.ones(4), col_sums=np.ones(4) * 0.75)
    with _raises(mx.ShapeError, "col_sums"):
        mx.sinkhorn_knopp(x, row_sums=np.ones(3), col_sums=np.ones(3))
    with _raises(mx.ShapeError, "row_sums"):  # batch (5,) does not broadcast to (2,)
        mx.sinkhorn_knopp(x, row_sums=np.ones((5, 3)), col_sums=np.full((5, 4), 0.75))


def test_row_sums_negative(backend):
    x = _x((3, 3))
    with _raises(ValueError, "row_sums"):
        mx.sinkhorn_knopp(x, row_sums=np.array([2.0, -1.0, 2.0]), col_sums=np.ones(3))


def test_targets_totals(backend):
    x = _x((3, 4))
    with _raises(ValueError, "row_sums", "col_sums"):
        mx.sinkhorn_knopp(x, row_sums=np.ones(3), col_sums=np.ones(4))
    # within 1e-6 relative is accepted
    mx.sinkhorn_knopp(x, row_sums=np.ones(3), col_sums=np.full(4, 0.75 * (1 + 1e-8)))


def test_negative_entry_names_index(backend, lib):
    x = _x((3, 2, 4))
    x[2, 1, 3] = -1e-30
    with pytest.raises(mx.DomainError) as ei:
        mx.sinkhorn_knopp(lib.asarray(x))
    assert "2,1,3" in str(ei.value).replace(" ", ""), str(ei.value)
    # the first negative entry in C order is named
    x[0, 1, 0] = -3.0
    with pytest.raises(mx.DomainError) as ei:
        mx.sinkhorn_knopp(lib.asarray(x))
    assert "0,1,0" in str(ei.value).replace(" ", ""), str(ei.value)


def test_negative_entry_unbatched(backend):
    x = _x((3, 3))
    x[1, 2] = -0.5
    with pytest.raises(mx.DomainError) as ei:
        mx.sinkhorn_knopp(x)
    assert "1,2" in str(ei.value).replace(" ", "")


def test_negative_entry_ragged(backend):
    xs = [_x((2, 2)), _x((3, 4))]
    xs[1][2, 0] = -1.0
    with pytest.raises(mx.DomainError) as ei:
        mx.sinkhorn_knopp(xs)
    msg = str(ei.value).replace(" ", "")
    assert "2,0" in msg, str(ei.value)


def test_bad_logits_flag(backend):
    with pytest.raises(TypeError):
        mx.sinkhorn_knopp(_x(), logits="yes")


def test_complex_ragged(backend):
    with pytest.raises(mx.UnsupportedDTypeError):
        mx.sinkhorn_knopp([_x((2, 2)), np.ones((2, 2), np.complex64)])


def test_out_must_match(backend):
    x = _x((2, 3, 3))
    with _raises(ValueError, "out"):
        mx.sinkhorn_knopp(x, out=np.empty((3, 3)))


# ---------------------------------------------------------------- distance arguments


@pytest.mark.parametrize("func", ["geometric_distance", "pairwise_distance",
                                  "check_manifold", "project_to_manifold"])
@pytest.mark.parametrize("bad", ["hyperbolic", "Euclidean", "", None])
def test_invalid_manifold(func, bad):
    x = np.full((4, 3), 0.1)
    f = getattr(mx, func)
    with _raises(ValueError if isinstance(bad, str) else (TypeError, ValueError), "manifold"):
        if func in ("geometric_distance", "pairwise_distance"):
            f(x, x, manifold=bad)
        else:
            f(x, manifold=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_curvature(backend, bad):
    x = np.full((4, 3), 0.1)
    for f in (lambda: mx.poincare_distance(x, x, curvature=bad),
              lambda: mx.geometric_distance(x, x, manifold="poincare", curvature=bad),
              lambda: mx.pairwise_distance(x, x, manifold="poincare", curvature=bad),
              lambda: mx.check_manifold(x, manifold="poincare", curvature=bad),
              lambda: mx.project_to_manifold(x, manifold="poincare", curvature=bad)):
        with _raises(ValueError, "curvature"):
            f()


@pytest.mark.parametrize("bad", ["ignore", "NaN", "", None])
def test_invalid_on_domain_error(backend, bad):
    x = np.full((4, 3), 0.1)
    for f in (lambda: mx.poincare_distance(x, x, on_domain_error=bad),
              lambda: mx.spherical_distance(x, x, on_domain_error=bad),
              lambda: mx.geometric_distance(x, x, manifold="spherical", on_domain_error=bad),
              lambda: mx.pairwise_distance(x, x, on_domain_error=bad)):
        with _raises(ValueError if isinstance(bad, str) else (TypeError, ValueError),
                     "on_domain_error"):
            f()


@pytest.mark.parametrize("func", ["euclidean_distance", "poincare_distance",
                                  "spherical_distance", "geometric_distance"])
def test_shape_mismatch(backend, lib, func):
    f = getattr(mx, func)
    x = lib.asarray(np.full((5, 3), 0.1))
    for c_shape in [(4,), (4, 3), (5, 4), (2, 5, 2)]:
        c = lib.asarray(np.full(c_shape, 0.1))
        with pytest.raises(mx.ShapeError):
            f(x, c)


def test_zero_dim_points(backend):
    with pytest.raises(mx.ShapeError):
        mx.euclidean_distance(np.ones(()), np.ones(()))


def test_pairwise_shapes(backend):
    with pytest.raises(mx.ShapeError):
        mx.pairwise_distance(np.ones((3, 2)), np.ones((4, 3)))
    with pytest.raises(mx.ShapeError):
        mx.pairwise_distance(np.ones((2, 3, 2)), np.ones((4, 2)))
    with pytest.raises(mx.ShapeError):
        mx.pairwise_distance(np.ones(3), np.ones((4, 3)))


def test_domain_error_index_poincare(backend):
    x = np.full((2, 3, 2), 0.1)
    x[1, 0] = [0.8, 0.8]
    with pytest.raises(mx.DomainError) as ei:
        mx.poincare_distance(x, np.zeros(2))
    assert "1,0" in str(ei.value).replace(" ", "")
    assert isinstance(ei.value, ValueError)


def test_project_zero_vector_sphere():
    """A zero vector has no projection onto the sphere: DomainError (or NaN)."""
    x = np.array([[1.0, 0.0], [0.0, 0.0]])
    try:
        r = mx.project_to_manifold(x, manifold="spherical")
    except mx.DomainError:
        return
    assert np.all(np.isnan(r[1])) and np.allclose(r[0], [1.0, 0.0])


# ---------------------------------------------------------------- libraries


def test_mixed_libraries_torch():
    torch = pytest.importorskip("torch")
    x = np.full((4, 3), 0.1)
    c = torch.full((3,), 0.2, dtype=torch.float64)
    for f in (mx.euclidean_distance, mx.poincare_distance, mx.spherical_distance,
              mx.pairwise_distance):
        with pytest.raises(TypeError) as ei:
            f(x, c if f is not mx.pairwise_distance else c[None])
        msg = str(ei.value).lower()
        assert "numpy" in msg and "torch" in msg, msg
    xs = _x((3, 3))
    with pytest.raises(TypeError) as ei:
        mx.sinkhorn_knopp(xs, row_sums=torch.ones(3, dtype=torch.float64),
                          col_sums=torch.ones(3, dtype=torch.float64))
    assert "numpy" in str(ei.value).lower() and "torch" in str(ei.value).lower()
    with pytest.raises(TypeError):
        mx.sinkhorn_knopp(torch.ones((3, 3), dtype=torch.float64), out=np.empty((3, 3)))


def test_mixed_libraries_strict():
    xp = pytest.importorskip("array_api_strict")
    x = np.full((4, 3), 0.1)
    with pytest.raises(TypeError) as ei:
        mx.euclidean_distance(xp.asarray(x), x)
    msg = str(ei.value).lower()
    assert "numpy" in msg and "array_api_strict" in msg, msg


def test_python_lists_are_not_arrays_or_are_converted(backend):
    """A nested list for x is either refused with TypeError or treated as a NumPy array."""
    try:
        r = mx.euclidean_distance([[0.0, 3.0]], np.array([4.0, 0.0]))
    except TypeError:
        return
    np.testing.assert_allclose(np.asarray(r), [5.0])
