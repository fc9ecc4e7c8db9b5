"""``python -m mhc_array bench --curvature``: Ollivier-Ricci curvature against
GraphRicciCurvature's ``OllivierRicci`` (exact transport, ``method="OTD"``: POT's
``ot.emd2`` per edge) on the same graphs, same alpha, same machine, in one run.

Each solver runs in a fresh subprocess (so that its peak resident memory is its
own; GraphRicciCurvature computes in a worker process forked from it, whose peak
RSS includes what it inherited); for mhc_array also the tracemalloc peak of the
Python/NumPy heap during a second, untimed run,
on one core and on two (GraphRicciCurvature ``proc=1`` / ``2``, mhc_array one / two
native threads). The
graphs are rebuilt from fixed seeds in each subprocess; the parent compares the
per-edge kappa.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ALPHA = 0.5

#: (name, builder) -- builders return (edges (E, 2) u < v, lengths (E,), n, points or None)
CASES = ("knn", "geometric")
#: core counts compared (mhc_array threads = GraphRicciCurvature worker processes)
CORES = (1, 2)


def _knn_case(n=2000, d=64, k=10, seed=0):
    from ..curvature._graph import knn_graph
    pts = np.random.default_rng(seed).standard_normal((n, d))
    edges, w = knn_graph(pts, k, "euclidean", 1.0)
    return edges, w, n, pts


def _geometric_case(n=10000, degree=10.0, seed=1):
    """A random geometric graph: n uniform points of the unit square, an edge (of
    length 1) between points closer than r, r chosen for about ``degree``
    neighbours (n * degree / 2 ~ 50,000 edges)."""
    from .._api import pairwise_distance
    pts = np.random.default_rng(seed).random((n, 2))
    r = (degree / (np.pi * n)) ** 0.5
    us, vs = [], []
    for start in range(0, n, 1024):
        D = np.asarray(pairwise_distance(pts[start:start + 1024], pts))
        i, j = np.nonzero(D < r)
        i = i + start
        keep = i < j
        us.append(i[keep])
        vs.append(j[keep])
    edges = np.stack([np.concatenate(us), np.concatenate(vs)], axis=1).astype(np.int64)
    return edges, np.ones(len(edges)), n, None


def _case(name):
    return {"knn": _knn_case, "geometric": _geometric_case}[name]()


def _describe(name, edges, n):
    if name == "knn":
        return f"k-NN graph, N=2000 points, d=64, k=10 (Euclidean lengths): {n} nodes, " \
               f"{len(edges)} edges"
    return f"random geometric graph (unit square, unit lengths): {n} nodes, {len(edges)} edges"


def _peak_rss_mib():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # Linux: KiB


def _worker(case, solver, out_path, reg, cores=1):
    edges, w, n, pts = _case(case)
    base = _peak_rss_mib()
    if solver == "mhc":
        import mhc_array as mx
        mx.set_num_threads(cores)
        mx.ollivier_ricci_curvature(None, graph=(edges[:50], w[:50]))  # warm (imports)
        base = _peak_rss_mib()
        t = time.perf_counter()
        e, kappa = mx.ollivier_ricci_curvature(None, graph=(edges, w), alpha=ALPHA, reg=reg)
        seconds = time.perf_counter() - t
        assert np.array_equal(e, edges)
        traced = _traced_peak(lambda: mx.ollivier_ricci_curvature(None, graph=(edges, w),
                                                                  alpha=ALPHA, reg=reg))
    elif solver == "mhc-points":
        import mhc_array as mx
        mx.set_num_threads(cores)
        mx.ollivier_ricci_curvature(pts[:50], k=10)
        base = _peak_rss_mib()
        t = time.perf_counter()
        e, kappa = mx.ollivier_ricci_curvature(pts, k=10, alpha=ALPHA, reg=reg)
        seconds = time.perf_counter() - t
        assert np.array_equal(e, edges)
        traced = _traced_peak(lambda: mx.ollivier_ricci_curvature(pts, k=10, alpha=ALPHA,
                                                                  reg=reg))
    else:
        import networkx as nx
        from GraphRicciCurvature.OllivierRicci import OllivierRicci
        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_weighted_edges_from(zip(edges[:, 0].tolist(), edges[:, 1].tolist(), w.tolist()))
        base = _peak_rss_mib()
        t = time.perf_counter()
        # exp_power=0: neighbours get equal mass (its default weighs them by
        # exp(-length^2)); "pairwise" shortest paths: its all-pairs matrix of a
        # 10,000-node graph would be 10^8 Python floats
        orc = OllivierRicci(G, alpha=ALPHA, method="OTD", exp_power=0, proc=cores,
                            shortest_path="all_pairs" if n <= 4000 else "pairwise",
                            verbose="ERROR")
        res = orc.compute_ricci_curvature_edges()
        seconds = time.perf_counter() - t
        traced = None  # its work is in a worker process: RSS only
        kappa = np.array([res[(int(a), int(b))] if (int(a), int(b)) in res
                          else res[(int(b), int(a))] for a, b in edges])
    np.save(out_path, kappa)
    return {"seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "base_rss_mib": base,
            "traced_peak_mib": traced}


def _traced_peak(fn):
    """Peak of the Python and NumPy heap (tracemalloc) during a second, untimed run."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def _spawn(case, solver, reg, tmp, cores=1):
    out = os.path.join(tmp, f"{case}-{solver}-{cores}.npy")
    cmd = [sys.executable, "-c",
           "import json, sys; from mhc_array.bench._curvature import _worker; "
           f"print(json.dumps(_worker({case!r}, {solver!r}, {out!r}, {reg!r}, {cores!r})))"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{solver} on {case} failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["kappa"] = np.load(out)
    return r


def grc_available():
    """None, or why GraphRicciCurvature cannot be used here."""
    try:
        import GraphRicciCurvature.OllivierRicci  # noqa: F401
        import networkx  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is a reason
        return f"{type(e).__name__}: {e}"
    return None


def run(*, cases=CASES, reg=0.01, json_path=None):
    """Print (and optionally write as JSON) the comparison; returns 0."""
    import platform
    why = grc_available()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    print(f"Ollivier-Ricci curvature, alpha={ALPHA}, method='exact' (the default; reg={reg} "
          f"unused); {model or platform.processor()}"
          f"; each row: mhc_array with that many threads, GraphRicciCurvature with proc= "
          f"that many worker processes")
    if why:
        print(f"skipped: GraphRicciCurvature not installed ({why}); it is not a "
              "dependency of mhc_array: 'pip install GraphRicciCurvature' (0.6.1 pins "
              "scipy<=1.13.1 and may replace your SciPy / NumPy)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            edges, _, n, _ = _case(case)
            print(f"\n{_describe(case, edges, n)}")
            solvers = (["mhc-points"] if case == "knn" else []) + ["mhc"]
            if not why:
                solvers.append("grc")
            labels = {"mhc": "mhc_array (graph=)", "mhc-points": "mhc_array (points, k-NN built)",
                      "grc": "GraphRicciCurvature OTD"}
            entry = {"case": case, "nodes": n, "edges": int(len(edges))}
            for cores in CORES:
                rows = {s: _spawn(case, s, reg, tmp, cores) for s in solvers}
                print(f"  {cores} core{'s' if cores > 1 else ''}:")
                for s, r in rows.items():
                    extra = ""
                    if "grc" in rows and s != "grc":
                        extra = f"  speedup {rows['grc']['seconds'] / r['seconds']:7.1f}x"
                        if s == "mhc":   # the same graph and costs: comparable edge by edge
                            d = np.abs(r["kappa"] - rows["grc"]["kappa"])
                            extra += f"  |kappa - GRC| max {d.max():.2e} mean {d.mean():.2e}"
                        else:            # points: costs are the points' distances, not paths
                            extra += "  (costs: the points' distances; kappa not GRC's)"
                    heap = (f"heap peak {r['traced_peak_mib']:6.0f} MiB"
                            if r.get("traced_peak_mib") is not None else "heap peak      -    ")
                    print(f"    {labels[s]:32s} {r['seconds']:9.3f} s  {heap}  peak RSS "
                          f"{r['peak_rss_mib']:5.0f} MiB (before the solve "
                          f"{r['base_rss_mib']:.0f}){extra}")
                entry[f"cores={cores}"] = {s: {k: v for k, v in r.items() if k != "kappa"}
                                           for s, r in rows.items()}
                if "grc" in rows:
                    d = np.abs(rows["mhc"]["kappa"] - rows["grc"]["kappa"])
                    entry[f"cores={cores}"]["kappa_abs_diff"] = {"max": float(d.max()),
                                                                 "mean": float(d.mean())}
            results.append(entry)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"cpu": model, "reg": reg, "alpha": ALPHA, "results": results}, f,
                      indent=2)
    return 0
