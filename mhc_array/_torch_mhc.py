"""The mHC connection for PyTorch (SPEC 2.3, 2.7), re-exported by ``mhc_array.torch``:
differentiable ``mhc_pre`` / ``mhc_post`` (both variants), the ``nn.Module``s
(the paper's connection with ``phi, bias, alpha``; DeepSeek-V4's connection and
head with V4's parameter names) and ``replace_hyper_connections``.

Forward: the library's records (the native fused kernels for CPU tensors).
Backward (per token ``t``, ``v = x_t`` flattened to ``P = n*C`` values, ``W`` the
projection as ``(P, K)``: ``phi`` or ``fn^T``, ``K = (2+n)*n``)::

    r = rsqrt(mean(v^2) + norm_eps),  p = v @ W,  y = r * p,  z = a_group * y + b
    g_hpre += x_t @ g_hin                          (h_in = sum_i h_pre[i] x_t[i])
    g_z: sigmoid'(z) for pre and post; for h_res the Sinkhorn backward
         (the native kernel, exact gradient of the unrolled iterations)
    g_alpha[group] = sum_t g_z * y,  g_bias = sum_t g_z,  g_y = g_z * a_group
    g_p = r * g_y,  g_r = g_y . p
    g_v = g_p @ W^T - (g_r r^3 / P) v + h_pre (x) g_hin,   g_W = sum_t v^T g_p

Everything but the last sum runs in one call of the non-public record
``MHC_PRE_BACKWARD`` (op ``mhc_array::mhc_pre_backward``): on the native backend
a fused C kernel per block of tokens (the projection recomputed, the Sinkhorn part
by the Sinkhorn backward kernel -- for V4 as the composition it is, ``comb =
SK_rows-first(S1, iterations - 1, tau = hc_eps)`` after ``S = softmax(z) + hc_eps``
and V4's first column step ``S1``, both undone around it -- then ``g_x`` from
cache); elsewhere the same math in the array's own namespace. It returns ``g_x``
and per token ``g_z``, ``y`` and ``g_p``; ``g_W = sum_t v^T g_p`` is a torch
matmul (BLAS), the bias and alpha gradients are sums. ``mhc_post``'s backward is
one call of ``MHC_POST_BACKWARD`` (op ``mhc_array::mhc_post_backward``; natively
one pass over the streams and the upstream gradient), its per-token results summed
over the axes along which ``f_out``, ``h_post`` or ``h_res`` were broadcast.
"""

from typing import Optional

import torch
from torch import nn

from ._mhc import (HC_EPS, MHC_POST, MHC_POST_BACKWARD, MHC_PRE, MHC_PRE_BACKWARD, NORM_EPS,
                   MHCLayer)
# mhc_array.torch imports this module after defining these
from .torch import _check_points, _fresh, _plain, _reduce_to

Tensor = torch.Tensor


def _coeff_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- mhc_pre

@torch.library.custom_op("mhc_array::mhc_pre", mutates_args=())
def _mhc_pre_op(x: Tensor, phi: Tensor, bias: Tensor, alpha: Tensor, iterations: int,
                norm_eps: float, variant: str, hc_eps: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    res = MHC_PRE((_plain(x), _plain(phi), _plain(bias), _plain(alpha)),
                  (iterations, norm_eps, variant, hc_eps))
    return tuple(_fresh(r, x, phi, bias, alpha) for r in res)


@_mhc_pre_op.register_fake
def _(x, phi, bias, alpha, iterations, norm_eps, variant, hc_eps):
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    cdt = _coeff_dtype(x)
    return (x.new_empty(batch + (C,)), x.new_empty(batch + (n,), dtype=cdt),
            x.new_empty(batch + (n,), dtype=cdt), x.new_empty(batch + (n, n), dtype=cdt))


def _mhc_pre_setup(ctx, inputs, output):
    x, phi, bias, alpha, iterations, norm_eps, variant, hc_eps = inputs
    ctx.save_for_backward(x, phi, bias, alpha)
    ctx.options = (iterations, norm_eps, variant, hc_eps)


@torch.library.custom_op("mhc_array::mhc_pre_backward", mutates_args=())
def _mhc_pre_backward_op(x: Tensor, phi: Tensor, bias: Tensor, alpha: Tensor,
                         g_in: Optional[Tensor], g_pre: Optional[Tensor],
                         g_post: Optional[Tensor], g_res: Optional[Tensor], iterations: int,
                         norm_eps: float, variant: str, hc_eps: float
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    res = MHC_PRE_BACKWARD(tuple(_plain(t) for t in (x, phi, bias, alpha, g_in, g_pre, g_post,
                                                     g_res)),
                           (iterations, norm_eps, variant, hc_eps))
    return tuple(_fresh(r, x, g_in) for r in res)


@_mhc_pre_backward_op.register_fake
def _(x, phi, bias, alpha, g_in, g_pre, g_post, g_res, iterations, norm_eps, variant, hc_eps):
    n = x.shape[-2]
    shape = tuple(x.shape[:-2]) + ((2 + n) * n,)
    cdt = _coeff_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(shape, dtype=cdt), x.new_empty(shape, dtype=cdt),
            x.new_empty(shape, dtype=cdt))


def _mhc_pre_backward(ctx, g_hin, g_hpre, g_hpost, g_hres):
    x, phi, bias, alpha = ctx.saved_tensors
    iterations, norm_eps, variant, hc_eps = ctx.options
    n, C = x.shape[-2], x.shape[-1]
    K = (2 + n) * n
    g_x, gz, y, gp = _mhc_pre_backward_op(x, phi, bias, alpha, g_hin, g_hpre, g_hpost, g_hres,
                                          iterations, norm_eps, variant, hc_eps)
    gz, y, gp = gz.reshape(-1, K), y.reshape(-1, K), gp.reshape(-1, K)
    gphi = None
    if ctx.needs_input_grad[1]:
        v = x.reshape(-1, n * C).to(gp.dtype)
        gphi = (v.t() @ gp if variant == "paper" else gp.t() @ v).to(phi.dtype)
    gzy = gz * y
    g_alpha = torch.stack([gzy[:, :n].sum(), gzy[:, n:2 * n].sum(), gzy[:, 2 * n:].sum()])
    return (g_x if ctx.needs_input_grad[0] else None, gphi, gz.sum(0).to(bias.dtype),
            g_alpha.to(alpha.dtype), None, None, None, None)


_mhc_pre_op.register_autograd(_mhc_pre_backward, setup_context=_mhc_pre_setup)


# ---------------------------------------------------------------- mhc_post

@torch.library.custom_op("mhc_array::mhc_post", mutates_args=())
def _mhc_post_op(x: Tensor, f_out: Tensor, h_post: Tensor, h_res: Tensor) -> Tensor:
    res = MHC_POST((_plain(x), _plain(f_out), _plain(h_post), _plain(h_res)))
    return _fresh(res, x, f_out, h_post, h_res)


@_mhc_post_op.register_fake
def _(x, f_out, h_post, h_res):
    return x.new_empty(x.shape)


def _mhc_post_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@torch.library.custom_op("mhc_array::mhc_post_backward", mutates_args=())
def _mhc_post_backward_op(x: Tensor, f_out: Tensor, h_post: Tensor, h_res: Tensor,
                          grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    res = MHC_POST_BACKWARD(tuple(_plain(t) for t in (x, f_out, h_post, h_res, grad)))
    return tuple(_fresh(r, x, f_out, h_post, h_res, grad) for r in res)


@_mhc_post_backward_op.register_fake
def _(x, f_out, h_post, h_res, grad):
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    cdt = _coeff_dtype(x)
    return (x.new_empty(x.shape), x.new_empty(batch + (C,), dtype=cdt),
            x.new_empty(batch + (n,), dtype=cdt), x.new_empty(batch + (n, n), dtype=cdt))


def _mhc_post_backward(ctx, g):
    x, f_out, h_post, h_res = ctx.saved_tensors
    gx, gf, ghp, ghr = _mhc_post_backward_op(x, f_out, h_post, h_res, g)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, _reduce_to(gf, f_out) if need[1] else None,
            _reduce_to(ghp, h_post) if need[2] else None,
            _reduce_to(ghr, h_res) if need[3] else None)


_mhc_post_op.register_autograd(_mhc_post_backward, setup_context=_mhc_post_setup)


# ---------------------------------------------------------------- functions

def mhc_pre(x, phi, bias, alpha, *, iterations=20, norm_eps=NORM_EPS, variant="paper",
            hc_eps=HC_EPS):
    """``mhc_array.mhc_pre`` for torch tensors, differentiable w.r.t. ``x`` and the
    three parameters (``phi, bias, alpha``, or V4's ``fn, base, scale``). Returns
    ``(h_in, h_pre, h_post, h_res)`` (coefficients in float32, float64 for float64
    ``x``); the backward runs the Sinkhorn part in the native backward kernel.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.randn(8, 4, 16, requires_grad=True)        # 8 tokens, n = 4, C = 16
    >>> phi = torch.randn(64, 24) * 0.1
    >>> bias, alpha = torch.zeros(24), torch.full((3,), 0.5)
    >>> h_in, h_pre, h_post, h_res = mt.mhc_pre(x, phi, bias, alpha)
    >>> h_in.shape, h_res.shape
    (torch.Size([8, 16]), torch.Size([8, 4, 4]))
    >>> h_in.sum().backward()
    >>> x.grad.shape
    torch.Size([8, 4, 16])
    """
    opts = MHC_PRE.validate((iterations, norm_eps, variant, hc_eps))
    names = ("x", "phi", "bias", "alpha") if opts["variant"] == "paper" else \
        ("x", "fn", "base", "scale")
    _check_points(**dict(zip(names, (x, phi, bias, alpha))))
    return _mhc_pre_op(x, phi, bias, alpha, int(opts["iterations"]), float(opts["norm_eps"]),
                       str(opts["variant"]), float(opts["hc_eps"]))


def mhc_post(x, f_out, h_post, h_res):
    """``mhc_array.mhc_post`` for torch tensors, differentiable w.r.t. all four:
    ``x_next[i] = sum_j h_res[i, j] x[j] + h_post[i] f_out`` in ``x``'s dtype.

    >>> import torch, mhc_array.torch as mt
    >>> x = torch.randn(8, 4, 16)
    >>> f = torch.randn(8, 16, requires_grad=True)
    >>> out = mt.mhc_post(x, f, torch.ones(8, 4), torch.eye(4).expand(8, 4, 4))
    >>> bool(torch.allclose(out, x + f.unsqueeze(-2)))
    True
    """
    _check_points(x=x, f_out=f_out, h_post=h_post, h_res=h_res)
    return _mhc_post_op(x, f_out, h_post, h_res)


# ---------------------------------------------------------------- modules

def _expand(h, n):
    return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]).contiguous()


class MHCConnection(nn.Module):
    """One mHC connection (the paper's variant) as an ``nn.Module``: parameters
    ``phi (n*C, 2n + n*n)``, ``bias (2n + n*n,)``, ``alpha (3,)``, initialised like
    ``mhc_array.MHCLayer`` (close to the identity residual). ``forward(x, fn)`` =
    ``post(x, fn(h_in), h_post, h_res)``; ``pre``, ``post``, ``expand`` (first layer:
    one stream copied into ``n``) and ``reduce`` (last layer: the ``n`` streams
    summed) as in ``MHCLayer``. Differentiable through the native kernels.

    >>> import torch, mhc_array.torch as mt
    >>> layer = mt.MHCConnection(4, 16, seed=0)
    >>> block = torch.nn.Linear(16, 16)
    >>> x = layer.expand(torch.randn(8, 16))                 # (8, 4, 16)
    >>> y = layer(x, block)
    >>> layer.reduce(y).sum().backward()
    >>> [tuple(p.grad.shape) for p in layer.parameters()]
    [(64, 24), (24,), (3,)]
    """

    def __init__(self, n_streams, dim, *, iterations=20, norm_eps=NORM_EPS, seed=None,
                 dtype=torch.float32, device=None):
        super().__init__()
        layer = MHCLayer(n_streams, dim, iterations=iterations, variant="paper",
                         dtype="float64", seed=seed)
        self.n_streams, self.dim = n_streams, dim
        self.iterations, self.norm_eps = layer.iterations, float(norm_eps)
        kw = dict(dtype=dtype, device=device)
        self.phi = nn.Parameter(torch.tensor(layer.phi, **kw))
        self.bias = nn.Parameter(torch.tensor(layer.bias, **kw))
        self.alpha = nn.Parameter(torch.tensor(layer.alpha, **kw))

    def extra_repr(self):
        return f"n_streams={self.n_streams}, dim={self.dim}, iterations={self.iterations}"

    def pre(self, x):
        return mhc_pre(x, self.phi, self.bias, self.alpha, iterations=self.iterations,
                       norm_eps=self.norm_eps)

    def post(self, x, f_out, h_post, h_res):
        return mhc_post(x, f_out, h_post, h_res)

    def forward(self, x, fn):
        h_in, _, h_post, h_res = self.pre(x)
        return self.post(x, fn(h_in), h_post, h_res)

    def expand(self, h):
        return _expand(h, self.n_streams)

    def reduce(self, x):
        return x.sum(-2)


class DeepseekV4Connection(nn.Module):
    """DeepSeek-V4's hyper-connection (transformers' ``DeepseekV4HyperConnection``) on
    mhc_array's kernels: the same parameters ``fn ((2+n)*n, n*C)``, ``base``,
    ``scale (3,)`` (V4 checkpoints load with ``load_state_dict``), and the same
    ``forward(hidden_streams) -> (post, comb, collapsed)``: ``post (..., n)`` and
    ``comb (..., n, n)`` in float32 in V4's orientation (V4 mixes with ``comb^T``),
    ``collapsed (..., C)`` in the streams' dtype. Parameters are left uninitialised
    (``torch.empty``) as V4's are unless ``init=True`` (V4's ``_init_weights``:
    ``fn`` normal with std ``initializer_range``, ``base`` 0, ``scale`` 1)."""

    def __init__(self, hc_mult=4, hidden_size=None, *, hc_sinkhorn_iters=20, hc_eps=HC_EPS,
                 rms_norm_eps=NORM_EPS, init=False, initializer_range=0.02, dtype=None,
                 device=None):
        super().__init__()
        if hidden_size is None:
            raise TypeError("hidden_size is required")
        k = (2 + hc_mult) * hc_mult
        kw = dict(dtype=dtype, device=device)
        self.hc_mult, self.hc_sinkhorn_iters = int(hc_mult), int(hc_sinkhorn_iters)
        self.hc_eps, self.rms_norm_eps = float(hc_eps), float(rms_norm_eps)
        self.fn = nn.Parameter(torch.empty(k, hc_mult * hidden_size, **kw))
        self.base = nn.Parameter(torch.empty(k, **kw))
        self.scale = nn.Parameter(torch.empty(3, **kw))
        if init:
            with torch.no_grad():
                self.fn.normal_(0.0, initializer_range)
                self.base.zero_()
                self.scale.fill_(1.0)

    @classmethod
    def from_module(cls, m):
        """A connection holding ``m``'s own Parameter objects (a transformers
        ``DeepseekV4HyperConnection``)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.hc_mult, new.hc_sinkhorn_iters = int(m.hc_mult), int(m.hc_sinkhorn_iters)
        new.hc_eps = float(m.hc_eps)
        new.rms_norm_eps = _norm_eps(m)
        new.fn, new.base, new.scale = m.fn, m.base, m.scale
        new.train(m.training)
        return new

    def extra_repr(self):
        return (f"hc_mult={self.hc_mult}, hidden_size={self.fn.shape[1] // self.hc_mult}, "
                f"hc_sinkhorn_iters={self.hc_sinkhorn_iters}")

    def forward(self, hidden_streams):
        collapsed, _, post, h_res = mhc_pre(
            hidden_streams, self.fn, self.base, self.scale, iterations=self.hc_sinkhorn_iters,
            norm_eps=self.rms_norm_eps, variant="deepseek-v4", hc_eps=self.hc_eps)
        return post, h_res.transpose(-1, -2), collapsed


class DeepseekV4Head(nn.Module):
    """DeepSeek-V4's final stream collapse (transformers' ``DeepseekV4HyperHead``) on
    mhc_array's kernels: parameters ``hc_fn (n, n*C)``, ``hc_base (n,)``,
    ``hc_scale (1,)``; ``forward(x) -> sum_i (sigmoid(scale * y_i + base_i) + eps) x_i``
    with ``y`` the projection of the RMS-normalised flattened streams. Computed by
    the V4 ``mhc_pre`` kernel with the head's rows as its ``pre`` block (the
    ``post`` / ``comb`` rows zero, one Sinkhorn iteration, results unused)."""

    def __init__(self, hc_mult=4, hidden_size=None, *, hc_eps=HC_EPS, rms_norm_eps=NORM_EPS,
                 init=False, initializer_range=0.02, dtype=None, device=None):
        super().__init__()
        if hidden_size is None:
            raise TypeError("hidden_size is required")
        kw = dict(dtype=dtype, device=device)
        self.hc_mult, self.eps, self.rms_norm_eps = int(hc_mult), float(hc_eps), \
            float(rms_norm_eps)
        self.hc_fn = nn.Parameter(torch.empty(hc_mult, hc_mult * hidden_size, **kw))
        self.hc_base = nn.Parameter(torch.empty(hc_mult, **kw))
        self.hc_scale = nn.Parameter(torch.empty(1, **kw))
        if init:
            with torch.no_grad():
                self.hc_fn.normal_(0.0, initializer_range)
                self.hc_base.zero_()
                self.hc_scale.fill_(1.0)

    @classmethod
    def from_module(cls, m):
        """A head holding ``m``'s own Parameter objects (a transformers
        ``DeepseekV4HyperHead``)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.hc_mult, new.eps = int(m.hc_mult), float(m.eps)
        new.rms_norm_eps = _norm_eps(m)
        new.hc_fn, new.hc_base, new.hc_scale = m.hc_fn, m.hc_base, m.hc_scale
        new.train(m.training)
        return new

    def extra_repr(self):
        return f"hc_mult={self.hc_mult}, hidden_size={self.hc_fn.shape[1] // self.hc_mult}"

    def forward(self, x):
        n = self.hc_mult
        fn = self.hc_fn.float()
        fn = torch.cat([fn, fn.new_zeros((n + 1) * n, fn.shape[1])])
        base = torch.cat([self.hc_base.float(), fn.new_zeros((n + 1) * n)])
        scale = torch.cat([self.hc_scale.float(), fn.new_ones(2)])
        collapsed, _, _, _ = mhc_pre(x, fn, base, scale, iterations=1,
                                     norm_eps=self.rms_norm_eps, variant="deepseek-v4",
                                     hc_eps=self.eps)
        return collapsed


def _norm_eps(m):
    """The epsilon of a V4 module's ``input_norm`` (``eps`` or, in later transformers
    releases, ``variance_epsilon``)."""
    norm = m.input_norm
    for attr in ("variance_epsilon", "eps"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise TypeError(f"{type(m).__name__}.input_norm has neither eps nor variance_epsilon")


_REPLACEMENTS = {"DeepseekV4HyperConnection": DeepseekV4Connection,
                 "DeepseekV4HyperHead": DeepseekV4Head}


def replace_hyper_connections(model):
    """Replace, in place, every ``DeepseekV4HyperConnection`` and ``DeepseekV4HyperHead``
    submodule of ``model`` (a transformers DeepSeek-V4 model; matched by class name,
    transformers is not imported) by ``DeepseekV4Connection`` / ``DeepseekV4Head``,
    which hold the *same* Parameter objects (``state_dict`` keys and values unchanged,
    optimizers keep working) and return what the replaced modules returned, computed
    by mhc_array's kernels forward and backward. Returns the number of modules
    replaced (0 for a model without them; a second call replaces nothing)::

        model = DeepseekV4ForCausalLM.from_pretrained(...)
        mhc_array.torch.replace_hyper_connections(model)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules()
               if type(m).__name__ in _REPLACEMENTS]
    for name, m in targets:
        new = _REPLACEMENTS[type(m).__name__].from_module(m)
        if not name:
            raise TypeError("model is itself a hyper-connection module; pass the model "
                            "that contains it")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    return len(targets)
