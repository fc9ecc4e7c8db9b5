"""``python -m mhc_array bench`` runs and reports what it measured."""

import json
import subprocess
import sys

import pytest


def test_bench_quick_subset_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--quick", "--no-compile",
                        "--only", "latency euclidean", "--only", "W1b", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "W2 latency euclidean 1 x 1024" in p.stdout
    assert "vs numpy" in p.stdout
    data = json.loads(out.read_text())
    names = [r["workload"] for r in data["results"]]
    assert names == ["W1b sinkhorn 8 x 512x1024, 10 it", "W2 latency euclidean 1 x 1024"]
    for r in data["results"]:
        assert {"numpy", "mhc array_api"} <= set(r["median_s"])
        assert all(t > 0 for t in r["median_s"].values())


def test_bench_rejects_unknown_option():
    p = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--bogus"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "--bogus" in p.stderr


@pytest.mark.parametrize("argv", [["info"]])
def test_cli_main_function(argv, capsys):
    from mhc_array.__main__ import main
    assert main(argv) == 0
    assert "backend setting" in capsys.readouterr().out


# ---------------------------------------------------------------- charts (no timing)

def _synthetic_results():
    """A small results dict shaped like ``bench --json``: every kind of chart has data."""
    def row(name, base, floor=None, **extra):
        med = {"numpy": base, "torch eager": base / 2, "torch.compile": base / 4,
               "mhc array_api": base * 1.2, "mhc native avx2": base / 50,
               "mhc native avx2 x2": base / 80, "mhc native portable": base / 5}
        med.update(extra)
        r = {"workload": name, "median_s": med}
        if floor is not None:
            r["floor_s"], r["floor"] = floor, "one read of the points at 50.0 GB/s"
        return r
    results = [row("W1 sinkhorn 4096 x 4x4, 20 it, logits", 2e-2, 1e-4),
               row("W2 euclidean 1000 x 1024", 6e-4, 6e-5, simsimd=1.7e-4),
               dict(row("W3 mhc pre+post 4096 tokens, n=4, C=1024", 0.1, 6e-3),
                    floors_s={"memory": 6e-3, "compute": 9e-3})]
    results += [row(f"scaling sinkhorn {b}x512 x 4x4, 10 it", 1e-3 * b, 6e-6 * b)
                for b in (1, 8, 32, 128)]
    results += [row(f"scaling euclidean 1000 x {d}", 3e-7 * d, 3.5e-8 * d)
                for d in (512, 1024, 2048, 4096)]
    gpu = row("W2 bandwidth euclidean 100000 x 1024", 0.13, 2e-2)
    gpu["median_s"]["mhc cupy"] = 1e-4
    results.append(gpu)
    return {"machine": "Synthetic CPU, 2 cores usable, ISA avx2", "quick": True, "threads": 1,
            "rounds": 5, "results": results}


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_directory_writes_every_chart(tmp_path):
    pytest.importorskip("matplotlib")
    from mhc_array.bench._plot import CHARTS, plot
    written = plot(_synthetic_results(), str(tmp_path / "charts"))
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert names == sorted(CHARTS)
    for p in written:
        assert _is_png(p) and (tmp_path / "charts" / p.rsplit("/", 1)[-1]).stat().st_size > 10_000


def test_plot_file_png_writes_the_main_chart_only(tmp_path):
    pytest.importorskip("matplotlib")
    from mhc_array.bench._plot import plot
    target = tmp_path / "main.png"
    assert plot(_synthetic_results(), str(target)) == [str(target)]
    assert _is_png(target)
    assert [p.name for p in tmp_path.iterdir()] == ["main.png"]


def test_cli_charts_a_saved_run_without_measuring(tmp_path):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_synthetic_results()))
    p = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--from-json", str(saved),
                        "--plot", str(tmp_path / "img")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "W2 euclidean 1000 x 1024" in p.stdout and "vs numpy" in p.stdout
    assert _is_png(tmp_path / "img" / "speedup.png")
    assert _is_png(tmp_path / "img" / "scaling_batch.png")
