"""What every workload family builds its rows from: the data generator, the thread
count, the optional peers (PyTorch, SimSIMD) and mhc_array's candidates, one per
backend / ISA level."""

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


class Setting:
    """One run's common ground: ``rng`` (every family draws its data from it, in the
    table's order), ``threads``, ``compile_peers``, the peers ``torch`` and
    ``simsimd`` (None when absent) and ``mhc``, mhc_array's candidates as
    (label, context factory)."""

    def __init__(self, rng, threads, compile_peers):
        self.rng, self.threads, self.compile_peers = rng, threads, compile_peers
        self.torch = maybe("torch")
        self.simsimd = maybe("simsimd")
        if self.torch is not None:
            self.torch.set_num_threads(threads)
        self.mhc = _mhc_candidates(threads)

    def compiled(self, fn):
        try:
            return self.torch.compile(fn, dynamic=False)
        except Exception:  # noqa: BLE001 - no compiler on this machine: leave it out
            return None

    def grad_row(self, name, cands, ours):
        """A training workload (forward + backward): ours at the best native level, at
        ``threads`` and at 2 threads (torch's own operations stay at ``threads``)."""
        native = [(label, ctx) for label, ctx in self.mhc if label.startswith("mhc native")]
        for label, ctx in native[:1] + [c for c in native if c[0].endswith(" x2")]:
            cands[label] = (ours, (), ctx)
        return (name, cands, None)
