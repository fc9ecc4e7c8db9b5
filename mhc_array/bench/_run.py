"""``python -m mhc_array bench``: the workloads of every family in the table's order,
measured, printed and saved (``--json``), and a saved run printed again
(``--from-json``). ``bench --gpu``: the GPU workloads instead, on the first CUDA
device, each against torch eager and compiled on the same device -- or, where
there is none, every GPU row listed as skipped (exit status 0)."""

import json
import os
import sys

import numpy as np

from .. import _dispatch
from . import _distances, _mhc, _sinkhorn
from ._measure import device_info, fmt_time, machine, measure, progress
from ._setting import Setting, gpu_unavailable


def _workloads(quick, rng, threads, compile_peers):
    """(name, {label: (fn, args)}, floor) for each workload; floor() -> (seconds, what)
    measured in the same run, or None. The families draw their data from ``rng`` in
    this order, the order of the table."""
    s = Setting(rng, threads, compile_peers)
    work = (_sinkhorn.rows(s) + _distances.rows(s) + _mhc.rows(s, quick)
            + _mhc.decode_rows(s, quick) + _sinkhorn.training_rows(s)
            + _mhc.training_rows(s, quick))
    if not quick:
        work += _distances.bandwidth_rows(s) + _sinkhorn.large_rows(s) + _distances.scaling_rows(s)
    return work


def _gpu_workloads():
    """(name, build(setting, name)) of every GPU workload, in the table's order."""
    return _sinkhorn.gpu_rows() + _distances.gpu_rows() + _mhc.gpu_rows()


def run(*, quick=False, json_path=None, plot_path=None, only=None, threads=1,
        compile_peers=None, gpu=False):
    """One benchmark run (see the module docstring): NumPy's BLAS held at ``threads``
    threads for the run (threadpoolctl, in the bench extra), as torch is: a BLAS left
    at every core would time NumPy's candidates at more threads than the table says,
    and its workers, spinning after each call, slow the candidate measured next."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limiter, blas = None, "not limited (threadpoolctl is not installed)"
    else:
        limiter, blas = threadpool_limits(limits=threads), f"{threads} (threadpoolctl)"
    try:
        if gpu:
            return _gpu_measured(blas, quick=quick, json_path=json_path, only=only,
                                 threads=threads, compile_peers=compile_peers)
        return _measured(blas, quick=quick, json_path=json_path, plot_path=plot_path,
                         only=only, threads=threads, compile_peers=compile_peers)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _selected(work, only, kind, scope=""):
    """The workloads whose name contains one of ``only`` (all without it); None,
    after saying so and listing the names, when none does."""
    if not only:
        return work
    chosen = [w for w in work if any(s in w[0] for s in only)]
    if not chosen:
        names = "\n  ".join(w[0] for w in work)
        print(f"mhc_array bench: no {kind} matches --only {' '.join(map(repr, only))}; "
              f"the {kind}s{scope} are:\n  {names}", file=sys.stderr)
        return None
    return chosen


def _measured(blas, *, quick=False, json_path=None, plot_path=None, only=None, threads=1,
        compile_peers=None):
    rng = np.random.default_rng(0)
    if compile_peers is None:
        compile_peers = not quick
    work = _selected(_workloads(quick, rng, threads, compile_peers), only, "workload",
                     " of --quick" if quick else "")
    if work is None:
        return 2
    rounds, budget = (5, 0.004) if quick else (11, 0.02)
    machine_line = machine()
    print(f"mhc_array bench ({'quick' if quick else 'full'}): {machine_line}")
    print(f"float32, {threads} thread(s) unless the label says x2, median of {rounds} "
          f"interleaved rounds; 'of floor' = floor time / candidate time; NumPy's BLAS "
          f"threads: {blas}")
    native = _dispatch.backend("native")
    print(f"native: {'best ISA ' + native.BEST_ISA if native.lib else native.UNAVAILABLE}")
    results = []
    bar = progress(len(work))
    for name, cands, floor in work:
        med = measure(cands, rounds, budget)
        entry = {"workload": name, "median_s": med}
        if floor is not None:
            measured = floor()
            entry["floor_s"], entry["floor"] = measured[:2]
            if len(measured) > 2:
                entry["floors_s"] = measured[2]
        results.append(entry)
        bar(name)
    bar(None)
    for r in results:
        _print_workload(r)
    data = {"machine": machine_line, "quick": quick, "threads": threads, "rounds": rounds,
            "blas_threads": blas, "results": results}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=2)
    if plot_path:
        from ._plot import plot
        for written in plot(data, plot_path):
            print(f"chart: {written}")
    return 0


def _gpu_measured(blas, *, quick=False, json_path=None, only=None, threads=1,
                  compile_peers=None):
    """``bench --gpu``: each GPU workload built, measured and printed in turn (its data
    freed before the next), the device synchronised around every candidate's
    repetitions; a candidate or a workload that fails is reported in the results,
    not fatal."""
    work = _selected(_gpu_workloads(), only, "GPU workload")
    if work is None:
        return 2
    rounds, budget = (5, 0.004) if quick else (11, 0.02)
    machine_line = machine()
    why = gpu_unavailable()
    data = {"machine": machine_line, "gpu": True, "quick": quick, "threads": threads,
            "rounds": rounds, "blas_threads": blas, "device": None, "results": []}
    print(f"mhc_array bench --gpu ({'quick' if quick else 'full'}): {machine_line}")
    if why is not None:
        print(f"device: none ({why})")
    else:
        import torch
        info = device_info(torch)
        data["device"] = info
        print(f"device: {info['line']}")
        print(f"float32 unless the label says bf16, median of {rounds} interleaved rounds, "
              f"the device synchronised around each candidate's repetitions; 'of floor' = "
              f"floor time / candidate time, the floor the bytes moved at the device's "
              f"copy rate")
        if compile_peers is None:
            compile_peers = not quick
        s = Setting(np.random.default_rng(0), threads, compile_peers, device="cuda")
    for name, build in work:
        entry = (_gpu_entry(s, name, build, rounds, budget) if why is None else
                 {"workload": name, "skipped": f"no CUDA device ({why})"})
        data["results"].append(entry)
        _print_workload(entry)              # as measured, and saved so far: a run
        _save(data, json_path)              # stopped later keeps these rows
        if why is None:
            torch.cuda.empty_cache()
    return 0


def _save(data, json_path):
    if json_path:
        with open(json_path + ".part", "w") as f:
            json.dump(data, f, indent=2)
        os.replace(json_path + ".part", json_path)


def _gpu_entry(s, name, build, rounds, budget):
    """One GPU row measured, with the seconds it took (compilations included)."""
    import time
    t0 = time.perf_counter()
    entry = _gpu_row(s, name, build, rounds, budget)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def _gpu_row(s, name, build, rounds, budget):
    try:
        row = build(s, name)
        if row is None:
            return {"workload": name, "skipped": "a peer it needs is not installed"}
        _, cands, floor = row
        failed = {}
        entry = {"workload": name, "median_s": measure(cands, rounds, budget, s.sync(),
                                                       failed)}
        if failed:
            entry["failed"] = failed
        if floor is not None:
            entry["floor_s"], entry["floor"] = floor()[:2]
        return entry
    except Exception as exc:  # noqa: BLE001 - one workload's failure is reported
        return {"workload": name, "error": f"{type(exc).__name__}: {exc}"[:500]}


def replot(json_path, plot_path):
    """``bench --from-json FILE``: print the tables of a saved run (``--json``) and, with
    ``plot_path``, draw its charts; nothing is measured."""
    with open(json_path) as f:
        data = json.load(f)
    print(f"mhc_array bench results from {json_path}: {data['machine']}")
    if data.get("device"):
        print(f"device: {data['device']['line']}")
    for r in data["results"]:
        _print_workload(r)
    if plot_path:
        from ._plot import plot
        for written in plot(data, plot_path):
            print(f"chart: {written}")
    return 0


def _print_workload(r):
    if "median_s" not in r:
        why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
        print(f"\n{r['workload']}\n  {why}")
        return
    med = r["median_s"]
    base, peer = med.get("numpy"), med.get("torch eager")
    comp, floor = med.get("torch.compile"), r.get("floor_s")
    took = f"  ({r['seconds']} s with compilations)" if "seconds" in r else ""
    print(f"\n{r['workload']}{took}")
    if floor is not None:
        print(f"  floor {fmt_time(floor).strip()}: {r['floor']}")
    print(f"  {'candidate':<24}{'median':>12}{'vs numpy':>10}{'vs torch':>10}"
          f"{'vs compile':>11}{'of floor':>10}")
    for label, s in med.items():
        cols = [f"{base / s:8.1f}x" if base else "",
                f"{peer / s:8.1f}x" if peer else "",
                f"{comp / s:9.1f}x" if comp else "",
                f"{floor / s:9.0%}" if floor is not None and label.startswith("mhc") else ""]
        print(f"  {label:<24}{fmt_time(s):>12}{cols[0]:>10}{cols[1]:>10}{cols[2]:>11}"
              f"{cols[3]:>10}")
    for label, why in r.get("failed", {}).items():
        print(f"  {label:<24}{'failed':>12}  {why}")
