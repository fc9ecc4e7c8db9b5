"""The pipeline's own promises: non-arrays named in a TypeError, warnings at the
caller's line however deep the call that warns, dask signatures read off the
records, cached plans that only serve the calls they were made for."""

import inspect
import warnings

import numpy as np
import pytest

import mhc_array as mx
from mhc_array import _dispatch, _pipeline

HERE = __file__.removesuffix("c")  # a .pyc path would not match the frame's file


def _public_calls():
    """(name, call with every required array valid) of each public function of
    mhc_array that takes arrays, and the positions of its required arrays."""
    x = np.abs(np.random.default_rng(0).standard_normal((3, 4, 4))) * 0.1
    p = np.abs(x[:, 0, :]) * 0.1
    w = np.zeros((16, 24))
    return {
        "sinkhorn_knopp": (lambda a: mx.sinkhorn_knopp(*a), [x]),
        "euclidean_distance": (lambda a: mx.euclidean_distance(*a), [p, p[0]]),
        "poincare_distance": (lambda a: mx.poincare_distance(*a), [p, p[0]]),
        "spherical_distance": (lambda a: mx.spherical_distance(*a), [p, p[0]]),
        "geometric_distance": (lambda a: mx.geometric_distance(*a), [p, p[0]]),
        "pairwise_distance": (lambda a: mx.pairwise_distance(*a), [p, p]),
        "check_manifold": (lambda a: mx.check_manifold(*a, manifold="poincare"), [p]),
        "project_to_manifold": (lambda a: mx.project_to_manifold(*a, manifold="spherical"), [p]),
        "mhc_pre": (lambda a: mx.mhc_pre(*a), [x, w, np.zeros(24), np.ones(3)]),
        "mhc_post": (lambda a: mx.mhc_post(*a), [x, x[:, 0], x[:, 0], x]),
    }


PUBLIC = _public_calls()


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize("bad", [None, "abc", object()], ids=["None", "str", "object"])
def test_a_non_array_is_a_type_error_naming_the_argument(name, bad):
    fn, args = PUBLIC[name]
    fn(args)  # the valid call works
    params = list(inspect.signature(getattr(mx, name)).parameters)
    for i in range(len(args)):
        bad_args = list(args)
        bad_args[i] = bad
        with pytest.raises(TypeError, match=f"^{params[i]} must be an array") as info:
            fn(bad_args)
        assert not isinstance(info.value, AttributeError)


def test_records_state_their_arguments_by_name():
    """Every record's arrays are Arg records (no shape text to parse) and a plan is
    keyed by at most two arrays."""
    for rec in _pipeline._RECORDS.values():
        assert all(isinstance(a, _pipeline.Arg) for a in rec.arrays), rec
        assert rec.plan_arrays in (0, 1, 2), rec


def test_dask_signatures_come_from_the_records():
    pytest.importorskip("dask.array")
    from mhc_array import dask as lazy
    from mhc_array._api import CHECK_MANIFOLD, EUCLIDEAN, PROJECT, SINKHORN
    from mhc_array._mhc import MHC_POST, MHC_PRE

    def sig(op):
        return lazy.signature([a.core for a in op.arrays], op.results)
    assert sig(SINKHORN) == "(n,m),(n),(m)->(n,m)"
    assert sig(EUCLIDEAN) == "(d),(d)->()"
    assert sig(CHECK_MANIFOLD) == "(d)->()"
    assert sig(PROJECT) == "(d)->(d)"
    assert sig(MHC_PRE) == "(n,C),(p,q),(k),(t)->(C),(n),(n),(n,n)"
    assert sig(MHC_POST) == "(n,C),(C),(n),(n,n)->(n,C)"
    assert not hasattr(lazy, "SIGNATURES")


def test_a_sinkhorn_plan_declines_targets():
    """A cached plan keyed by x alone must not serve a call with targets (the
    general path applies them): the result is the one with the targets."""
    x = np.random.default_rng(1).random((5, 3, 3))
    plain = mx.sinkhorn_knopp(x, iterations=50)             # makes and caches the plan
    rows = np.array([1.0, 2.0, 3.0])
    res = mx.sinkhorn_knopp(x, iterations=50, row_sums=rows, col_sums=np.full(3, 2.0))
    assert np.allclose(res.sum(-2), 2.0) and np.allclose(res.sum(-1), rows, rtol=1e-6)
    assert not np.allclose(res, plain)


# ---------------------------------------------------------------- warnings at the caller

@pytest.fixture
def fresh_warnings(monkeypatch):
    """Warnings issued once per cause: forget the causes seen so far."""
    monkeypatch.setattr(_dispatch, "_warned", set())


def _one_warning(record, category):
    hits = [w for w in record if issubclass(w.category, category)]
    assert len(hits) == 1, [str(w.message) for w in record]
    return hits[0]


def test_backend_fallback_warning_points_at_the_caller(fresh_warnings):
    x = np.zeros((2, 17, 8))   # 17 streams: more than the native mHC kernels take
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        mx.mhc_post(x, x[:, 0], x[:, :, 0], np.zeros((2, 17, 17)))
    w = _one_warning(record, RuntimeWarning)
    assert "array_api" in str(w.message)
    assert (w.filename, w.lineno) == (HERE, line)


def test_isa_fallback_warning_points_at_the_caller(monkeypatch):
    native = _dispatch.backend("native")
    if native.UNAVAILABLE is not None:
        pytest.skip(native.UNAVAILABLE)
    monkeypatch.setattr(native, "BEST_ISA", "portable")   # as on a CPU without SIMD
    monkeypatch.setattr(native, "_warned_isa", set())
    x = np.random.default_rng(0).random((4, 3, 3))
    with warnings.catch_warnings(record=True) as record, mx.use_isa("sse"):
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        mx.sinkhorn_knopp(x, iterations=3, tau=0.5)
    w = _one_warning(record, RuntimeWarning)
    assert "does not support sse" in str(w.message)
    assert (w.filename, w.lineno) == (HERE, line)


def test_dask_chunk_warning_points_at_the_caller():
    da = pytest.importorskip("dask.array")
    from mhc_array.dask import ChunkWarning
    x = da.from_array(np.random.default_rng(0).random((8, 4, 4)), chunks=(4, 2, 4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        lazy = mx.sinkhorn_knopp(x, iterations=2)
    w = _one_warning(record, ChunkWarning)
    assert (w.filename, w.lineno) == (HERE, line)
    assert lazy.compute().shape == (8, 4, 4)


def test_torch_functions_name_a_non_array():
    torch = pytest.importorskip("torch")
    import mhc_array.torch as mt
    t, x = torch.ones(2, 4, 8), torch.ones(2, 3)
    calls = {
        "x": lambda: mt.sinkhorn_knopp(None),
        "c": lambda: mt.euclidean_distance(x, None),
        "y": lambda: mt.pairwise_distance(x, "abc"),
        "phi": lambda: mt.mhc_pre(t, None, torch.ones(24), torch.ones(3)),
        "h_post": lambda: mt.mhc_post(t, torch.ones(2, 8), object(), torch.ones(2, 4, 4)),
        "h_res": lambda: mt.mhc_post_pre(t, torch.ones(2, 8), torch.ones(2, 4), None,
                                         torch.ones(32, 24), torch.ones(24), torch.ones(3)),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name} must be"):
            call()
