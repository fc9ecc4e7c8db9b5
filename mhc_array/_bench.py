"""The benchmark of ``python -m mhc_array bench``: the workloads of SPEC 4 (the
design notes' section 10), measured live, every backend and ISA level against
NumPy and, when installed, PyTorch eager and SimSIMD.

Candidates of one workload run interleaved, round by round, so that a noisy
neighbour on this shared machine hits them all alike; the table reports the
median time per call and ratios measured in the same run.
"""

import importlib.util
import json
import math
import platform
import statistics
import sys
import time

import numpy as np

from . import _api, _config, _dispatch


# ---------------------------------------------------------------- workloads

def _logits(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _numpy_sinkhorn(x, iterations):
    """The NumPy loop the targets are stated against."""
    M = np.exp(x - x.max(axis=(-2, -1), keepdims=True))
    for _ in range(iterations):
        M /= M.sum(-1, keepdims=True)
        M /= M.sum(-2, keepdims=True)
    return M


def _numpy_sinkhorn_plain(x, iterations):
    M = x.copy()
    for _ in range(iterations):
        M /= M.sum(-1, keepdims=True)
        M /= M.sum(-2, keepdims=True)
    return M


def _torch_sinkhorn(torch, logits):
    def run(x, iterations):
        M = torch.exp(x - x.amax(dim=(-2, -1), keepdim=True)) if logits else x.clone()
        for _ in range(iterations):
            M = M / M.sum(-1, keepdim=True)
            M = M / M.sum(-2, keepdim=True)
        return M
    return run


def _numpy_distance(manifold):
    def euclidean(x, c):
        return np.sqrt(((x - c) ** 2).sum(-1))

    def poincare(x, c):
        diff = ((x - c) ** 2).sum(-1)
        z = 2 * diff / ((1 - (x * x).sum(-1)) * (1 - (c * c).sum(-1)))
        return np.arccosh(1 + z)

    def spherical(x, c):
        cos = (x * c).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(c, axis=-1))
        return np.arccos(np.clip(cos, -1, 1))
    return {"euclidean": euclidean, "poincare": poincare, "spherical": spherical}[manifold]


def _torch_distance(torch, manifold):
    def euclidean(x, c):
        return torch.sqrt(((x - c) ** 2).sum(-1))

    def poincare(x, c):
        diff = ((x - c) ** 2).sum(-1)
        z = 2 * diff / ((1 - (x * x).sum(-1)) * (1 - (c * c).sum(-1)))
        return torch.acosh(1 + z)

    def spherical(x, c):
        cos = (x * c).sum(-1) / (torch.linalg.norm(x, dim=-1) * torch.linalg.norm(c, dim=-1))
        return torch.acos(torch.clamp(cos, -1, 1))
    return {"euclidean": euclidean, "poincare": poincare, "spherical": spherical}[manifold]


def _simsimd_distance(simsimd, manifold):
    if manifold == "euclidean":
        return lambda x, c: np.asarray(simsimd.cdist(x, c[None, :], metric="euclidean"))
    if manifold == "spherical":
        return lambda x, c: np.arccos(np.clip(
            1 - np.asarray(simsimd.cdist(x, c[None, :], metric="cosine")), -1, 1))
    return None


def _mhc_candidates():
    """(label, context factory) for every mhc_array backend / ISA level available."""
    from .backends import native
    out = [("mhc array_api", lambda: _config.use_backend("array_api"))]
    if native.lib is not None:
        best = native.ISA_CODES[native.BEST_ISA]
        for name, code in sorted(native.ISA_CODES.items(), key=lambda kv: -kv[1]):
            if code <= best:
                out.append((f"mhc native {name}", _native_ctx(name)))
    return out


def _native_ctx(isa):
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with _config.use_backend("native"), _config.use_isa(isa):
            yield
    return ctx


def _workloads(quick, rng):
    """(name, {label: (fn, args)}, note) for each workload."""
    torch = _maybe("torch")
    simsimd = _maybe("simsimd")
    work = []

    def sinkhorn(name, batch, n, m, iterations, logits):
        x = _logits(rng, (batch, n, m)) if logits else rng.random((batch, n, m), np.float32)
        cands = {"numpy": (_numpy_sinkhorn if logits else _numpy_sinkhorn_plain,
                           (x, iterations))}
        if torch is not None:
            cands["torch eager"] = (_torch_sinkhorn(torch, logits),
                                    (torch.from_numpy(x), iterations))
        for label, ctx in _mhc_candidates():
            cands[label] = (_in(ctx, lambda a: _api.sinkhorn_knopp(
                a, iterations=iterations, logits=logits)), (x,))
        work.append((name, cands))

    def distance(name, rows, d, manifold):
        scale = 0.9 / math.sqrt(d) if manifold == "poincare" else 1.0
        x = (rng.standard_normal((rows, d)) * scale * 0.5).astype(np.float32)
        c = (rng.standard_normal(d) * scale * 0.5).astype(np.float32)
        cands = {"numpy": (_numpy_distance(manifold), (x, c))}
        if torch is not None:
            cands["torch eager"] = (_torch_distance(torch, manifold),
                                    (torch.from_numpy(x), torch.from_numpy(c)))
        if simsimd is not None and _simsimd_distance(simsimd, manifold) is not None:
            cands["simsimd"] = (_simsimd_distance(simsimd, manifold), (x, c))
        for label, ctx in _mhc_candidates():
            cands[label] = (_in(ctx, lambda a, b: _api.geometric_distance(
                a, b, manifold=manifold)), (x, c))
        work.append((name, cands))

    sinkhorn("W1 sinkhorn 4096 x 4x4, 20 it, logits", 4096, 4, 4, 20, True)
    sinkhorn("W1 sinkhorn 4096 x 4x4, 10 it, logits", 4096, 4, 4, 10, True)
    sinkhorn("W1b sinkhorn 8 x 512x1024, 10 it", 8, 512, 1024, 10, False)
    for manifold in ("euclidean", "poincare", "spherical"):
        distance(f"W2 {manifold} 1000 x 1024", 1000, 1024, manifold)
    distance("W2 latency euclidean 1 x 1024", 1, 1024, "euclidean")
    distance("W2 latency poincare 1 x 1024", 1, 1024, "poincare")
    if not quick:
        distance("W2 bandwidth euclidean 100000 x 1024", 100000, 1024, "euclidean")
        for b in (1, 8, 32, 128):
            sinkhorn(f"scaling sinkhorn {b}x512 x 4x4, 10 it", b * 512, 4, 4, 10, True)
        for d in (512, 1024, 2048, 4096):
            distance(f"scaling euclidean 1000 x {d}", 1000, d, "euclidean")
    return work


def _in(ctx, fn):
    def run(*args):
        with ctx():
            return fn(*args)
    return run


def _maybe(name):
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - a broken optional peer is just left out
        return None


# ---------------------------------------------------------------- timing

def _time_once(fn, args, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t0) / reps


def _measure(cands, rounds, budget):
    """Median seconds per call of each candidate, interleaved round by round."""
    reps = {}
    for label, (fn, args) in cands.items():
        fn(*args)  # warm-up (first-call costs, caches)
        t = _time_once(fn, args, 1)
        reps[label] = max(1, min(1000, int(budget / max(t, 1e-7))))
    samples = {label: [] for label in cands}
    for _ in range(rounds):
        for label, (fn, args) in cands.items():
            samples[label].append(_time_once(fn, args, reps[label]))
    return {label: statistics.median(s) for label, s in samples.items()}


def _fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:9.1f} us"
    return f"{s * 1e3:9.2f} ms"


def run(*, quick=False, json_path=None, plot_path=None, only=None):
    rng = np.random.default_rng(0)
    work = _workloads(quick, rng)
    if only:
        work = [w for w in work if any(s in w[0] for s in only)]
    rounds, budget = (5, 0.004) if quick else (11, 0.02)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(f"mhc_array bench ({'quick' if quick else 'full'}): {machine}, "
          f"{_config.get_num_threads()} thread(s), float32, median of {rounds} interleaved rounds")
    native = _dispatch._backend_module("native")
    print(f"native: {'ISA best ' + native.BEST_ISA if native.lib else native.UNAVAILABLE}")
    results = []
    bar = _progress(len(work))
    for name, cands in work:
        med = _measure(cands, rounds, budget)
        results.append({"workload": name, "median_s": med})
        bar(name)
    bar(None)
    for r in results:
        med = r["median_s"]
        base, peer = med.get("numpy"), med.get("torch eager")
        print(f"\n{r['workload']}")
        print(f"  {'candidate':<22}{'median':>12}{'vs numpy':>11}{'vs torch':>11}")
        for label, s in med.items():
            vs_np = f"{base / s:9.1f}x" if base else ""
            vs_t = f"{peer / s:9.1f}x" if peer else ""
            print(f"  {label:<22}{_fmt_time(s):>12}{vs_np:>11}{vs_t:>11}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": machine, "quick": quick, "results": results}, f, indent=2)
    if plot_path:
        _plot(results, plot_path)
    return 0


def _progress(total):
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="bench", file=sys.stderr, leave=False)

        def step(name):
            if name is None:
                bar.close()
            else:
                bar.set_postfix_str(name[:30])
                bar.update(1)
        return step
    except ImportError:
        def step(name):
            print("." if name else "", end="" if name else "\n", file=sys.stderr, flush=True)
        return step


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(results)))
    labels = [r["workload"] for r in results]
    for k, r in enumerate(results):
        base = r["median_s"].get("numpy")
        for j, (label, s) in enumerate(r["median_s"].items()):
            ax.barh(k + j * 0.1, base / s if base else 0, height=0.1, label=label if k == 0 else None)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over NumPy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
