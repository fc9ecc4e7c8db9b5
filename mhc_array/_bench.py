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


def _numpy_mhc(x, phi, bias, alpha, iterations):
    """The paper's equations (SPEC 2.3) in NumPy: pre, then post with F = identity."""
    n, C = x.shape[-2:]
    v = x.reshape(x.shape[:-2] + (n * C,))
    y = (v @ phi) / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + 1e-6)
    h_pre = 1 / (1 + np.exp(-(alpha[0] * y[..., :n] + bias[:n])))
    h_post = 2 / (1 + np.exp(-(alpha[1] * y[..., n:2 * n] + bias[n:2 * n])))
    L = (alpha[2] * y[..., 2 * n:] + bias[2 * n:]).reshape(x.shape[:-2] + (n, n))
    M = np.exp(L - L.max(axis=(-2, -1), keepdims=True))
    for _ in range(iterations):
        M /= M.sum(-2, keepdims=True)
        M /= M.sum(-1, keepdims=True)
    h_in = np.einsum("...i,...ic->...c", h_pre, x)
    return M @ x + h_post[..., None] * h_in[..., None, :]


def _torch_mhc(torch):
    def run(x, phi, bias, alpha, iterations, f=None):
        n, C = x.shape[-2:]
        v = x.reshape(*x.shape[:-2], n * C)
        y = (v @ phi) * torch.rsqrt((v * v).mean(-1, keepdim=True) + 1e-6)
        h_pre = torch.sigmoid(alpha[0] * y[..., :n] + bias[:n])
        h_post = 2 * torch.sigmoid(alpha[1] * y[..., n:2 * n] + bias[n:2 * n])
        L = (alpha[2] * y[..., 2 * n:] + bias[2 * n:]).reshape(*x.shape[:-2], n, n)
        M = torch.exp(L - L.amax(dim=(-2, -1), keepdim=True))
        for _ in range(iterations):
            M = M / M.sum(-2, keepdim=True)
            M = M / M.sum(-1, keepdim=True)
        h_in = (h_pre.unsqueeze(-1) * x).sum(-2)
        if f is not None:
            h_in = h_in * f
        return M @ x + h_post.unsqueeze(-1) * h_in.unsqueeze(-2)
    return run


def _torch_mhc_f(torch):
    """The paper's equations in torch with F = h_in * f (differentiable: the eager and
    compiled peers of the training rows)."""
    run = _torch_mhc(torch)

    def connection(x, phi, bias, alpha, f):
        return run(x, phi, bias, alpha, 20, f)
    return connection


def _hf_v4_mhc(torch, n, C):
    """transformers' DeepseekV4HyperConnection (eager) and the decoder layer's
    expansion with F = identity, or None when transformers lacks it."""
    try:
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as m4
        from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    except Exception:  # noqa: BLE001 - not installed, or another version
        return None
    hc = m4.DeepseekV4HyperConnection(DeepseekV4Config(hidden_size=C, hc_mult=n))
    with torch.no_grad():
        hc.fn.normal_(0, 0.02)
        hc.base.zero_()
        hc.scale.fill_(0.01)

    def run(x):
        with torch.no_grad():
            post, comb, collapsed = hc(x)
            return post.unsqueeze(-1) * collapsed.unsqueeze(-2) + torch.matmul(
                comb.transpose(-1, -2), x)
    return run


def _naive_distance(manifold, sqrt, acosh, acos, clip, norm):
    """The textbook formulas a user would write in one library (the peers)."""
    def euclidean(x, c):
        return sqrt(((x - c) ** 2).sum(-1))

    def poincare(x, c):
        diff = ((x - c) ** 2).sum(-1)
        z = 2 * diff / ((1 - (x * x).sum(-1)) * (1 - (c * c).sum(-1)))
        return acosh(1 + z)

    def spherical(x, c):
        return acos(clip((x * c).sum(-1) / (norm(x) * norm(c)), -1, 1))
    return {"euclidean": euclidean, "poincare": poincare, "spherical": spherical}[manifold]


def _numpy_distance(manifold):
    return _naive_distance(manifold, np.sqrt, np.arccosh, np.arccos, np.clip,
                           lambda a: np.linalg.norm(a, axis=-1))


def _torch_distance(torch, manifold):
    return _naive_distance(manifold, torch.sqrt, torch.acosh, torch.acos, torch.clamp,
                           lambda a: torch.linalg.norm(a, dim=-1))


def _simsimd_distance(simsimd, manifold, threads):
    if manifold == "euclidean":
        return lambda x, c: np.asarray(simsimd.cdist(x, c[None, :], metric="euclidean",
                                                     threads=threads))
    if manifold == "spherical":
        return lambda x, c: np.arccos(np.clip(1 - np.asarray(
            simsimd.cdist(x, c[None, :], metric="cosine", threads=threads)), -1, 1))
    return None


def _mhc_candidates(threads):
    """(label, context factory) for every mhc_array backend / ISA level available, at
    ``threads`` threads, plus the best native level at 2 threads."""
    from .backends import native
    out = [("mhc array_api", _ctx("array_api", None, threads))]
    if native.lib is not None:
        best = native.ISA_CODES[native.BEST_ISA]
        for name, code in sorted(native.ISA_CODES.items(), key=lambda kv: -kv[1]):
            if code <= best:
                out.append((f"mhc native {name}", _ctx("native", name, threads)))
        if threads != 2:
            out.insert(2, (f"mhc native {native.BEST_ISA} x2", _ctx("native", native.BEST_ISA, 2)))
    return out


def _ctx(backend, isa, threads):
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with _config.use_backend(backend), _config.use_num_threads(threads):
            if isa is None:
                yield
            else:
                with _config.use_isa(isa):
                    yield
    return ctx


def _workloads(quick, rng, threads, compile_peers):
    """(name, {label: (fn, args)}, floor) for each workload; floor() -> (seconds, what)
    measured in the same run, or None."""
    torch = _maybe("torch")
    simsimd = _maybe("simsimd")
    if torch is not None:
        torch.set_num_threads(threads)
    work = []
    mhc = _mhc_candidates(threads)

    def compiled(fn):
        try:
            return torch.compile(fn, dynamic=False)
        except Exception:  # noqa: BLE001 - no compiler on this machine: leave it out
            return None

    def sinkhorn(name, batch, n, m, iterations, logits):
        x = _logits(rng, (batch, n, m)) if logits else rng.random((batch, n, m), np.float32)
        cands = {"numpy": (_numpy_sinkhorn if logits else _numpy_sinkhorn_plain,
                           (x, iterations))}
        if torch is not None:
            tx = torch.from_numpy(x)
            cands["torch eager"] = (_torch_sinkhorn(torch, logits), (tx, iterations))
            if compile_peers and (fn := compiled(_torch_sinkhorn(torch, logits))) is not None:
                cands["torch.compile"] = (fn, (tx, iterations))
        for label, ctx in mhc:
            cands[label] = (lambda a: _api.sinkhorn_knopp(a, iterations=iterations,
                                                         logits=logits), (x,), ctx)
        if n * m <= 64:
            floor = _arith_floor(batch, n, m, iterations, logits)
        else:
            floor = _read_floor(x, iterations + 2, f"{iterations} reads + 1 write of the matrices")
        work.append((name, cands, floor))

    def distance(name, rows, d, manifold):
        scale = 0.9 / math.sqrt(d) if manifold == "poincare" else 1.0
        x = (rng.standard_normal((rows, d)) * scale * 0.5).astype(np.float32)
        c = (rng.standard_normal(d) * scale * 0.5).astype(np.float32)
        cands = {"numpy": (_numpy_distance(manifold), (x, c))}
        if torch is not None:
            tx, tc = torch.from_numpy(x), torch.from_numpy(c)
            cands["torch eager"] = (_torch_distance(torch, manifold), (tx, tc))
            if compile_peers and (fn := compiled(_torch_distance(torch, manifold))) is not None:
                cands["torch.compile"] = (fn, (tx, tc))
        if simsimd is not None and _simsimd_distance(simsimd, manifold, threads) is not None:
            cands["simsimd"] = (_simsimd_distance(simsimd, manifold, threads), (x, c))
        fn = {"euclidean": _api.euclidean_distance, "poincare": _api.poincare_distance,
              "spherical": _api.spherical_distance}[manifold]
        for label, ctx in mhc:
            cands[label] = (fn, (x, c), ctx)
        if rows == 1:  # latency: the reference is the bare cffi call, not a bandwidth
            bare = _bare_distance(manifold, x, c)
            if bare is not None:
                cands["bare cffi call"] = bare
            work.append((name, cands, None))
        else:
            work.append((name, cands, _read_floor(x, 1, "one read of the points")))

    def mhc_connection(name, tokens, n, C):
        from ._mhc import MHCLayer, mhc_post
        x = rng.standard_normal((tokens, n, C)).astype(np.float32)
        layer = MHCLayer(n, C, seed=0)
        phi, bias, alpha = layer.phi, layer.bias, layer.alpha
        buf = np.empty_like(x)

        def ours(a):
            h_in, _, h_post, h_res = layer.pre(a)
            return mhc_post(a, h_in, h_post, h_res, out=buf)   # F = identity
        cands = {"numpy": (_numpy_mhc, (x, phi, bias, alpha, 20))}
        if torch is not None:
            targs = (torch.from_numpy(x), torch.from_numpy(phi), torch.from_numpy(bias),
                     torch.from_numpy(alpha), 20)
            cands["torch eager"] = (_torch_mhc(torch), targs)
            if compile_peers and (fn := compiled(_torch_mhc(torch))) is not None:
                cands["torch.compile"] = (fn, targs)
            hf = _hf_v4_mhc(torch, n, C)
            if hf is not None:
                cands["HF DeepseekV4 eager"] = (hf, (targs[0].reshape(1, tokens, n, C),))
        for label, ctx in mhc:
            cands[label] = (ours, (x,), ctx)
        work.append((name, cands, _mhc_floor(x, n * C * (2 + n) * n)))

    def mhc_block(name, tokens, n, C):
        """End to end: F = torch Linear(C, C) around the mHC connection (native pre and
        post) vs the plain residual x + F(x) with the same F ("torch eager")."""
        if torch is None:
            return
        from ._mhc import MHCLayer, mhc_post
        lin = torch.nn.Linear(C, C)
        h = torch.randn(tokens, C)
        layer = MHCLayer(n, C, seed=0)
        x = layer.expand(h.numpy())
        buf = np.empty_like(x)

        def plain(a):
            with torch.no_grad():
                return a + lin(a)

        def connected(a):
            h_in, _, h_post, h_res = layer.pre(a)
            with torch.no_grad():
                f = lin(torch.from_numpy(h_in)).numpy()
            return mhc_post(a, f, h_post, h_res, out=buf)
        cands = {"torch eager": (plain, (h,))}
        for label, ctx in mhc:
            if label.startswith("mhc native"):
                cands[label + " + F"] = (connected, (x,), ctx)
        work.append((name, cands, None))

    def grad_row(name, cands, ours):
        """A training workload (forward + backward): ours at the best native level, at
        ``threads`` and at 2 threads (torch's own operations stay at ``threads``)."""
        native = [(label, ctx) for label, ctx in mhc if label.startswith("mhc native")]
        for label, ctx in native[:1] + [c for c in native if c[0].endswith(" x2")]:
            cands[label] = (ours, (), ctx)
        work.append((name, cands, None))

    def sinkhorn_backward(name, batch, n, iterations):
        """Sinkhorn from logits, forward + backward (upstream gradient randn): ours (the
        native backward kernel) vs autograd through the plain torch loop."""
        if torch is None:
            return
        import mhc_array.torch as mt
        x0 = torch.from_numpy(_logits(rng, (batch, n, n)))
        g = torch.from_numpy(_logits(rng, (batch, n, n)))
        loop = _torch_sinkhorn(torch, True)

        def plain(fn):
            def run():
                x = x0.clone().requires_grad_()
                fn(x, iterations).backward(g)
            return run
        cands = {"torch eager": (plain(loop), ())}
        if compile_peers and (fn := compiled(loop)) is not None:
            cands["torch.compile"] = (plain(fn), ())
        grad_row(name, cands, plain(lambda x, it: mt.sinkhorn_knopp(x, iterations=it,
                                                                   logits=True)))

    def mhc_training(name, tokens, n, C):
        """The connection (pre, F = x * f, post), forward + backward w.r.t. x and the
        parameters: ours (MHCConnection) vs the paper's equations in torch."""
        if torch is None:
            return
        import mhc_array.torch as mt
        layer = mt.MHCConnection(n, C, seed=0)
        x0 = torch.from_numpy(rng.standard_normal((tokens, n, C)).astype(np.float32))
        f = torch.from_numpy(rng.standard_normal((tokens, C)).astype(np.float32))
        g = torch.from_numpy(rng.standard_normal((tokens, n, C)).astype(np.float32))
        eq = _torch_mhc_f(torch)

        def step(fn):
            def run():
                x = x0.clone().requires_grad_()
                layer.zero_grad(set_to_none=True)
                fn(x).backward(g)
            return run
        cands = {"torch eager": (step(lambda x: eq(x, layer.phi, layer.bias, layer.alpha, f)),
                                 ())}
        if compile_peers and (fn := compiled(eq)) is not None:
            cands["torch.compile"] = (step(lambda x: fn(x, layer.phi, layer.bias, layer.alpha,
                                                        f)), ())
        grad_row(name, cands, step(lambda x: layer(x, lambda h: h * f)))

    def v4_training(name, tokens):
        """A tiny transformers DeepSeek-V4 model's training step (forward + loss +
        backward), as shipped ("torch eager") and after replace_hyper_connections."""
        if torch is None:
            return
        try:
            import transformers
            cfg = transformers.DeepseekV4Config(
                vocab_size=256, hidden_size=256, moe_intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                head_dim=64, q_lora_rank=64, num_experts_per_tok=2, n_routed_experts=4,
                n_shared_experts=1, o_groups=2, o_lora_rank=32, index_n_heads=2,
                index_head_dim=32, index_topk=16, qk_rope_head_dim=16, sliding_window=32,
                max_position_embeddings=4096, num_nextn_predict_layers=0)
            torch.manual_seed(0)
            model = transformers.DeepseekV4ForCausalLM(cfg)
        except Exception:  # noqa: BLE001 - transformers absent or without DeepSeek-V4
            return
        import copy
        import mhc_array.torch as mt
        ours = copy.deepcopy(model)
        mt.replace_hyper_connections(ours)
        ids = torch.from_numpy(rng.integers(0, 256, (1, tokens)))

        def step(m):
            def run():
                m.zero_grad(set_to_none=True)
                m(ids, labels=ids).loss.backward()
            return run
        grad_row(name, {"torch eager": (step(model), ())}, step(ours))

    sinkhorn("W1 sinkhorn 4096 x 4x4, 20 it, logits", 4096, 4, 4, 20, True)
    sinkhorn("W1 sinkhorn 4096 x 4x4, 10 it, logits", 4096, 4, 4, 10, True)
    sinkhorn("W1b sinkhorn 8 x 512x1024, 10 it", 8, 512, 1024, 10, False)
    for manifold in ("euclidean", "poincare", "spherical"):
        distance(f"W2 {manifold} 1000 x 1024", 1000, 1024, manifold)
    distance("W2 latency euclidean 1 x 1024", 1, 1024, "euclidean")
    distance("W2 latency poincare 1 x 1024", 1, 1024, "poincare")
    if quick:
        mhc_connection("W3 mhc pre+post 1024 tokens, n=4, C=1024", 1024, 4, 1024)
    else:
        mhc_connection("W3 mhc pre+post 4096 tokens, n=4, C=1024", 4096, 4, 1024)
        mhc_connection("W3 mhc pre+post 4096 tokens, n=4, C=4096", 4096, 4, 4096)
        mhc_block("W3 block F = Linear(4096, 4096), 1024 tokens, n=4: 'torch eager' is the "
                  "plain residual x + F(x)", 1024, 4, 4096)
    if quick:
        sinkhorn_backward("W1 sinkhorn fwd+bwd 4096 x 4x4, 20 it, logits (torch)", 4096, 4, 20)
        mhc_training("W3 mhc connection fwd+bwd 1024 tokens, n=4, C=1024 (torch)", 1024, 4,
                     1024)
    else:
        sinkhorn_backward("W1 sinkhorn fwd+bwd 4096 x 4x4, 20 it, logits (torch)", 4096, 4, 20)
        mhc_training("W3 mhc connection fwd+bwd 4096 tokens, n=4, C=1024 (torch)", 4096, 4,
                     1024)
        v4_training("V4 tiny model train step, 512 tokens, hidden 256, n=4: 'torch eager' is "
                    "the model as shipped", 512)
    if not quick:
        distance("W2 bandwidth euclidean 100000 x 1024", 100000, 1024, "euclidean")
        sinkhorn("W1 sinkhorn 65536 x 4x4, 20 it, logits", 65536, 4, 4, 20, True)
        for b in (1, 8, 32, 128):
            sinkhorn(f"scaling sinkhorn {b}x512 x 4x4, 10 it", b * 512, 4, 4, 10, True)
        for d in (512, 1024, 2048, 4096):
            distance(f"scaling euclidean 1000 x {d}", 1000, d, "euclidean")
    return work


# ---------------------------------------------------------------- floors

def _probe():
    from .backends import native
    return native.lib if native.lib is not None else None


def _read_floor(x, reads, what):
    """Time of ``reads`` reads of ``x`` at the read bandwidth measured now (one core)."""
    lib = _probe()
    if lib is None:
        return None
    from .backends import native
    ptr, n = native.ffi.from_buffer("float[]", x), x.size

    def floor():
        lib.mhc_probe_read_f32(ptr, n)
        best = min(_time_once(lambda: lib.mhc_probe_read_f32(ptr, n), (), 3) for _ in range(5))
        return reads * best, f"{what} at {x.nbytes / best / 1e9:.1f} GB/s"
    return floor


def _arith_floor(batch, n, m, iterations, logits):
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
        best = min(_time_once(lib.mhc_probe_fma, (it,), 1) for _ in range(5))
        rate = it * lanes / best
        return ops / rate, f"{ops / 1e6:.2f} M lane-ops at {rate / 1e9:.1f} G/s (1 core)"
    return floor


def _fma_rate():
    """Lane-FMAs per second of one core, measured now (None without the probe)."""
    lib = _probe()
    if lib is None or lib.mhc_probe_fma_lanes() == 0:
        return None
    it = 200_000
    best = min(_time_once(lib.mhc_probe_fma, (it,), 1) for _ in range(5))
    return it * lib.mhc_probe_fma_lanes() / best


def _mhc_floor(x, fma_per_token):
    """The mHC connection's floors: memory (one read of x + one write of x_next) and
    compute (the projection's ``n*C*(2+n)*n`` FMAs per token at one core's FMA peak);
    the binding one is the floor, both are kept (``floors_s``)."""
    memory = _read_floor(x, 2, "one read of x + one write of x_next")
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
        lesser = _fmt_time(min(mem_s, comp_s)).strip()
        return (max(mem_s, comp_s), f"{what} (binds; {other}: {lesser})",
                {"memory": mem_s, "compute": comp_s})
    return floor


def _bare_distance(manifold, x, c):
    """The native kernel called directly through cffi with prepared pointers: what
    the frontend's cost per call is measured against."""
    from .backends import native
    if native.lib is None:
        return None
    out = np.empty(x.shape[0], np.float32)
    ffi = native.ffi
    p = [ffi.from_buffer("float[]", a) for a in (x, c, out)]
    code = {"euclidean": 0, "poincare": 1, "spherical": 2}[manifold]
    isa = native.ISA_CODES[native.BEST_ISA]
    return (lambda: native.lib.mhc_distance_f32(code, p[0], x.shape[1], p[1], 0, p[2],
                                                x.shape[0], x.shape[1], 1.0, 0, isa, 1,
                                                ffi.NULL), ())


def _maybe(name):
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001 - a broken optional peer is just left out
        return None


# ---------------------------------------------------------------- timing

def _time_once(fn, args, reps, ctx=None):
    if ctx is not None:
        with ctx():
            return _time_once(fn, args, reps)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t0) / reps


def _measure(cands, rounds, budget):
    """Median seconds per call of each candidate, interleaved round by round.
    A candidate is (fn, args) or (fn, args, context factory entered around its reps)."""
    cands = {label: c if len(c) == 3 else (*c, None) for label, c in cands.items()}
    reps = {}
    for label, (fn, args, ctx) in cands.items():
        _time_once(fn, args, 1, ctx)  # warm-up (first-call costs, compilation, caches)
        t = _time_once(fn, args, 1, ctx)
        reps[label] = max(1, min(2000, int(budget / max(t, 1e-7))))
    samples = {label: [] for label in cands}
    for _ in range(rounds):
        for label, (fn, args, ctx) in cands.items():
            samples[label].append(_time_once(fn, args, reps[label], ctx))
    return {label: statistics.median(s) for label, s in samples.items()}


def _fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:9.1f} us"
    return f"{s * 1e3:9.2f} ms"


def run(*, quick=False, json_path=None, plot_path=None, only=None, threads=1,
        compile_peers=None):
    rng = np.random.default_rng(0)
    if compile_peers is None:
        compile_peers = not quick
    work = _workloads(quick, rng, threads, compile_peers)
    if only:
        work = [w for w in work if any(s in w[0] for s in only)]
    rounds, budget = (5, 0.004) if quick else (11, 0.02)
    machine = _machine()
    print(f"mhc_array bench ({'quick' if quick else 'full'}): {machine}")
    print(f"float32, {threads} thread(s) unless the label says x2, median of {rounds} "
          "interleaved rounds; 'of floor' = floor time / candidate time")
    native = _dispatch.backend("native")
    print(f"native: {'best ISA ' + native.BEST_ISA if native.lib else native.UNAVAILABLE}")
    results = []
    bar = _progress(len(work))
    for name, cands, floor in work:
        med = _measure(cands, rounds, budget)
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
    data = {"machine": machine, "quick": quick, "threads": threads, "rounds": rounds,
            "results": results}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=2)
    if plot_path:
        from ._bench_plot import plot
        for written in plot(data, plot_path):
            print(f"chart: {written}")
    return 0


def replot(json_path, plot_path):
    """``bench --from-json FILE``: print the tables of a saved run (``--json``) and, with
    ``plot_path``, draw its charts; nothing is measured."""
    with open(json_path) as f:
        data = json.load(f)
    print(f"mhc_array bench results from {json_path}: {data['machine']}")
    for r in data["results"]:
        _print_workload(r)
    if plot_path:
        from ._bench_plot import plot
        for written in plot(data, plot_path):
            print(f"chart: {written}")
    return 0


def _print_workload(r):
    med = r["median_s"]
    base, peer = med.get("numpy"), med.get("torch eager")
    comp, floor = med.get("torch.compile"), r.get("floor_s")
    print(f"\n{r['workload']}")
    if floor is not None:
        print(f"  floor {_fmt_time(floor).strip()}: {r['floor']}")
    print(f"  {'candidate':<24}{'median':>12}{'vs numpy':>10}{'vs torch':>10}"
          f"{'vs compile':>11}{'of floor':>10}")
    for label, s in med.items():
        cols = [f"{base / s:8.1f}x" if base else "",
                f"{peer / s:8.1f}x" if peer else "",
                f"{comp / s:9.1f}x" if comp else "",
                f"{floor / s:9.0%}" if floor is not None and label.startswith("mhc") else ""]
        print(f"  {label:<24}{_fmt_time(s):>12}{cols[0]:>10}{cols[1]:>10}{cols[2]:>11}"
              f"{cols[3]:>10}")


def _machine():
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


# ---------------------------------------------------------------- Dask

def run_dask(rows=2_000_000, d=1024, chunk_rows=50_000, repeats=3):
    """W2 Euclidean on ``rows x d`` float32 generated on a LocalCluster of 2 worker
    processes (1 thread each) and persisted there: GB/s on 2 workers and on 1 worker
    (a cluster of one, half the rows), against the single-process native call on a
    200,000-point slice (1 thread), and the scheduler's cost per task."""
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    from . import _config
    c = np.zeros(d, np.float32)
    print(f"mhc_array bench --dask: {_machine()}")
    print(f"W2 euclidean {rows} x {d} float32 ({rows * d * 4 / 1e9:.1f} GB), "
          f"chunks of {chunk_rows} rows, best of {repeats}")
    results = {}
    for workers, n_rows in ((2, rows), (1, rows // 2)):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=":0",
                          silence_logs=40) as cluster, Client(cluster):
            x = da.random.default_rng(0).standard_normal((n_rows, d), chunks=(chunk_rows, d),
                                                         dtype=np.float32)
            x = x.persist()
            wait(x)
            lazy = _api.euclidean_distance(x, c)
            best = min(_time_once(lambda: lazy.compute(), (), 1) for _ in range(repeats))
            results[workers] = n_rows * d * 4 / best / 1e9
            print(f"  {workers} worker(s): {n_rows} rows in {best * 1e3:.1f} ms = "
                  f"{results[workers]:.2f} GB/s")
            if workers == 2:
                tiny = da.ones((2000, 8), chunks=(1, 8), dtype=np.float32)
                lazy_tiny = _api.euclidean_distance(tiny, np.zeros(8, np.float32))
                lazy_tiny.compute()
                t = min(_time_once(lambda: lazy_tiny.compute(), (), 1) for _ in range(repeats))
                per_task = t / (2 * tiny.numblocks[0])  # a kernel task and a from-array task
                print(f"  scheduler: {per_task * 1e6:.0f} us per task "
                      f"({tiny.numblocks[0]} blocks of one row, {t * 1e3:.0f} ms)")
            del x
    x = np.random.default_rng(0).standard_normal((200_000, d)).astype(np.float32)
    with _config.use_num_threads(1):
        _api.euclidean_distance(x, c)
        best = min(_time_once(_api.euclidean_distance, (x, c), 1) for _ in range(repeats * 3))
    single = x.nbytes / best / 1e9
    print(f"  one process, native, 1 thread, 200000 rows: {best * 1e3:.1f} ms = "
          f"{single:.2f} GB/s")
    print(f"  2 workers / 1 worker: {results[2] / results[1]:.2f}x; "
          f"2 workers / one process: {results[2] / single:.2f}x")
    return 0


def run_curvature(*, reg=0.01, json_path=None):
    """``bench --curvature``: Ollivier-Ricci curvature against GraphRicciCurvature
    (mhc_array/_curvature_bench.py; prints "skipped" when it is not installed)."""
    from ._curvature_bench import run as run_curvature_bench
    return run_curvature_bench(reg=reg, json_path=json_path)
