"""The mHC connection as ``nn.Module``s: ``MHCConnection`` (the paper's connection with
``phi, bias, alpha``) and DeepSeek-V4's connection and head with V4's parameter
names (``DeepseekV4Connection``, ``DeepseekV4Head``), computed by ``_mhc``'s ops."""

import numpy as np
import torch
from torch import nn

from .._mhc import HC_EPS, MHC_POST_PRE, MHC_PRE, NORM_EPS, MHCLayer, initial_parameters
from .._pipeline import run_rows
from ._mhc import _inference, mhc_post, mhc_post_pre, mhc_pre

#: tokens from which DeepseekV4Connection projects from its prepared rows layout of fn
ROWS_MIN_TOKENS = 16


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
                 dtype=None, device=None):
        super().__init__()
        check = MHCLayer(n_streams, dim, iterations=iterations)   # validates the arguments
        self.n_streams, self.dim = n_streams, dim
        self.iterations, self.norm_eps = check.iterations, float(norm_eps)
        self.seed = seed
        k = (2 + n_streams) * n_streams
        kw = dict(dtype=dtype, device=device)   # dtype None: torch's default dtype
        self.phi = nn.Parameter(torch.empty(n_streams * dim, k, **kw))
        self.bias = nn.Parameter(torch.empty(k, **kw))
        self.alpha = nn.Parameter(torch.empty(3, **kw))
        self.reset_parameters()

    def reset_parameters(self):
        """The paper's initialisation (as ``MHCLayer``'s), from torch's random
        generator -- or, with ``seed=``, from a generator of that seed, the values
        ``MHCLayer(..., seed=seed)`` holds. Nothing to do on the meta device."""
        if self.phi.is_meta:
            return
        n, C = self.n_streams, self.dim
        if self.seed is None:
            noise = torch.randn(self.phi.shape, dtype=torch.float64).numpy()
        else:
            noise = np.random.default_rng(self.seed).standard_normal(tuple(self.phi.shape))
        with torch.no_grad():
            for p, value in zip((self.phi, self.bias, self.alpha),
                                initial_parameters(n, C, "paper", noise)):
                p.copy_(torch.from_numpy(value))

    def extra_repr(self):
        return f"n_streams={self.n_streams}, dim={self.dim}, iterations={self.iterations}"

    def pre(self, x):
        return mhc_pre(x, self.phi, self.bias, self.alpha, iterations=self.iterations,
                       norm_eps=self.norm_eps)

    def post(self, x, f_out, h_post, h_res):
        return mhc_post(x, f_out, h_post, h_res)

    def post_pre(self, x, f_out, h_post, h_res):
        """The previous connection's post step (its ``h_post``, ``h_res``) and this
        connection's ``pre``, fused: ``(x_next, h_in, h_pre, h_post, h_res)``."""
        return mhc_post_pre(x, f_out, h_post, h_res, self.phi, self.bias, self.alpha,
                            iterations=self.iterations, norm_eps=self.norm_eps)

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
        self.initializer_range = float(initializer_range)
        if init:
            self.reset_parameters()

    def reset_parameters(self):
        """V4's ``_init_weights``: ``fn`` normal with std ``initializer_range`` (torch's
        random generator), ``base`` 0, ``scale`` 1."""
        _v4_init(self.fn, self.base, self.scale, self.initializer_range)

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
        new.initializer_range = float(getattr(m, "initializer_range", 0.02))
        new.train(m.training)
        return new

    def extra_repr(self):
        return (f"hc_mult={self.hc_mult}, hidden_size={self.fn.shape[1] // self.hc_mult}, "
                f"hc_sinkhorn_iters={self.hc_sinkhorn_iters}")

    def post_pre(self, hidden_streams, f_out, post, comb):
        """The previous connection's post step -- ``comb^T @ streams + post * f_out``
        with its ``(post, comb)`` in V4's orientation -- and this connection's
        forward, fused: ``(next_streams, post, comb, collapsed)``, the last three as
        ``forward(next_streams)`` returns them."""
        h_res_prev = comb.transpose(-1, -2)
        res = self._rows_call(MHC_POST_PRE, hidden_streams, (hidden_streams, f_out, post,
                                                             h_res_prev))
        if res is None:
            res = mhc_post_pre(
                hidden_streams, f_out, post, h_res_prev, self.fn, self.base, self.scale,
                iterations=self.hc_sinkhorn_iters, norm_eps=self.rms_norm_eps,
                variant="deepseek-v4", hc_eps=self.hc_eps)
        nxt, collapsed, _, post2, h_res = res
        return nxt, post2, h_res.transpose(-1, -2), collapsed

    def forward(self, hidden_streams):
        res = self._rows_call(MHC_PRE, hidden_streams, (hidden_streams,))
        if res is None:
            res = mhc_pre(hidden_streams, self.fn, self.base, self.scale,
                          iterations=self.hc_sinkhorn_iters, norm_eps=self.rms_norm_eps,
                          variant="deepseek-v4", hc_eps=self.hc_eps)
        collapsed, _, post, h_res = res
        return post, h_res.transpose(-1, -2), collapsed

    def _rows_call(self, record, x, arrays):
        """Eager calls without gradients of ROWS_MIN_TOKENS tokens or more on CPU
        tensors: ``fn`` in the paper's rows layout, prepared once per version of the
        Parameter (SPEC 2.3: the kernels project faster from it, 1.2-1.6x at 64-1024
        tokens), through the native torch plan; None otherwise (the usual call)."""
        fn = self.fn
        if (not isinstance(x, torch.Tensor) or x.ndim < 3 or not x.is_cpu
                or x.numel() < ROWS_MIN_TOKENS * fn.shape[1]
                or not _inference(*arrays, fn, self.base, self.scale)):
            return None
        key = (fn._version, fn.data_ptr(), fn.shape, fn.dtype)
        cached = self.__dict__.get("_fn_rows")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_fn_rows"] = (key, fn.detach().t().contiguous())
        return run_rows(record, (*(a.detach() for a in arrays), cached[1], self.base.detach(),
                                 self.scale.detach()),
                        (self.hc_sinkhorn_iters, self.rms_norm_eps, "deepseek-v4", self.hc_eps))


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
        self.initializer_range = float(initializer_range)
        if init:
            self.reset_parameters()

    def reset_parameters(self):
        """V4's ``_init_weights``: ``hc_fn`` normal with std ``initializer_range``,
        ``hc_base`` 0, ``hc_scale`` 1."""
        _v4_init(self.hc_fn, self.hc_base, self.hc_scale, self.initializer_range)

    @classmethod
    def from_module(cls, m):
        """A head holding ``m``'s own Parameter objects (a transformers
        ``DeepseekV4HyperHead``)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.hc_mult, new.eps = int(m.hc_mult), float(m.eps)
        new.rms_norm_eps = _norm_eps(m)
        new.hc_fn, new.hc_base, new.hc_scale = m.hc_fn, m.hc_base, m.hc_scale
        new.initializer_range = float(getattr(m, "initializer_range", 0.02))
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


def _v4_init(fn, base, scale, std):
    with torch.no_grad():
        fn.normal_(0.0, std)
        base.zero_()
        scale.fill_(1.0)


def _norm_eps(m):
    """The epsilon of a V4 module's ``input_norm`` (``eps`` or, in later transformers
    releases, ``variance_epsilon``)."""
    norm = m.input_norm
    for attr in ("variance_epsilon", "eps"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise TypeError(f"{type(m).__name__}.input_norm has neither eps nor variance_epsilon")
