"""``python -m mhc_array bench`` runs and reports what it measured."""

import importlib.util
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


# ---------------------------------------------------------------- the GPU run

def test_bench_gpu_without_a_device_lists_every_row_as_skipped(tmp_path):
    """``bench --gpu`` where CuPy sees no CUDA device: exit 0, every selected GPU row
    printed and saved as skipped, no device line."""
    from mhc_array.backends import cupy
    if cupy.UNAVAILABLE is None:
        pytest.skip("a CUDA device is present: the GPU rows would be measured")
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--gpu", "--only", "GPU W2",
                        "--only", "GPU W4", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    assert data["gpu"] is True and data["device"] is None
    names = [r["workload"] for r in data["results"]]
    assert names and all(n.startswith(("GPU W2", "GPU W4")) for n in names)
    assert all(r["skipped"].startswith("no CUDA device") for r in data["results"])
    assert p.stdout.count("skipped: no CUDA device") == len(names)
    p = subprocess.run([sys.executable, "-m", "mhc_array", "bench", "--gpu", "--only", "W9"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "GPU W1 sinkhorn 4096" in p.stderr


def _cpu_stand_in():
    """A Setting that builds the GPU run's rows on CPU tensors: what runs on the
    device (the rows' data, peers and candidates) checked without one; "mhc cupy"
    is served by the native backend here."""
    import contextlib

    import numpy as np

    from mhc_array.bench._setting import Setting
    s = Setting(np.random.default_rng(0), 1, False)
    s.gpu, s.simsimd = True, None
    s.mhc = [("mhc cupy", contextlib.nullcontext)]
    s.floor = lambda nbytes, what: (lambda: (nbytes / 1e12, what))
    return s


def test_gpu_rows_build_and_measure_on_cpu_tensors():
    """Every family's GPU row, at small sizes, on CPU tensors: the torch peers and
    mhc_array's candidate all run (none fails), the floor is the bytes priced."""
    torch = pytest.importorskip("torch")
    from mhc_array.bench import _distances, _mhc, _sinkhorn
    from mhc_array.bench._measure import measure
    s = _cpu_stand_in()
    rows = [_sinkhorn._sinkhorn(s, "w1", 64, 4, 4, 20, True),
            _sinkhorn._sinkhorn_backward(s, "w1 fwd+bwd", 64, 4, 20),
            _distances._distance(s, "w2", 100, 64, "poincare"),
            _mhc._mhc_pre(s, "pre", 8, 4, 64, "paper"),
            _mhc._mhc_post(s, "post", 8, 4, 64),
            _mhc._mhc_boundary(s, "boundary", 8, 4, 64),
            _mhc._mhc_training(s, "fwd+bwd", 8, 4, 64),
            _mhc._v4_decode(s, "decode", 2, 64)]
    for name, cands, floor in rows:
        assert "numpy" not in cands and any(c.startswith("mhc cupy") for c in cands), name
        assert "torch eager" in cands or name == "decode", name
        for fn, args, *_ in cands.values():
            assert all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
        failed = {}
        med = measure(cands, 1, 1e-4, None, failed)
        assert not failed and set(med) == set(cands), (name, failed)
        assert floor is None or floor()[0] > 0


def test_gpu_peers_compute_what_mhc_array_computes():
    """The torch equations the GPU rows time mhc_pre and mhc_post against give mhc_pre's
    and mhc_post's results (the same math, not a cheaper stand-in)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    import mhc_array as mx
    from mhc_array.bench._mhc import _torch_post, _torch_pre
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 32))
    layer = mx.MHCLayer(4, 32, seed=0, dtype="float64")
    ours = mx.mhc_pre(x, layer.phi, layer.bias, layer.alpha)
    theirs = _torch_pre(torch)(*(torch.from_numpy(a) for a in (x, layer.phi, layer.bias,
                                                              layer.alpha)), 20)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-7)
    f = np.tanh(ours[0])
    np.testing.assert_allclose(mx.mhc_post(x, f, ours[2], ours[3]),
                               _torch_post(x, f, ours[2], ours[3]), rtol=1e-12, atol=1e-12)


def test_measure_reports_a_failing_candidate_and_keeps_the_others():
    from mhc_array.bench._measure import measure

    def broken():
        raise RuntimeError("no kernel image for this device")
    failed = {}
    med = measure({"ok": (lambda: None, ()), "broken": (broken, ())}, 2, 1e-4, None, failed)
    assert set(med) == {"ok"} and "no kernel image" in failed["broken"]
    with pytest.raises(RuntimeError):
        measure({"broken": (broken, ())}, 1, 1e-4)


def test_a_gpu_runs_json_prints_and_charts(tmp_path):
    """--from-json of a GPU run: the device line, measured rows with their floor and
    failed candidates, skipped and failed rows; the charts leave the unmeasured out."""
    row = {"workload": "GPU W1 sinkhorn 4096 x 4x4, 20 it, logits", "seconds": 12.5,
           "median_s": {"torch eager": 4e-4, "torch.compile": 9e-5, "mhc cupy": 2e-5},
           "floor_s": 1e-6, "floor": "one read of the matrices + one write: 0.5 MB at 3 TB/s",
           "failed": {"torch.compile x": "RuntimeError: no compiler"}}
    data = {"machine": "Synthetic CPU", "gpu": True, "quick": False, "threads": 1,
            "rounds": 11, "device": {"line": "Synthetic GPU, 132 SMs"},
            "results": [row, {"workload": "GPU W2 bandwidth euclidean 100000 x 1024",
                              "skipped": "no CUDA device (none)"},
                        {"workload": "GPU W3 mhc_post 4096 tokens, n=4, C=4096",
                         "error": "CudaOutOfMemoryError: out of memory"}]}
    saved = tmp_path / "gpu.json"
    saved.write_text(json.dumps(data))
    args = [sys.executable, "-m", "mhc_array", "bench", "--from-json", str(saved)]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--plot", str(tmp_path / "img")]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for text in ("device: Synthetic GPU, 132 SMs", "(12.5 s with compilations)", "mhc cupy",
                 "20.0x", "5%", "failed  RuntimeError: no compiler",
                 "skipped: no CUDA device (none)", "failed: CudaOutOfMemoryError"):
        assert text in p.stdout, text


def test_bench_peers_compile_whole():
    """The bench's torch peers are compiled, not skipped: Dynamo traces each into one
    graph (``fullgraph=True`` raises on the graph break a skipped file causes, which
    made "torch.compile" time eager torch)."""
    torch = pytest.importorskip("torch")
    import mhc_array  # noqa: F401 - registers the frontend's files on Dynamo's skip list
    from mhc_array import _dynamo
    from mhc_array.bench import _distances, _mhc, _sinkhorn
    _dynamo.register()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, generator=g)
    phi, bias, alpha = torch.randn(32, 24, generator=g) * 0.1, torch.zeros(24), torch.ones(3)
    f = torch.randn(3, 8, generator=g)
    hp, hr = torch.rand(3, 4, generator=g), torch.rand(3, 4, 4, generator=g)
    c = torch.randn(8, generator=g) * 0.1
    peers = [
        (_sinkhorn._torch_sinkhorn(torch, True), (x, 3)),
        (_distances._torch_distance(torch, "poincare"), (x[0] * 0.1, c)),
        (_mhc._torch_pre(torch), (x, phi, bias, alpha, 3)),
        (_mhc._torch_post, (x, f, hp, hr)),
        (_mhc._torch_mhc(torch), (x, phi, bias, alpha, 3)),
        (_mhc._torch_mhc_f(torch), (x, phi, bias, alpha, f)),
    ]
    for fn, args in peers:
        torch._dynamo.reset()
        want = fn(*args)
        got = torch.compile(fn, backend="eager", fullgraph=True)(*args)
        for a, b in zip(*((w if isinstance(w, tuple) else (w,)) for w in (want, got))):
            assert torch.allclose(a, b)
    torch._dynamo.reset()
