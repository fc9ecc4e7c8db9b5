"""The shape of the house: backends are adapters, public functions are records of
one pipeline, results come back on the caller's device, ``python -m mhc_array``
works from the repository root."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

import mhc_array as mx
from mhc_array import _pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = os.path.join(ROOT, "backends")


@pytest.mark.parametrize("module", sorted(f for f in os.listdir(BACKENDS) if f.endswith(".py")))
def test_backends_import_only_the_errors_from_the_frontend(module):
    """A backend may use mhc_array.errors, the compiled module and the package's
    version string (to check the compiled module against it); nothing else of the
    frontend (no config, stats or dispatch)."""
    with open(os.path.join(BACKENDS, module)) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 or (node.module or "").startswith("mhc_array"):
                mod = (node.module or "").removeprefix("mhc_array").lstrip(".")
                names = {a.name for a in node.names}
                assert mod in ("errors", "_native") or (mod == "" and names == {"__version__"}), \
                    f"{module} imports {names} from mhc_array.{mod}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                assert not a.name.startswith("mhc_array"), f"{module} imports {a.name}"


PUBLIC = ["sinkhorn_knopp", "euclidean_distance", "poincare_distance", "spherical_distance",
          "geometric_distance", "pairwise_distance", "check_manifold", "project_to_manifold",
          "mhc_pre", "mhc_post", "mhc_post_pre"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_functions_are_records_of_the_pipeline(name):
    """Each public function's body is one call of its record (an _pipeline.Op): no
    function writes the pipeline's steps out again."""
    import inspect
    fn = getattr(mx, name)
    tree = ast.parse(inspect.getsource(fn).strip())
    body = [n for n in tree.body[0].body if not isinstance(n, ast.Expr)]  # docstring dropped
    assert len(body) == 1 and isinstance(body[0], ast.Return), name
    call = body[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name), name
    assert isinstance(fn.__globals__[call.func.id], _pipeline.Op), name


def test_results_on_a_non_default_device():
    """array_api_strict's second device: every function returns on the caller's device
    (the native backend reads such arrays through DLPack and must put the result back)."""
    xp = pytest.importorskip("array_api_strict")
    dev = xp.Device("device1")
    rng = np.random.default_rng(0)

    def a(shape, scale=1.0):
        return xp.asarray(rng.standard_normal(shape) * scale, device=dev)

    n, C = 4, 8
    x, w = a((5, n, C)), a((n * C, (2 + n) * n), 0.1)
    b, al = a(((2 + n) * n,), 0.1), xp.asarray([0.5, 0.5, 0.5], device=dev)
    p, q = a((6, 3), 0.1), a((4, 3), 0.1)
    for backend in ("auto", "array_api"):
        with mx.use_backend(backend):
            h = mx.mhc_pre(x, w, b, al)
            results = [
                mx.sinkhorn_knopp(a((3, 4, 4)), logits=True),
                mx.sinkhorn_knopp(xp.abs(a((3, 4, 4))), row_sums=xp.ones(4, device=dev),
                                  col_sums=xp.ones(4, device=dev)),
                mx.euclidean_distance(p, p[0, ...]), mx.poincare_distance(p, q[0, ...]),
                mx.spherical_distance(p, q[0, ...]), mx.pairwise_distance(p, q),
                mx.pairwise_distance(p[:0, ...], q),
                mx.check_manifold(p, manifold="poincare"),
                mx.project_to_manifold(p, manifold="spherical"),
                *h, mx.mhc_post(x, h[0], h[2], h[3]),
                mx.MHCLayer(n, C, seed=0).expand(h[0]),
            ]
            for r in results:
                assert r.device == dev, (backend, r.shape, r.device)


def test_op_records_validate_options_and_name_them():
    """The record's validators run on the plan path too: a bad option on the fastest
    call still raises, naming the option."""
    x = np.ones((3, 4), np.float32)
    mx.euclidean_distance(x, x[0])  # warm the plan
    with pytest.raises(ValueError, match="curvature"):
        mx.poincare_distance(x * 0.1, x[0] * 0.1, curvature=-1.0)
    with pytest.raises(ValueError, match="on_domain_error"):
        mx.spherical_distance(x, x[0], on_domain_error="ignore")
    s = np.ones((8, 4, 4), np.float32)
    mx.sinkhorn_knopp(s)
    with pytest.raises(TypeError, match="iterations"):
        mx.sinkhorn_knopp(s, iterations=2.0)
    with pytest.raises(ValueError, match="order"):
        mx.sinkhorn_knopp(s, order="columns")


def test_plans_follow_the_configuration():
    """A plan is cached per configuration: switching backend, ISA or threads takes
    effect on the very next call, and stats() names the backend that ran."""
    x = np.random.default_rng(1).random((16, 4, 4)).astype(np.float32)
    mx.reset_stats()
    for backend in ("native", "array_api", "auto", "array_api"):
        if backend == "native" and not mx.config()["backends"]["native"]["available"]:
            continue
        with mx.use_backend(backend):
            mx.sinkhorn_knopp(x)
    used = set(mx.stats()["sinkhorn_knopp"])
    assert "array_api" in used
    assert used <= {"native", "array_api"}
    if mx.config()["backends"]["native"]["available"]:
        assert mx.stats()["sinkhorn_knopp"]["native"]["calls"] == 2
    assert mx.stats()["sinkhorn_knopp"]["array_api"]["calls"] == 2


def test_module_runs_from_the_repository_root():
    """``python -m mhc_array info`` from the repository root (where the source
    folder mhc_array/ shadows an installed package) finds the backends."""
    p = subprocess.run([sys.executable, "-m", "mhc_array", "info"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "native" in p.stdout and "array_api" in p.stdout


def test_plans_under_threads_with_different_options():
    """Threads calling the same function with different options at once: each call
    gets its own options (the remembered last options and kernel codes are swapped
    as one object, never half-updated)."""
    from conftest import run_in_threads
    import reference as ref
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 16)) * 0.05).astype(np.float64)
    c = x[0].copy()
    curvatures = [0.5, 1.0, 2.0, 4.0]
    wants = [ref.poincare(x, c, K) for K in curvatures]
    failures = []

    def worker(k):
        for _ in range(300):
            got = mx.poincare_distance(x, c, curvature=curvatures[k % 4],
                                       on_domain_error=("raise", "nan")[k % 2])
            if not np.allclose(got, wants[k % 4], rtol=1e-12, atol=0):
                failures.append(k)
                return

    run_in_threads(worker, 8)
    assert not failures


def test_every_public_function_is_counted_in_stats():
    """check_manifold and project_to_manifold used to bypass dispatch and stats: every
    public function now goes through the pipeline and is counted."""
    x = np.random.default_rng(2).random((5, 3)) * 0.1
    h = np.random.default_rng(3).standard_normal((2, 4, 8))
    layer = mx.MHCLayer(4, 8, seed=0)
    mx.reset_stats()
    mx.check_manifold(x, manifold="poincare")
    mx.project_to_manifold(x, manifold="spherical")
    mx.euclidean_distance(x, x[0])
    mx.pairwise_distance(x, x)
    mx.sinkhorn_knopp(np.ones((2, 3, 3)))
    h_in, _, h_post, h_res = layer.pre(h)
    layer.post(h, h_in, h_post, h_res)
    counted = mx.stats()
    for name in ("check_manifold", "project_to_manifold", "euclidean_distance",
                 "pairwise_distance", "sinkhorn_knopp", "mhc_pre", "mhc_post"):
        assert sum(b["calls"] for b in counted[name].values()) == 1, (name, counted.get(name))


# The installed packages and their source folders (pyproject.toml's package-dir)
PACKAGE_DIRS = {"mhc_array": "mhc_array", "mhc_array.backends": "backends",
                "mhc_array._cuda": os.path.join("native", "cuda")}
# modules that need an optional dependency, and the dependency
OPTIONAL = {"mhc_array.torch": "torch", "mhc_array.dask": "dask"}


def _package_modules():
    """Every module of the package, subpackages included: each .py file of the
    source folders, found by walking them."""
    names = []
    for package, folder in PACKAGE_DIRS.items():
        top = os.path.join(ROOT, folder)
        for path, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs
                             if os.path.isfile(os.path.join(path, d, "__init__.py")))
            rel = os.path.relpath(path, top)
            prefix = package if rel == "." else ".".join([package, *rel.split(os.sep)])
            names += [prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
                      for f in sorted(files) if f.endswith(".py")]
    return names


def test_every_module_imports_on_its_own():
    """Each module of the package imports first in a fresh interpreter (no import
    circle between modules that only works in one order); a module needing an
    optional dependency is skipped when that is absent. The interpreters run a few
    at a time."""
    import importlib.util
    from concurrent.futures import ThreadPoolExecutor
    modules = _package_modules()
    assert {"mhc_array.torch", "mhc_array.bench", "mhc_array.backends.native"} <= set(modules)
    runnable = [name for name in modules
                if all(importlib.util.find_spec(dep) is not None
                       for prefix, dep in OPTIONAL.items()
                       if name == prefix or name.startswith(prefix + "."))]

    def failure(name):
        p = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        return f"{name}: {p.stderr.strip()[-2000:]}" if p.returncode != 0 else None

    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        failed = [f for f in pool.map(failure, runnable) if f is not None]
    assert not failed, "\n".join(failed)


CURVATURE = os.path.join(ROOT, "mhc_array", "curvature")


@pytest.mark.parametrize("module", sorted(f for f in os.listdir(CURVATURE) if f.endswith(".py")))
def test_curvature_reaches_its_kernels_only_through_records(module):
    """The curvature package calls its kernels as records of the pipeline, which
    chooses the backend: it imports no backend module, does not read the
    configuration and does not pick a backend itself."""
    with open(os.path.join(CURVATURE, module)) as f:
        tree = ast.parse(f.read())
    package = ["mhc_array", "curvature"]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            imported = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            imported = [a.name for a in node.names]
        else:
            continue
        for name in imported:
            assert not name.startswith(("mhc_array.backends", "backends")), (module, name)
            assert name not in ("mhc_array._config", "mhc_array._dispatch.backend",
                                "mhc_array._dispatch.select_backend"), (module, name)
