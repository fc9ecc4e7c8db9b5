"""Dask arrays on a real dask.distributed cluster of two local worker processes:
lazy results computed block-wise by the same kernels, equal to the float64
references; errors at graph construction where shapes tell, at compute where
values do."""

import os
import signal

import numpy as np
import pytest

import mhc_array as mx
import reference as ref

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=":0",
                                       silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _chunked(a, rows):
    return da.from_array(a, chunks=(rows,) + a.shape[1:])


@pytest.mark.parametrize("manifold", ["euclidean", "poincare", "spherical"])
def test_distances_match_the_reference(client, manifold):
    rng = np.random.default_rng(1)
    x = ref.ball_points(rng, (500,), 24) if manifold == "poincare" else rng.standard_normal((500, 24))
    c = x[3].copy()
    lazy = mx.geometric_distance(_chunked(x, 100), c, manifold=manifold)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((100,) * 5,)
    assert lazy.dtype == np.float64 and type(lazy._meta) is np.ndarray  # known unevaluated
    as32 = mx.geometric_distance(_chunked(x.astype(np.float32), 100), c.astype(np.float32),
                                 manifold=manifold)
    assert as32.dtype == np.float32 and as32._meta.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(), ref.distance(manifold, x, c), rtol=1e-12)
    pw = mx.pairwise_distance(_chunked(x[:90], 30), _chunked(x[:70], 35), manifold=manifold)
    assert pw.shape == (90, 70) and pw.numblocks == (3, 2)
    np.testing.assert_allclose(pw.compute(), ref.pairwise(manifold, x[:90], x[:70]),
                               rtol=1e-12, atol=1e-15)


def test_sinkhorn_and_targets(client):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 4, 5))
    rs = rng.uniform(0.5, 1.5, (256, 4))
    cs = np.broadcast_to(rs.sum(-1, keepdims=True) / 5, (256, 5)).copy()
    got = mx.sinkhorn_knopp(_chunked(x, 64), logits=True, order="cols-first",
                            row_sums=_chunked(rs, 64), col_sums=cs)
    want = ref.sinkhorn(x, logits=True, order="cols-first", row_sums=rs, col_sums=cs)
    np.testing.assert_allclose(got.compute(), want, rtol=1e-10, atol=1e-13)


def test_mhc_connection(client):
    rng = np.random.default_rng(3)
    n, C = 4, 16
    layer = mx.MHCLayer(n, C, seed=1)
    layer.alpha[:] = [0.7, 0.5, 1.2]
    x = rng.standard_normal((64, n, C))
    f = rng.standard_normal((64, C))
    lazy = mx.mhc_pre(_chunked(x, 16), layer.phi.astype(np.float64),
                      layer.bias.astype(np.float64), layer.alpha.astype(np.float64))
    want = ref.mhc_pre(x, layer.phi, layer.bias, layer.alpha)
    assert [g.dtype for g in lazy] == [np.float64] * 4
    assert [g.chunks[0] for g in lazy] == [(16,) * 4] * 4
    for g, w in zip(lazy, want):
        assert isinstance(g, da.Array)
        np.testing.assert_allclose(g.compute(), w, rtol=1e-10, atol=1e-12)
    nxt = mx.mhc_post(_chunked(x, 16), _chunked(f, 16), lazy[2], lazy[3])
    np.testing.assert_allclose(nxt.compute(), ref.mhc_post(x, f, want[2], want[3]),
                               rtol=1e-10, atol=1e-12)


def test_split_core_axis_is_rechunked_with_a_warning(client):
    x = np.random.default_rng(4).standard_normal((40, 32))
    split = da.from_array(x, chunks=(10, 8))
    with pytest.warns(RuntimeWarning, match="core axes"):
        lazy = mx.euclidean_distance(split, np.zeros(32))
    np.testing.assert_allclose(lazy.compute(), ref.euclidean(x, np.zeros(32)), rtol=1e-12)


def test_lazy_until_compute_and_errors(client):
    x = np.random.default_rng(5).random((64, 3, 3))
    x[40, 1, 2] = -1.0
    lazy = mx.sinkhorn_knopp(_chunked(x, 16))  # the negative entry is not seen yet
    with pytest.raises(mx.DomainError, match="negative"):
        lazy.compute()
    with pytest.raises(mx.ShapeError, match="x and c"):  # shapes: at construction
        mx.euclidean_distance(_chunked(x[:, 0, :], 16), np.zeros(4))
    with pytest.raises(ValueError, match="order"):
        mx.sinkhorn_knopp(_chunked(x, 16), order="columns")
    with pytest.raises(TypeError, match="out="):
        mx.sinkhorn_knopp(_chunked(x, 16), out=np.empty_like(x))


def test_a_killed_worker_does_not_lose_the_result(client):
    """One worker process killed while the graph runs: Dask recomputes what it held."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4000, 64))
    lazy = mx.spherical_distance(_chunked(x, 50), x[0])
    victim = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    future = client.compute(lazy)
    os.kill(pid, signal.SIGKILL)  # the nanny starts a new worker; its keys are recomputed
    np.testing.assert_allclose(future.result(timeout=120), ref.spherical(x, x[0]), rtol=1e-12)
