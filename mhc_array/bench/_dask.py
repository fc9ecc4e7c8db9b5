"""``python -m mhc_array bench --dask ROWS``: W2 Euclidean on a dask array spread
over a local ``dask.distributed`` cluster."""

import numpy as np

from .. import _api, _config
from ._measure import machine, time_once


def run_dask(rows=2_000_000, d=1024, chunk_rows=50_000, repeats=3):
    """W2 Euclidean on ``rows x d`` float32 generated on a LocalCluster of 2 worker
    processes (1 thread each) and persisted there: GB/s on 2 workers and on 1 worker
    (a cluster of one, half the rows), against the single-process native call on a
    200,000-point slice (1 thread), and the scheduler's cost per task."""
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    c = np.zeros(d, np.float32)
    print(f"mhc_array bench --dask: {machine()}")
    print(f"W2 euclidean {rows} x {d} float32 ({rows * d * 4 / 1e9:.1f} GB), "
          f"chunks of {chunk_rows} rows, best of {repeats}")
    results = {}
    for workers, n_rows in ((2, rows), (1, rows // 2)):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=":0",
                          silence_logs=40) as cluster, Client(cluster):
            x = da.random.default_rng(0).standard_normal((n_rows, d), chunks=(chunk_rows, d),
                                                         dtype=np.float32)
            x = x.persist()
            wait(x)
            lazy = _api.euclidean_distance(x, c)
            best = min(time_once(lambda: lazy.compute(), (), 1) for _ in range(repeats))
            results[workers] = n_rows * d * 4 / best / 1e9
            print(f"  {workers} worker(s): {n_rows} rows in {best * 1e3:.1f} ms = "
                  f"{results[workers]:.2f} GB/s")
            if workers == 2:
                tiny = da.ones((2000, 8), chunks=(1, 8), dtype=np.float32)
                lazy_tiny = _api.euclidean_distance(tiny, np.zeros(8, np.float32))
                lazy_tiny.compute()
                t = min(time_once(lambda: lazy_tiny.compute(), (), 1) for _ in range(repeats))
                per_task = t / (2 * tiny.numblocks[0])  # a kernel task and a from-array task
                print(f"  scheduler: {per_task * 1e6:.0f} us per task "
                      f"({tiny.numblocks[0]} blocks of one row, {t * 1e3:.0f} ms)")
            del x
    x = np.random.default_rng(0).standard_normal((200_000, d)).astype(np.float32)
    with _config.use_num_threads(1):
        _api.euclidean_distance(x, c)
        best = min(time_once(_api.euclidean_distance, (x, c), 1) for _ in range(repeats * 3))
    single = x.nbytes / best / 1e9
    print(f"  one process, native, 1 thread, 200000 rows: {best * 1e3:.1f} ms = "
          f"{single:.2f} GB/s")
    print(f"  2 workers / 1 worker: {results[2] / results[1]:.2f}x; "
          f"2 workers / one process: {results[2] / single:.2f}x")
    return 0
