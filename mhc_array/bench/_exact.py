"""``python -m mhc_array.bench._exact [runs]``: the exact curvature solver on the
bench's two graphs (``_curvature``: the 2,000 x 64 k-NN graph, Euclidean lengths;
the 10,000-node random geometric graph, unit lengths), without GraphRicciCurvature:
the whole ``ollivier_ricci_curvature`` call and the W1 kernel alone (``ot_exact_table``
on the k-NN graph's problems as the call builds them, ``unit_w1`` on the geometric
graph), each ``runs`` times (default 5), alternating; min and median in seconds.
Threads: as configured (``MHC_ARRAY_NUM_THREADS=1`` for one core).

``--dump PATH``: also write the k-NN graph's transport problems (``ot_exact``'s
layout: each problem's costs gathered from the table) to ``PATH`` (``.npz``), for
experiments with the solver alone.
"""

import statistics
import sys
import time

import numpy as np


def _capture(edges, w, pts):
    """The arguments of every ``ot_exact_table`` call of the k-NN graph's curvature
    (the graph= form and the points form)."""
    import mhc_array as mx
    from ..curvature import _ricci
    seen, real = [], _ricci.OT_EXACT_TABLE

    def spy(arrays, options):
        seen.append((tuple(np.array(a) for a in arrays), options))
        return real(arrays, options)
    _ricci.OT_EXACT_TABLE = spy
    try:
        mx.ollivier_ricci_curvature(None, graph=(edges, w))
        graph_calls = list(seen)
        seen.clear()
        mx.ollivier_ricci_curvature(pts, k=10)
        return graph_calls, list(seen)
    finally:
        _ricci.OT_EXACT_TABLE = real


def main(argv):
    import mhc_array as mx
    from ..curvature._graph import Graph
    from ..curvature._kernels import OT_EXACT_TABLE, UNIT_W1
    from ._curvature import _geometric_case, _knn_case
    runs = int(argv[0]) if argv and not argv[0].startswith("-") else 5
    ke, kw, kn, kpts = _knn_case()
    ge, gw, gn, _ = _geometric_case()
    graph_calls, point_calls = _capture(ke, kw, kpts)
    if "--dump" in argv:
        (table, X, Y, mu, mv, rptr, cptr), _ = graph_calls[0]
        cost = np.concatenate([table[np.ix_(X[rptr[e]:rptr[e + 1]], Y[cptr[e]:cptr[e + 1]])]
                               .ravel() for e in range(len(rptr) - 1)])
        np.savez(argv[argv.index("--dump") + 1], cost=cost, mu=mu, mv=mv, rptr=rptr,
                 cptr=cptr)
    g = Graph.from_edges(ge, gw, gn)
    unit_args = (g.indptr, g.indices, ge[:, 0].copy(), ge[:, 1].copy())
    jobs = {
        "k-NN graph=, whole call": lambda: mx.ollivier_ricci_curvature(None, graph=(ke, kw)),
        "k-NN points, whole call": lambda: mx.ollivier_ricci_curvature(kpts, k=10),
        "k-NN graph=, ot_exact_table alone": lambda: [OT_EXACT_TABLE(a, o)
                                                      for a, o in graph_calls],
        "k-NN points, ot_exact_table alone": lambda: [OT_EXACT_TABLE(a, o)
                                                      for a, o in point_calls],
        "geometric graph=, whole call": lambda: mx.ollivier_ricci_curvature(None,
                                                                            graph=(ge, gw)),
        "geometric, unit_w1 alone": lambda: UNIT_W1(unit_args, (0.5,)),
    }
    for fn in jobs.values():   # warm
        fn()
    times = {k: [] for k in jobs}
    for _ in range(runs):
        for name, fn in jobs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    sizes = np.diff(graph_calls[0][0][5]) + np.diff(graph_calls[0][0][6])
    print(f"threads {mx.get_num_threads()}; k-NN graph {len(ke)} edges (problem rows + "
          f"columns: mean {sizes.mean():.1f}, max {sizes.max()}); geometric graph "
          f"{len(ge)} edges; {runs} runs each")
    for name, ts in times.items():
        print(f"  {name:32s} min {min(ts):8.4f} s  median {statistics.median(ts):8.4f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
