"""What every workload family builds its rows from: the data generator, the thread
count, the optional peers (PyTorch, SimSIMD) and mhc_array's candidates, one per
backend / ISA level -- or, for the GPU run (``bench --gpu``), the CUDA device the
data lives on, the cupy backend as mhc_array's candidate and the device's
synchronisation and copy-rate floor."""

import contextlib
import importlib.util

from .. import _config


def maybe(name):
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - a broken optional peer is just left out
        return None


def _ctx(backend, isa, threads):
    @contextlib.contextmanager
    def ctx():
        with _config.use_backend(backend), _config.use_num_threads(threads):
            if isa is None:
                yield
            else:
                with _config.use_isa(isa):
                    yield
    return ctx


def _mhc_candidates(threads):
    """(label, context factory) for every mhc_array backend / ISA level available, at
    ``threads`` threads, plus the best native level at 2 threads."""
    from ..backends import native
    out = [("mhc array_api", _ctx("array_api", None, threads))]
    if native.lib is not None:
        best = native.ISA_CODES[native.BEST_ISA]
        for name, code in sorted(native.ISA_CODES.items(), key=lambda kv: -kv[1]):
            if code <= best:
                out.append((f"mhc native {name}", _ctx("native", name, threads)))
        if threads != 2:
            out.insert(2, (f"mhc native {native.BEST_ISA} x2", _ctx("native", native.BEST_ISA, 2)))
    return out


def gpu_unavailable():
    """None when the GPU run can measure (CuPy sees a CUDA device and torch has
    CUDA), else why not."""
    from ..backends import cupy
    if cupy.UNAVAILABLE is not None:
        return cupy.UNAVAILABLE
    torch = maybe("torch")
    if torch is None:
        return "the GPU workloads need PyTorch"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


class Setting:
    """One run's common ground: ``rng`` (every family draws its data from it, in the
    table's order), ``threads``, ``compile_peers``, the peers ``torch`` and
    ``simsimd`` (None when absent) and ``mhc``, mhc_array's candidates as
    (label, context factory).

    ``device``: "cpu", or "cuda" for the GPU run, where every array of a row is a
    torch tensor on the device (``tensor``, ``array``), the peers are torch's on the
    same device (no NumPy, no SimSIMD), ``mhc`` is the cupy backend, ``sync``
    synchronises the device around each candidate's repetitions and ``floor``
    prices the bytes a workload must move at the device's copy rate."""

    def __init__(self, rng, threads, compile_peers, device="cpu"):
        self.rng, self.threads, self.compile_peers = rng, threads, compile_peers
        self.device, self.gpu = device, device != "cpu"
        self.torch = maybe("torch")
        self.simsimd = None if self.gpu else maybe("simsimd")
        if self.torch is not None:
            self.torch.set_num_threads(threads)
        if self.gpu:
            self.mhc = [("mhc cupy", _ctx("cupy", None, threads))]
        else:
            self.mhc = _mhc_candidates(threads)

    def tensor(self, a):
        """NumPy ``a`` as the torch peers take it: on the CPU sharing its memory, on
        the GPU copied to the device."""
        t = self.torch.from_numpy(a)
        return t.to(self.device) if self.gpu else t

    def array(self, a):
        """NumPy ``a`` as mhc_array's candidates take it: itself on the CPU, a torch
        tensor on the device in the GPU run."""
        return self.tensor(a) if self.gpu else a

    def kernels(self):
        """mhc_array's compiled candidates: the native levels, or the cupy backend."""
        return [(label, ctx) for label, ctx in self.mhc if label != "mhc array_api"]

    def sync(self):
        """What time_once calls around the repetitions (None on the CPU)."""
        if not self.gpu:
            return None
        torch, device = self.torch, self.device
        return lambda: torch.cuda.synchronize(device)

    def floor(self, nbytes, what):
        """The GPU run's floor of a workload that must move ``nbytes`` (None on the
        CPU, whose families measure their own)."""
        if not self.gpu:
            return None
        from ._measure import copy_floor
        return copy_floor(self.torch, self.device, nbytes, what)

    def compiled(self, fn):
        try:
            return self.torch.compile(fn, dynamic=False)
        except Exception:  # noqa: BLE001 - no compiler on this machine: leave it out
            return None

    def grad_row(self, name, cands, ours):
        """A training workload (forward + backward): ours at the best native level, at
        ``threads`` and at 2 threads (torch's own operations stay at ``threads``); on
        the GPU, through the cupy backend."""
        if self.gpu:
            for label, ctx in self.mhc:
                cands[label] = (ours, (), ctx)
            return (name, cands, None)
        native = [(label, ctx) for label, ctx in self.mhc if label.startswith("mhc native")]
        for label, ctx in native[:1] + [c for c in native if c[0].endswith(" x2")]:
            cands[label] = (ours, (), ctx)
        return (name, cands, None)
