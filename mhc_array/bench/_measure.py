"""Measurement for ``python -m mhc_array bench``: timing (candidates interleaved,
round by round; on a GPU the device synchronised around each candidate's
repetitions), the floors measured in the same run (read bandwidth and FMA peak
of one core, through the native library's probes; a GPU's device-to-device copy
rate), the machine and device lines and the progress bar."""

import platform
import statistics
import sys
import time

import numpy as np

from .. import _dispatch


# ---------------------------------------------------------------- timing

def time_once(fn, args, reps, ctx=None, sync=None):
    """Seconds per call of ``fn(*args)`` over ``reps`` calls; ``sync()`` (a GPU's
    synchronisation) before the clock starts and before it stops, so that the
    kernels the calls queued are counted and nothing queued earlier is."""
    if ctx is not None:
        with ctx():
            return time_once(fn, args, reps, sync=sync)
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / reps


def measure(cands, rounds, budget, sync=None, failed=None):
    """Median seconds per call of each candidate, interleaved round by round.
    A candidate is (fn, args) or (fn, args, context factory entered around its reps).
    ``sync``: see time_once. With a dict ``failed``, a candidate whose warm-up raises
    is left out and its error recorded there (label -> message) instead of ending
    the run."""
    cands = {label: c if len(c) == 3 else (*c, None) for label, c in cands.items()}
    reps = {}
    for label, (fn, args, ctx) in list(cands.items()):
        try:
            time_once(fn, args, 1, ctx, sync)  # warm-up (first-call costs, compilation)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            if failed is None:
                raise
            failed[label] = f"{type(exc).__name__}: {exc}"[:500]
            del cands[label]
            continue
        t = time_once(fn, args, 1, ctx, sync)
        reps[label] = max(1, min(2000, int(budget / max(t, 1e-7))))
    samples = {label: [] for label in cands}
    for _ in range(rounds):
        for label, (fn, args, ctx) in cands.items():
            samples[label].append(time_once(fn, args, reps[label], ctx, sync))
    return {label: statistics.median(s) for label, s in samples.items()}


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:9.1f} us"
    return f"{s * 1e3:9.2f} ms"


# ---------------------------------------------------------------- floors

def _probe():
    from ..backends import native
    return native.lib if native.lib is not None else None


def read_floor(x, reads, what):
    """Time of ``reads`` reads of ``x`` at the read bandwidth measured now (one core)."""
    lib = _probe()
    if lib is None:
        return None
    from ..backends import native
    ptr, n = native.ffi.from_buffer("float[]", x), x.size

    def floor():
        lib.mhc_probe_read_f32(ptr, n)
        best = min(time_once(lambda: lib.mhc_probe_read_f32(ptr, n), (), 3) for _ in range(5))
        return reads * best, f"{what} at {x.nbytes / best / 1e9:.1f} GB/s"
    return floor


def arith_floor(batch, n, m, iterations, logits):
    """Lane-operations of the Sinkhorn arithmetic over the vector FMA peak measured now:
    per iteration n(m-1) + m(n-1) adds, n + m reciprocals, 2nm multiplies per matrix,
    plus ~12 per entry for exp; divisions counted as one operation (a lower bound)."""
    lib = _probe()
    if lib is None or lib.mhc_probe_fma_lanes() == 0:
        return None
    lanes = lib.mhc_probe_fma_lanes()
    ops = batch * (iterations * (n * (m - 1) + m * (n - 1) + n + m + 2 * n * m)
                   + (12 * n * m if logits else 0))

    def floor():
        it = 200_000
        best = min(time_once(lib.mhc_probe_fma, (it,), 1) for _ in range(5))
        rate = it * lanes / best
        return ops / rate, f"{ops / 1e6:.2f} M lane-ops at {rate / 1e9:.1f} G/s (1 core)"
    return floor


def _fma_rate():
    """Lane-FMAs per second of one core, measured now (None without the probe)."""
    lib = _probe()
    if lib is None or lib.mhc_probe_fma_lanes() == 0:
        return None
    it = 200_000
    best = min(time_once(lib.mhc_probe_fma, (it,), 1) for _ in range(5))
    return it * lib.mhc_probe_fma_lanes() / best


def mhc_floor(x, fma_per_token, reads=2, traffic="one read of x + one write of x_next"):
    """The mHC connection's floors: memory (``reads`` passes over x's bytes: one read
    of x + one write of x_next by default) and compute (the projection's
    ``n*C*(2+n)*n`` FMAs per token at one core's FMA peak); the binding one is the
    floor, both are kept (``floors_s``)."""
    memory = read_floor(x, reads, traffic)
    if memory is None:
        return None

    def floor():
        mem_s, mem_what = memory()
        rate = _fma_rate()
        if rate is None:
            return mem_s, mem_what, {"memory": mem_s}
        ops = x.shape[0] * fma_per_token
        comp_s = ops / rate
        comp_what = f"{ops / 1e9:.2f} G FMAs of the projection at {rate / 1e9:.1f} G/s (1 core)"
        what = comp_what if comp_s > mem_s else mem_what
        other = mem_what if comp_s > mem_s else comp_what
        lesser = fmt_time(min(mem_s, comp_s)).strip()
        return (max(mem_s, comp_s), f"{what} (binds; {other}: {lesser})",
                {"memory": mem_s, "compute": comp_s})
    return floor


def copy_floor(torch, device, nbytes, what):
    """A GPU workload's floor: the ``nbytes`` it must move at the rate of a
    device-to-device copy (256 MiB, bytes read + written) measured now."""
    def floor():
        src = torch.empty(64 << 20, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)

        def sync():
            torch.cuda.synchronize(device)
        dst.copy_(src)
        best = min(time_once(dst.copy_, (src,), 10, sync=sync) for _ in range(5))
        rate = 2 * src.nbytes / best
        del src, dst
        return nbytes / rate, (f"{what}: {nbytes / 1e6:.1f} MB at {rate / 1e12:.2f} TB/s "
                               f"(device-to-device copy, read + write)")
    return floor


def device_info(torch, index=0):
    """The GPU a run measured: name, multiprocessors, memory, driver, CUDA and the
    versions of torch and CuPy (a dict for --json; ``line`` is its printed form)."""
    p = torch.cuda.get_device_properties(index)
    info = {"name": p.name, "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
            "torch": torch.__version__, "cupy": None, "driver": None}
    try:
        import cupy
        info["cupy"] = cupy.__version__
        v = cupy.cuda.runtime.driverGetVersion()
        info["driver"] = f"CUDA {v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001 - the line says what it could read
        pass
    try:
        import pynvml
        pynvml.nvmlInit()
        release = pynvml.nvmlSystemGetDriverVersion()
        release = release.decode() if isinstance(release, bytes) else release
        info["driver"] = f"{release} ({info['driver']})" if info["driver"] else release
    except Exception:  # noqa: BLE001
        pass
    info["line"] = (f"{info['name']}, {info['sms']} SMs, {info['memory_gib']} GiB, "
                    f"compute capability {info['capability']}, driver {info['driver']}, "
                    f"CUDA {info['cuda']}, torch {info['torch']}, CuPy {info['cupy']}")
    return info


# ---------------------------------------------------------------- machine, progress

def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    native = _dispatch.backend("native")
    peers = "".join(f", {label} {mod.__version__}" for label, mod in
                    (("PyTorch", sys.modules.get("torch")),
                     ("SimSIMD", sys.modules.get("simsimd")))
                    if mod is not None and hasattr(mod, "__version__"))
    return (f"{model}, {cores} cores usable, ISA {native.BEST_ISA}, Python "
            f"{platform.python_version()}, NumPy {np.__version__}{peers}")


def progress(total):
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
