"""W3: the mHC connection (pre + post) against the paper's equations in NumPy and
PyTorch and transformers' DeepSeek-V4 hyper-connection, with its memory and compute
floors; end to end around a torch Linear; and the training rows (forward +
backward: the connection, a tiny DeepSeek-V4 model's train step). W4: V4's
connection at decode. On the GPU (``gpu_rows``): mhc_pre, mhc_post, the boundary,
the connection's forward + backward and W4 on CUDA tensors, against the same
equations in torch eager and compiled."""

import numpy as np

from .._mhc import MHCLayer, mhc_post, mhc_post_pre, mhc_pre
from ._measure import mhc_floor, read_floor


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


def _torch_pre(torch):
    """The paper's pre step in torch: ``(h_in, h_pre, h_post, h_res)`` as mhc_pre."""
    def pre(x, phi, bias, alpha, iterations):
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
        return (h_pre.unsqueeze(-1) * x).sum(-2), h_pre, h_post, M
    return pre


def _torch_post(x, f, h_post, h_res):
    """The paper's post step (any array library with ``@``): ``h_res x + h_post f``."""
    return h_res @ x + h_post[..., None] * f[..., None, :]


def _torch_mhc(torch):
    pre = _torch_pre(torch)

    def run(x, phi, bias, alpha, iterations, f=None):
        h_in, _, h_post, M = pre(x, phi, bias, alpha, iterations)
        if f is not None:
            h_in = h_in * f
        return _torch_post(x, h_in, h_post, M)
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


def _mhc_connection(s, name, tokens, n, C):
    torch, rng, mhc = s.torch, s.rng, s.mhc
    compiled, compile_peers = s.compiled, s.compile_peers
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
    return (name, cands, mhc_floor(x, n * C * (2 + n) * n))


def _mhc_pre(s, name, tokens, n, C, variant):
    """mhc_pre alone at every level against the projection alone in NumPy and torch
    (``x.reshape(T, -1) @ phi``), with the floors: one read of x, the projection's
    FMAs. On the GPU (paper variant) against the whole pre step in torch, eager and
    compiled, and the projection alone ("torch projection only")."""
    torch, rng = s.torch, s.rng
    x = rng.standard_normal((tokens, n, C)).astype(np.float32)
    layer = MHCLayer(n, C, seed=0, variant=variant)
    phi, bias, alpha = layer.phi, layer.bias, layer.alpha
    w = phi if variant == "paper" else phi.T       # (n*C, K) either way, as NumPy reads it
    v = x.reshape(tokens, n * C)
    cands = {}
    if not s.gpu:
        cands["numpy"] = (np.matmul, (v, w))
        if torch is not None:
            cands["torch eager"] = (torch.matmul, (torch.from_numpy(v), torch.from_numpy(w)))
    elif torch is not None:
        if variant == "paper":
            targs = (*(s.tensor(a) for a in (x, phi, bias, alpha)), 20)
            cands["torch eager"] = (_torch_pre(torch), targs)
            if s.compile_peers and (fn := s.compiled(_torch_pre(torch))) is not None:
                cands["torch.compile"] = (fn, targs)
        cands["torch projection only"] = (torch.matmul, (s.tensor(v), s.tensor(w)))
    xa, pa = s.array(x), tuple(s.array(a) for a in (phi, bias, alpha))

    def ours(a):
        return mhc_pre(a, *pa, variant=variant)
    for label, ctx in s.kernels():
        cands[label] = (ours, (xa,), ctx)
    if s.gpu:
        return (name, cands, s.floor(x.nbytes + tokens * C * 4, "one read of x + h_in"))
    return (name, cands, mhc_floor(x, n * C * (2 + n) * n, 1, "one read of x"))


def _mhc_post(s, name, tokens, n, C):
    """mhc_post alone (F = tanh(h_in)) against its equation ``h_res x + h_post f``
    in NumPy (CPU), torch eager and compiled, into a preallocated output."""
    torch, rng = s.torch, s.rng
    x = rng.standard_normal((tokens, n, C)).astype(np.float32)
    h_in, _, h_post, h_res = MHCLayer(n, C, seed=0).pre(x)
    f = np.tanh(h_in)
    arrays = (x, f, h_post, h_res)
    cands = {} if s.gpu else {"numpy": (_torch_post, arrays)}
    if torch is not None:
        targs = tuple(s.tensor(a) for a in arrays)
        cands["torch eager"] = (_torch_post, targs)
        if s.compile_peers and (fn := s.compiled(_torch_post)) is not None:
            cands["torch.compile"] = (fn, targs)
    args = tuple(s.array(a) for a in arrays)
    buf = s.array(np.empty_like(x))

    def ours(a, fo, hp, hr):
        return mhc_post(a, fo, hp, hr, out=buf)
    for label, ctx in s.kernels():
        cands[label] = (ours, args, ctx)
    if s.gpu:
        return (name, cands, s.floor(2 * x.nbytes + f.nbytes,
                                     "one read of x and f_out + one write of x_next"))
    return (name, cands, read_floor(x, 2, "one read of x + one write of x_next"))


def _mhc_boundary(s, name, tokens, n, C):
    """The layer boundary: mhc_post then mhc_pre ("2-pass": two passes over the
    streams) against the fused mhc_post_pre ("fused": x_next projected from the
    cache), in place, per level. On the GPU also against post then pre in torch,
    eager and compiled; "fused" only where the cupy backend has mhc_post_pre."""
    torch, rng = s.torch, s.rng
    x = rng.standard_normal((tokens, n, C)).astype(np.float32)
    first, second = MHCLayer(n, C, seed=0), MHCLayer(n, C, seed=1)
    h_in, _, h_post, h_res = first.pre(x)
    f = np.tanh(h_in)
    fa, hpa, hra = (s.array(a) for a in (f, h_post, h_res))
    y = s.array(x.copy())
    p = tuple(s.array(a) for a in (second.phi, second.bias, second.alpha))

    def separate(a):
        nxt = mhc_post(a, fa, hpa, hra, out=y)
        return mhc_pre(nxt, *p)

    def fused(a):
        return mhc_post_pre(a, fa, hpa, hra, *p, out=y)
    cands = {}
    fusable = True
    if s.gpu:
        from .. import _dispatch
        fusable = hasattr(_dispatch.backend("cupy"), "mhc_post_pre")
        if torch is not None:
            pre = _torch_pre(torch)

            def equations(x, f, hp, hr, phi, bias, alpha):
                return pre(_torch_post(x, f, hp, hr), phi, bias, alpha, 20)
            targs = tuple(s.tensor(a) for a in (x, f, h_post, h_res, second.phi, second.bias,
                                                second.alpha))
            cands["torch eager"] = (equations, targs)
            if s.compile_peers and (fn := s.compiled(equations)) is not None:
                cands["torch.compile"] = (fn, targs)
    xa = s.array(x)
    for label, ctx in s.kernels():
        cands[label + " 2-pass"] = (separate, (xa,), ctx)    # post, then pre
        if fusable:
            cands[label + " fused"] = (fused, (xa,), ctx)    # post_pre
    if s.gpu:
        return (name, cands, s.floor(2 * x.nbytes + f.nbytes + tokens * C * 4,
                                     "one read of x and f_out + one write of x_next + h_in"))
    return (name, cands, mhc_floor(x, n * C * (2 + n) * n))


def _mhc_block(s, name, tokens, n, C):
    """End to end: F = torch Linear(C, C) around the mHC connection (native pre and
    post) vs the plain residual x + F(x) with the same F ("torch eager")."""
    torch, mhc = s.torch, s.mhc
    if torch is None:
        return
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
    return (name, cands, None)


def _mhc_training(s, name, tokens, n, C):
    """The connection (pre, F = x * f, post), forward + backward w.r.t. x and the
    parameters: ours (MHCConnection) vs the paper's equations in torch."""
    torch, rng = s.torch, s.rng
    compiled, compile_peers = s.compiled, s.compile_peers
    if torch is None:
        return
    import mhc_array.torch as mt
    layer = mt.MHCConnection(n, C, seed=0).to(s.device)
    x0 = s.tensor(rng.standard_normal((tokens, n, C)).astype(np.float32))
    f = s.tensor(rng.standard_normal((tokens, C)).astype(np.float32))
    g = s.tensor(rng.standard_normal((tokens, n, C)).astype(np.float32))
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
    return s.grad_row(name, cands, step(lambda x: layer(x, lambda h: h * f)))


def _v4_training(s, name, tokens):
    """A tiny transformers DeepSeek-V4 model's training step (forward + loss +
    backward), as shipped ("torch eager") and after replace_hyper_connections."""
    torch, rng = s.torch, s.rng
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
    return s.grad_row(name, {"torch eager": (step(model), ())}, step(ours))


def _v4_decode(s, name, tokens, hidden, n=4):
    """W4: DeepSeek-V4's hyper-connection at decode (bfloat16 streams, no_grad):
    transformers' DeepseekV4HyperConnection eager and compiled, against the module
    replace_hyper_connections puts in its place (same Parameters), at every native
    level (the torch custom op on CPU tensors). On the GPU on CUDA tensors through
    the cupy backend, with the floor of one read of x and fn; without transformers'
    module there, ours alone."""
    torch, compiled, compile_peers = s.torch, s.compiled, s.compile_peers
    if torch is None:
        return
    import mhc_array.torch as mt
    try:
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as m4
        from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    except Exception:  # noqa: BLE001 - transformers absent or without DeepSeek-V4
        if not s.gpu:
            return
        m4 = None
    torch.manual_seed(0)
    hc = None if m4 is None else m4.DeepseekV4HyperConnection(
        DeepseekV4Config(hidden_size=hidden, hc_mult=n))
    module = hc if hc is not None else mt.DeepseekV4Connection(n, hidden)
    with torch.no_grad():
        module.fn.normal_(0, 0.02)
        module.base.normal_(0, 0.1)
        module.scale.fill_(0.5)
    module.to(s.device)
    ours = mt.DeepseekV4Connection.from_module(module) if hc is not None else module
    x = torch.randn(1, tokens, n, hidden).to(torch.bfloat16).to(s.device)

    def call(m):
        def run(a):
            with torch.no_grad():
                return m(a)
        return run
    cands = {}
    if hc is not None:
        cands["torch eager"] = (call(hc), (x,))
        if compile_peers and (fn := compiled(call(hc))) is not None:
            cands["torch.compile"] = (fn, (x,))
    for label, ctx in s.kernels():
        cands[label] = (call(ours), (x,), ctx)
    floor = s.floor(x.nbytes + module.fn.nbytes + tokens * hidden * 2,
                    "one read of x and fn + one write of the collapsed stream")
    return (name, cands, floor)


def _present(*rows):
    return [r for r in rows if r is not None]


def rows(s, quick):
    if quick:
        return [_mhc_connection(s, "W3 mhc pre+post 1024 tokens, n=4, C=1024", 1024, 4, 1024),
                _mhc_pre(s, "W3 mhc_pre 1 token, n=4, C=4096 (latency)", 1, 4, 4096, "paper"),
                _mhc_boundary(s, "W3 boundary 1024 tokens, n=4, C=1024", 1024, 4, 1024)]
    return _present(
        _mhc_connection(s, "W3 mhc pre+post 4096 tokens, n=4, C=1024", 4096, 4, 1024),
        _mhc_connection(s, "W3 mhc pre+post 4096 tokens, n=4, C=4096", 4096, 4, 4096),
        _mhc_pre(s, "W3 mhc_pre 4096 tokens, n=4, C=4096", 4096, 4, 4096, "paper"),
        _mhc_pre(s, "W3 mhc_pre V4 fn 4096 tokens, n=4, C=4096", 4096, 4, 4096, "deepseek-v4"),
        _mhc_pre(s, "W3 mhc_pre 1 token, n=4, C=4096 (latency)", 1, 4, 4096, "paper"),
        _mhc_pre(s, "W3 mhc_pre 1 token, n=4, C=7168 (latency)", 1, 4, 7168, "paper"),
        _mhc_boundary(s, "W3 boundary 4096 tokens, n=4, C=4096", 4096, 4, 4096),
        _mhc_block(s, "W3 block F = Linear(4096, 4096), 1024 tokens, n=4: 'torch eager' is "
                   "the plain residual x + F(x)", 1024, 4, 4096))


def decode_rows(s, quick):
    """W4 (CPU inference of DeepSeek-V4): T = 1, 16, 256 tokens, hidden 4096 and 7168."""
    if quick:
        return _present(_v4_decode(s, "W4 V4 connection decode bf16, T=1, hidden 4096", 1,
                                   4096))
    return _present(*(_v4_decode(s, f"W4 V4 connection decode bf16, T={t}, hidden {h}", t, h)
                      for h in (4096, 7168) for t in (1, 16, 256)))


def training_rows(s, quick):
    if quick:
        return _present(_mhc_training(s, "W3 mhc connection fwd+bwd 1024 tokens, n=4, "
                                         "C=1024 (torch)", 1024, 4, 1024))
    return _present(
        _mhc_training(s, "W3 mhc connection fwd+bwd 4096 tokens, n=4, C=1024 (torch)", 4096, 4,
                      1024),
        _v4_training(s, "V4 tiny model train step, 512 tokens, hidden 256, n=4: 'torch eager' "
                     "is the model as shipped", 512))


def gpu_rows():
    """The GPU run's W3 and W4: (name, build(setting, name))."""
    T, n, C = 4096, 4, 4096
    return [
        (f"GPU W3 mhc_pre {T} tokens, n={n}, C={C}",
         lambda s, name: _mhc_pre(s, name, T, n, C, "paper")),
        (f"GPU W3 mhc_post {T} tokens, n={n}, C={C}",
         lambda s, name: _mhc_post(s, name, T, n, C)),
        (f"GPU W3 boundary {T} tokens, n={n}, C={C}",
         lambda s, name: _mhc_boundary(s, name, T, n, C)),
        (f"GPU W3 mhc connection fwd+bwd {T} tokens, n={n}, C=1024 (torch)",
         lambda s, name: _mhc_training(s, name, T, n, 1024)),
    ] + [(f"GPU W4 V4 connection decode bf16, T={t}, hidden 4096",
          lambda s, name, t=t: _v4_decode(s, name, t, 4096)) for t in (1, 16, 256)]
