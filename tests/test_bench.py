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
