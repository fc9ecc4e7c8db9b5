"""The charts of ``python -m mhc_array bench --plot`` (matplotlib), drawn from the
results a run measured (the dict ``--json`` saves), so that a saved run can be
charted again (``bench --from-json FILE --plot DIR``).

``plot(data, path)``: a path ending in ``.png`` gets the main chart only (the
speed-ups); any other path is a directory that gets every chart that has data:

- ``speedup.png``: per workload, each mhc_array candidate (backend / ISA level,
  ``x2`` = 2 threads) against NumPy, PyTorch eager, ``torch.compile`` and SimSIMD,
  one panel per baseline, log scale;
- ``scaling_batch.png`` / ``scaling_dim.png``: time against the number of matrices
  (Sinkhorn) and the dimension (Euclidean distance), log-log, the floor as a line;
- ``mhc_connection.png``: the mHC connection (pre + post) against its memory and
  compute floors;
- ``gpu.png``: the GPU candidates (labels with "cupy" or "cuda"), when a run had any.
"""

import os
import re

__all__ = ["plot", "CHARTS"]

CHARTS = ("speedup.png", "scaling_batch.png", "scaling_dim.png", "mhc_connection.png",
          "gpu.png")
BASELINES = (("numpy", "NumPy"), ("torch eager", "PyTorch eager"),
             ("torch.compile", "torch.compile"), ("simsimd", "SimSIMD"))
_PEERS = ("numpy", "torch eager", "torch.compile", "simsimd", "HF DeepseekV4 eager",
          "bare cffi call")


def _ours(label):
    return label.startswith("mhc ")


def _gpu(label):
    return "cupy" in label or "cuda" in label


def _short(name, width=46):
    """A workload's name for an axis: up to its first ':' and at most ``width`` chars."""
    name = name.split(":")[0].strip()
    return name if len(name) <= width else name[:width - 1] + "\u2026"


_PEER_COLOURS = {"numpy": "#7f7f7f", "torch eager": "#d62728", "torch.compile": "#ff7f0e",
                 "simsimd": "#8c564b", "HF DeepseekV4 eager": "#e377c2",
                 "bare cffi call": "#aec7e8"}
# mhc_array candidates by backend / level (checked in this order), the same in every chart
_OUR_COLOURS = ((" x2", "#9467bd"), ("cupy", "#000080"), ("cuda", "#000080"),
                ("array_api", "#c49c94"), ("avx512", "#1f77b4"), ("avx2", "#2ca02c"),
                ("sse", "#17becf"), ("portable", "#bcbd22"))


def _base(label):
    """A candidate's label without the end-to-end suffix (" + F"): its backend / level."""
    return label[:-4] if label.endswith(" + F") else label


def _colour(label):
    if label in _PEER_COLOURS:
        return _PEER_COLOURS[label]
    for key, colour in _OUR_COLOURS:
        if key in label:
            return colour
    return "#393b79"


def _footer(fig, data):
    """The machine line and the run's settings, in two lines at the bottom."""
    threads = data.get("threads", 1)
    fig.text(0.01, 0.005, f"{data.get('machine', '')}\nfloat32, {threads} thread(s) unless "
             f"labelled x2; median of {data.get('rounds', '?')} interleaved rounds; "
             "python -m mhc_array bench", fontsize=7, color="#444444", ha="left", va="bottom")


_BOTTOM = 0.4   # inches kept for the footer


def _time_axis(ax, axis="y"):
    from matplotlib.ticker import EngFormatter
    fmt = EngFormatter(unit="s", places=0, sep=" ")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


# ---------------------------------------------------------------- speed-ups

def _times_label(v, _pos):
    return f"{v:g}x"


def _times():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(_times_label)

def _speedup(plt, data, results, title, path):
    """Panels (one per baseline present) of horizontal bars: baseline time / candidate
    time for each mhc_array candidate, per workload."""
    panels = []
    for key, name in BASELINES:
        rows = [r for r in results if key in r["median_s"]
                and any(_ours(c) for c in r["median_s"])]
        if rows:
            panels.append((key, name, rows))
    if not panels:
        return None
    workloads = [r["workload"] for r in results
                 if any(r in rows for _, _, rows in panels)]
    labels = []     # one bar slot per backend / level
    for r in results:
        labels += [_base(c) for c in r["median_s"] if _ours(c) and _base(c) not in labels]
    nb = len(labels)
    height = 0.8 / nb
    size = (4.2 * len(panels) + 3.2, max(3.5, 1.6 + 0.5 * len(workloads)))
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False, figsize=size)
    axes = axes[0]
    for ax, (key, name, rows) in zip(axes, panels):
        by_name = {r["workload"]: r for r in rows}
        lo, hi = 1.0, 1.0
        for j, label in enumerate(labels):
            ys, xs = [], []
            for k, w in enumerate(workloads):
                r = by_name.get(w)
                own = [c for c in (r["median_s"] if r else ()) if _base(c) == label]
                if not own:
                    continue
                ys.append(k - 0.4 + (j + 0.5) * height)
                xs.append(r["median_s"][key] / r["median_s"][own[0]])
            if xs:
                lo, hi = min(lo, *xs), max(hi, *xs)
                ax.barh(ys, xs, height=height * 0.92, color=_colour(label), label=label)
        for k, w in enumerate(workloads):  # the best candidate's ratio, written at its bar
            r = by_name.get(w)
            if r is None:
                continue
            best = min((s, c) for c, s in r["median_s"].items() if _ours(c))
            ratio = r["median_s"][key] / best[0]
            ax.text(ratio * 1.08, k, f"{ratio:.3g}x", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_times())
        ax.set_xlim(min(0.5, lo / 1.5), hi * 4)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_title(f"vs {name}", fontsize=10)
        ax.set_xlabel(f"speed-up over {name} (x, log scale; >1 = faster)", fontsize=8)
    axes[0].set_yticks(range(len(workloads)), [_short(w) for w in workloads], fontsize=8)
    axes[0].set_ylim(len(workloads) - 0.5, -0.5)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", fontsize=8, ncol=min(nb, 6),
               title="mhc_array candidate (bar); the number: best candidate",
               title_fontsize=8)
    fig.suptitle(title, x=0.01, ha="left", fontsize=12)
    _footer(fig, data)
    fig.tight_layout(rect=(0, _BOTTOM / fig.get_figheight(), 1,
                           1 - 0.65 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- scaling

_SCALING = {
    "batch": (re.compile(r"^scaling sinkhorn (\d+)x(\d+) x"),
              lambda m: int(m.group(1)) * int(m.group(2)),
              "number of 4x4 matrices (batch x 512 tokens)",
              "Sinkhorn, 10 iterations from logits: time against batch"),
    "dim": (re.compile(r"^scaling euclidean (\d+) x (\d+)"), lambda m: int(m.group(2)),
            "dimension d (1000 points)", "Euclidean distance, 1000 points: time against dimension"),
}


def _scaling(plt, data, kind, path):
    pattern, size, xlabel, title = _SCALING[kind]
    rows = []
    for r in data["results"]:
        m = pattern.match(r["workload"])
        if m:
            rows.append((size(m), r))
    if len(rows) < 2:
        return None
    rows.sort(key=lambda t: t[0])
    labels = []
    for _, r in rows:
        labels += [c for c in r["median_s"] if c not in labels and c != "mhc array_api"]
    fig, ax = plt.subplots(figsize=(9, 6))
    sizes = [s for s, _ in rows]
    for label in labels:
        pts = [(s, r["median_s"][label]) for s, r in rows if label in r["median_s"]]
        style = "-o" if _ours(label) else "--s"
        ax.plot(*zip(*pts), style, color=_colour(label), label=label, markersize=4,
                linewidth=2 if _ours(label) else 1.2)
    floors = [(s, r["floor_s"]) for s, r in rows if r.get("floor_s")]
    if floors:
        what = rows[-1][1].get("floor", "")
        what = "arithmetic at the FMA peak, 1 core" if "lane-ops" in what else \
            "one read of the data at the bandwidth measured"
        ax.plot(*zip(*floors), "-", color="black", linewidth=2.5, label=f"floor ({what})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()
    _time_axis(ax)
    from matplotlib.ticker import LogLocator
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.grid(which="major", alpha=0.3)
    ax.set_xlabel(xlabel + " (log scale)")
    ax.set_ylabel("median time per call (log scale)")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    _footer(fig, data)
    fig.tight_layout(rect=(0, _BOTTOM / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- mHC connection

def _mhc(plt, data, path):
    rows = [r for r in data["results"] if r["workload"].startswith("W3 mhc pre+post")]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, squeeze=False, figsize=(13, 1.2 + 3.3 * len(rows)))
    for ax, r in zip(axes[:, 0], rows):
        med = r["median_s"]
        labels = list(med)
        ax.barh(range(len(labels)), [med[c] for c in labels],
                color=[_colour(c) for c in labels], height=0.7)
        for k, c in enumerate(labels):
            ax.text(med[c] * 1.05, k, f"{med[c] * 1e3:.1f} ms", va="center", fontsize=7)
        floors = r.get("floors_s") or ({"memory": r["floor_s"]} if r.get("floor_s") else {})
        styles = {"memory": ("--", "#555555", "memory floor (read x + write x_next)"),
                  "compute": (":", "black", "compute floor (projection FMAs, 1 core)")}
        for key, s in floors.items():
            ls, col, name = styles[key]
            ax.axvline(s, linestyle=ls, color=col, linewidth=2,
                       label=f"{name}: {s * 1e3:.1f} ms")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xscale("log")
        lo = min(list(med.values()) + list(floors.values()))
        ax.set_xlim(lo / 1.5, max(med.values()) * 3)
        _time_axis(ax, "x")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("median time per call (log scale; shorter is faster)", fontsize=8)
        ax.set_title(_short(r["workload"], 80) + ": pre + post, F = identity", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle("The mHC connection against its floors", x=0.01, ha="left", fontsize=12)
    _footer(fig, data)
    fig.tight_layout(rect=(0, _BOTTOM / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- entry point

def plot(data, path):
    """Draw the charts of ``data`` (a run's results, as ``--json`` saves them) at
    ``path``; returns the paths written (none without matplotlib, with a message)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys
        print("--plot needs matplotlib (pip install 'mhc_array[bench]')", file=sys.stderr)
        return []
    # rows that measured something (a GPU run lists the workloads it skipped)
    data = dict(data, results=[r for r in data["results"] if "median_s" in r])
    results = [r for r in data["results"] if not r["workload"].startswith("scaling")]
    title = "mhc_array speed-ups per workload (float32)"
    if str(path).lower().endswith(".png"):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        written = _speedup(plt, data, results, title, str(path))
        return [written] if written else []
    os.makedirs(path, exist_ok=True)
    cpu = [dict(r, median_s={c: s for c, s in r["median_s"].items() if not _gpu(c)})
           for r in results]
    gpu = [dict(r, median_s={c: s for c, s in r["median_s"].items()
                             if _gpu(c) or not _ours(c)})
           for r in results if any(_gpu(c) for c in r["median_s"])]
    charts = [
        _speedup(plt, data, cpu, title, os.path.join(path, "speedup.png")),
        _scaling(plt, data, "batch", os.path.join(path, "scaling_batch.png")),
        _scaling(plt, data, "dim", os.path.join(path, "scaling_dim.png")),
        _mhc(plt, data, os.path.join(path, "mhc_connection.png")),
        _speedup(plt, data, gpu, "mhc_array on the GPU: speed-ups per workload",
                 os.path.join(path, "gpu.png")) if gpu else None,
    ]
    return [c for c in charts if c]
