"""The pure array-API backend: the math of SPEC 2.1-2.2 written with array-API
functions only, so it runs in the caller's namespace on any device (NumPy,
PyTorch with autograd, CuPy, JAX, array_api_strict, Dask).

It is the fallback of ``auto`` and the semantic model the fast backends match.
Distances are evaluated in float64 where the namespace has it, so that float32
inputs meet SPEC 2.2's 1e-5 relative accuracy near the ball's boundary and for
tiny angles.
"""

import math

from array_api_compat import device

from ..errors import DomainError
from ._constants import CLIP_MARGIN

NAME = "array_api"


def cannot_serve(x, library, kernel):
    return None


def silent_reason(why):
    return True


# ---------------------------------------------------------------- helpers

def _first_true(xp, mask):
    """Flat C-order index of the first True of a boolean array (or None)."""
    if not bool(xp.any(mask)):
        return None
    flat = xp.reshape(xp.astype(mask, xp.int32), (-1,))
    return int(xp.argmax(flat))


def _wide(xp, a):
    """``a`` in float64 when the namespace offers it (more accurate formulas)."""
    try:
        return xp.astype(a, xp.float64)
    except (TypeError, ValueError, RuntimeError):  # a namespace/device without float64
        return a


def _safe_div(xp, num, den):
    """num / den, and 0 where den == 0 (no division by zero, no NaN from it)."""
    zero = den == 0
    return xp.where(zero, xp.zeros_like(den), num / xp.where(zero, xp.ones_like(den), den))


# ---------------------------------------------------------------- Sinkhorn

def _start(xp, x, logits, copy):
    """The start matrix: ``exp(x - max)`` per matrix, or ``x`` itself (checked >= 0;
    copied with ``copy``)."""
    if logits:
        return xp.exp(x - xp.max(x, axis=(-2, -1), keepdims=True))
    bad = _first_true(xp, x < 0)
    if bad is not None:
        raise DomainError.at("x", x.shape, bad, "is negative; sinkhorn_knopp needs x >= 0 "
                                                "(or logits=True)")
    return xp.astype(x, x.dtype, copy=True) if copy else x   # (asarray warns on torch grads)


def sinkhorn(xp, x, row_sums, col_sums, *, iterations, tau, logits, order, out, call):
    """Sinkhorn-Knopp on ``x (..., n, m)``; ``row_sums (..., n)`` / ``col_sums
    (..., m)``: broadcastable targets, None for SPEC's defaults (1 and n/m)."""
    cols_first = order == "cols-first"
    M = _start(xp, x, logits, copy=True)
    n, m = x.shape[-2], x.shape[-1]
    r = 1.0 if row_sums is None else xp.expand_dims(row_sums, axis=-1)
    c = n / m if col_sums is None else xp.expand_dims(col_sums, axis=-2)
    for _ in range(iterations):
        if cols_first:
            M = M * _safe_div(xp, c, xp.sum(M, axis=-2, keepdims=True) + tau)
            M = M * _safe_div(xp, r, xp.sum(M, axis=-1, keepdims=True) + tau)
        else:
            M = M * _safe_div(xp, r, xp.sum(M, axis=-1, keepdims=True) + tau)
            M = M * _safe_div(xp, c, xp.sum(M, axis=-2, keepdims=True) + tau)
    if out is None:
        return xp.astype(M, x.dtype)
    out[...] = M
    return out


def sinkhorn_backward(xp, x, row_sums, col_sums, grad, *, iterations, tau, logits, order, call):
    """The gradient of ``sum(grad * sinkhorn(x))`` w.r.t. ``x`` (targets held fixed):
    the iterates recomputed, then each normalisation step undone in reverse. For a
    row step ``Y = diag(t / D) M`` (``D = rowsum + tau``):
    ``dM_ij = (t_i dY_ij - sum_k dY_ik Y_ik) / D_i``, 0 where ``D_i == 0``;
    columns likewise. Logits: ``dx = dM0 * M0`` minus ``sum(dM0 * M0)`` at the
    first maximal entry (C order) of each matrix (the max's term)."""
    n, m = x.shape[-2], x.shape[-1]
    if math.prod(x.shape) == 0:
        return xp.zeros(x.shape, dtype=x.dtype, device=device(x))
    M = _start(xp, x, logits, copy=False)
    M0 = M
    r = 1.0 if row_sums is None else xp.expand_dims(row_sums, axis=-1)
    c = n / m if col_sums is None else xp.expand_dims(col_sums, axis=-2)
    steps = []  # (axis, target, denominator, output) of each normalisation step
    for _ in range(iterations):
        for axis in ((-2, -1) if order == "cols-first" else (-1, -2)):
            t = r if axis == -1 else c
            D = xp.sum(M, axis=axis, keepdims=True) + tau
            M = M * _safe_div(xp, t, D)
            steps.append((axis, t, D, M))
    G = grad
    for axis, t, D, Y in reversed(steps):
        G = _safe_div(xp, t * G - xp.sum(G * Y, axis=axis, keepdims=True), D)
    if not logits:
        return xp.astype(G, x.dtype, copy=True)
    G = G * M0
    shape = x.shape
    flat = xp.reshape(x, shape[:-2] + (n * m,))
    first = xp.expand_dims(xp.argmax(flat, axis=-1), axis=-1)
    idx = xp.arange(n * m, device=device(x))
    hot = xp.astype(xp.reshape(idx == first, shape), G.dtype)
    return G - hot * xp.sum(G, axis=(-2, -1), keepdims=True)


# ---------------------------------------------------------------- distances

def _sq_norm(xp, a):
    return xp.sum(a * a, axis=-1)


def raise_on_domain(xp, manifold, p, name, curvature):
    """DomainError naming ``name[index]`` of the first point of ``p (..., d)`` outside
    the manifold's domain (no-op for Euclidean)."""
    if manifold == "euclidean":
        return
    n2 = _sq_norm(xp, _wide(xp, p))
    if manifold == "poincare":
        bad = curvature * n2 >= 1
    else:  # zero vector: every entry 0 (a squared norm underflows for tiny vectors)
        bad = xp.all(p == 0, axis=-1)
    i = _first_true(xp, bad)
    if i is not None:
        raise DomainError.at(name, p.shape[:-1], i, DomainError.OUTSIDE[manifold])


def distance(xp, x, c, *, manifold, curvature, on_domain_error, call):
    """Distance between the rows of ``x (..., d)`` and ``c`` (broadcastable)."""
    if on_domain_error == "raise":
        raise_on_domain(xp, manifold, x, "x", curvature)
        raise_on_domain(xp, manifold, c, "c", curvature)
    dtype = x.dtype
    X, C = _wide(xp, x), _wide(xp, c)
    if manifold == "euclidean":
        D = _norm_scaled(xp, X - C)
    elif manifold == "poincare":
        D = _poincare(xp, X, C, curvature, clip=on_domain_error == "clip")
    else:
        D = _spherical(xp, X, C)
    return xp.astype(D, dtype)


def _poincare(xp, X, C, K, clip):
    nx, nc = _sq_norm(xp, X), _sq_norm(xp, C)
    if clip:
        X, nx = _clip_ball(xp, X, nx, K)
        C, nc = _clip_ball(xp, C, nc, K)
    e = _norm_scaled(xp, X - C)
    den = (1 - K * nx) * (1 - K * nc)
    bad = xp.logical_or(K * nx >= 1, K * nc >= 1)
    den = xp.where(bad, xp.ones_like(den), den)
    z = 2 * K * (e * e) / den
    D = xp.log1p(z + xp.sqrt(z * (z + 2))) / math.sqrt(K)
    # tiny distances, whose square may underflow: d = 2|x - c|/sqrt(den) to O(z)
    D = xp.where(z < 1e-30, 2 * e / xp.sqrt(den), D)
    return xp.where(bad, xp.full_like(D, math.nan), D)


def _clip_ball(xp, P, n2, K):
    """Points beyond radius (1 - CLIP_MARGIN)/sqrt(K) scaled back to it (the input is not
    touched)."""
    rmax = (1 - CLIP_MARGIN) / math.sqrt(K)
    norm = xp.sqrt(n2)
    far = norm > rmax
    scale = xp.where(far, rmax / xp.where(far, norm, xp.ones_like(norm)), xp.ones_like(norm))
    P = P * xp.expand_dims(scale, axis=-1)
    return P, _sq_norm(xp, P)


def _absmax(xp, A):
    """max |A| over the last axis, kept as an axis of 1 (0 for an empty axis)."""
    if A.shape[-1] == 0:
        return xp.zeros(tuple(A.shape[:-1]) + (1,), dtype=A.dtype, device=device(A))
    return xp.max(xp.abs(A), axis=-1, keepdims=True)


def _pow2_scale(xp, m):
    """2**-floor(log2(m)) (1 where m is 0 or not finite): a power of two, so that
    multiplying by it is exact, bringing m into [1, 2) (subnormal m: as near as 2**1000
    brings it)."""
    ok = xp.logical_and(m > 0, xp.isfinite(m))
    safe = xp.where(ok, m, xp.ones_like(m))
    e = -xp.floor(xp.log2(safe))
    e = xp.where(e > 1000, xp.full_like(e, 1000.0), e)  # subnormal m: 2**1000 stays finite
    return xp.where(ok, 2.0 ** e, xp.ones_like(m))


def _norm_scaled(xp, V):
    """|V| over the last axis, exact for tiny and huge entries (scaled by a power of 2)."""
    k = _pow2_scale(xp, _absmax(xp, V))
    return xp.sqrt(_sq_norm(xp, V * k)) / k[..., 0]


def _unit_scale(xp, A):
    """A scaled exactly (by a power of two) so that its largest |entry| is in [1, 2):
    the angle is scale-invariant, and squared norms neither overflow nor underflow
    (float64 beyond 1e154 or below 1e-154)."""
    return A * _pow2_scale(xp, _absmax(xp, A))


def _spherical(xp, X, C):
    X, C = _unit_scale(xp, X), _unit_scale(xp, C)
    nx, nc = xp.sqrt(_sq_norm(xp, X)), xp.sqrt(_sq_norm(xp, C))
    zx, zc = nx == 0, nc == 0
    U = X / xp.expand_dims(xp.where(zx, xp.ones_like(nx), nx), axis=-1)
    V = C / xp.expand_dims(xp.where(zc, xp.ones_like(nc), nc), axis=-1)
    D = 2 * xp.atan2(xp.sqrt(_sq_norm(xp, U - V)), xp.sqrt(_sq_norm(xp, U + V)))
    return xp.where(xp.logical_or(zx, zc), xp.full_like(D, math.nan), D)


def pairwise(xp, x, y, *, manifold, curvature, on_domain_error, call):
    """``(N, M)`` distances between the rows of ``x (N, d)`` and ``y (M, d)``, in
    blocks of rows so that the broadcast temporary stays small."""
    if on_domain_error == "raise":
        raise_on_domain(xp, manifold, x, "x", curvature)
        raise_on_domain(xp, manifold, y, "y", curvature)
        on_domain_error = "nan"  # checked: nothing left to raise for
    N, M, d = x.shape[0], y.shape[0], x.shape[1]
    if N == 0:
        return xp.zeros((0, M), dtype=x.dtype, device=device(x))
    step = max(1, (1 << 22) // max(1, M * d))
    yb = xp.expand_dims(y, axis=0)
    blocks = [distance(xp, xp.expand_dims(x[i:min(i + step, N), :], axis=1), yb,
                       manifold=manifold, curvature=curvature, on_domain_error=on_domain_error,
                       call=call)
              for i in range(0, N, step)]
    return xp.concat(blocks, axis=0) if len(blocks) > 1 else blocks[0]


# ---------------------------------------------------------------- manifold checks

def check_manifold(xp, x, *, manifold, curvature, atol, call):
    X = _wide(xp, x)
    if manifold == "euclidean":
        return xp.all(xp.isfinite(X), axis=-1)
    n2 = _sq_norm(xp, X)
    if manifold == "spherical":
        return xp.abs(xp.sqrt(n2) - 1) <= atol
    return curvature * n2 < 1 - atol


def project_to_manifold(xp, x, *, manifold, curvature, call):
    X = _wide(xp, x)
    if manifold == "euclidean":
        return xp.astype(x, x.dtype, copy=True)
    n2 = _sq_norm(xp, X)
    if manifold == "spherical":
        bad = _first_true(xp, n2 == 0)
        if bad is not None:
            raise DomainError.at("x", x.shape[:-1], bad,
                               "is a zero vector, which cannot be projected onto the sphere")
        P = X / xp.expand_dims(xp.sqrt(n2), axis=-1)
    else:
        P, _ = _clip_ball(xp, X, n2, curvature)
    return xp.astype(P, x.dtype)


# ---------------------------------------------------------------- the mHC connection

def _sigmoid(xp, z):
    return 1 / (1 + xp.exp(-z))


def mhc_pre(xp, x, phi, bias, alpha, *, iterations, norm_eps, variant, hc_eps, call):
    """SPEC 2.3: ``x (..., n, C)`` in the coefficient dtype (float32 or float64), the
    parameters in that dtype too. Returns (h_in, h_pre, h_post, h_res), h_in in the
    coefficient dtype (the frontend casts it back to the activations' dtype)."""
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    v = xp.reshape(x, batch + (n * C,))
    rs = 1 / xp.sqrt(xp.mean(v * v, axis=-1, keepdims=True) + norm_eps)
    if variant == "paper":
        y = (v @ phi) * rs                                   # norm after the matmul
        a_pre, a_post, a_res = alpha[0], alpha[1], alpha[2]
        h_pre = _sigmoid(xp, a_pre * y[..., :n] + bias[:n])
        h_post = 2 * _sigmoid(xp, a_post * y[..., n:2 * n] + bias[n:2 * n])
        logits = xp.reshape(a_res * y[..., 2 * n:] + bias[2 * n:], batch + (n, n))
        h_res = sinkhorn(xp, logits, None, None, iterations=iterations, tau=0.0, logits=True,
                         order="cols-first", out=None, call=call)
    else:                                                    # DeepSeek-V4
        mix = (v * rs) @ xp.matrix_transpose(phi)            # norm before the matmul
        h_pre = _sigmoid(xp, mix[..., :n] * alpha[0] + bias[:n]) + hc_eps
        h_post = 2 * _sigmoid(xp, mix[..., n:2 * n] * alpha[1] + bias[n:2 * n])
        z = xp.reshape(mix[..., 2 * n:] * alpha[2] + bias[2 * n:], batch + (n, n))
        z = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
        comb = z / xp.sum(z, axis=-1, keepdims=True) + hc_eps  # row softmax + eps
        comb = comb / (xp.sum(comb, axis=-2, keepdims=True) + hc_eps)
        for _ in range(iterations - 1):
            comb = comb / (xp.sum(comb, axis=-1, keepdims=True) + hc_eps)
            comb = comb / (xp.sum(comb, axis=-2, keepdims=True) + hc_eps)
        h_res = xp.matrix_transpose(comb)                    # V4 applies comb^T
    h_in = xp.sum(xp.expand_dims(h_pre, axis=-1) * x, axis=-2)
    return h_in, h_pre, h_post, h_res


def mhc_pre_backward(xp, x, phi, bias, alpha, g_in, g_pre, g_post, g_res, *, iterations,
                     norm_eps, variant, hc_eps, call):
    """The gradients of ``mhc_pre`` (None: a zero upstream gradient) as the native
    kernel returns them: ``(g_x, gz, y, gp, gw)`` -- the streams' gradient; per token
    the gradient of the pre-activations ``z = a*y + b``, the normalised projection
    ``y`` and the gradient of the raw projection ``p = v . phi`` (``y = r p``); and the
    projection's gradient ``sum_t gp_t^T v_t`` as ``(K, n*C)`` rows."""
    n, C = x.shape[-2], x.shape[-1]
    batch = tuple(x.shape[:-2])
    L = n * C
    v = xp.reshape(x, batch + (L,))
    W = phi if variant == "paper" else xp.matrix_transpose(phi)          # (L, K)
    r = 1 / xp.sqrt(xp.mean(v * v, axis=-1, keepdims=True) + norm_eps)
    p = v @ W
    y = p * r
    s = _sigmoid(xp, alpha[0] * y[..., :n] + bias[:n])
    q = _sigmoid(xp, alpha[1] * y[..., n:2 * n] + bias[n:2 * n])
    h_pre = s + hc_eps if variant != "paper" else s
    zeros = xp.zeros(batch + (n,), dtype=x.dtype, device=device(x))
    gpre = zeros if g_pre is None else g_pre
    if g_in is not None:
        gpre = gpre + xp.sum(x * xp.expand_dims(g_in, axis=-2), axis=-1)
    gz_pre = gpre * s * (1 - s)
    gz_post = (zeros if g_post is None else g_post) * 2 * q * (1 - q)
    z = xp.reshape(alpha[2] * y[..., 2 * n:] + bias[2 * n:], batch + (n, n))
    if g_res is None:
        gz_res = xp.zeros(batch + (n, n), dtype=x.dtype, device=device(x))
    elif variant == "paper":
        gz_res = sinkhorn_backward(xp, z, None, None, g_res, iterations=iterations, tau=0.0,
                                   logits=True, order="cols-first", call=call)
    else:   # softmax + eps, V4's first column step, then rows-first Sinkhorn with tau
        P = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
        P = P / xp.sum(P, axis=-1, keepdims=True)
        S = P + hc_eps
        D = xp.sum(S, axis=-2, keepdims=True) + hc_eps
        S1 = S / D
        g1 = xp.matrix_transpose(g_res)
        if iterations > 1:
            g1 = sinkhorn_backward(xp, S1, None, None, g1, iterations=iterations - 1,
                                   tau=hc_eps, logits=False, order="rows-first", call=call)
        gS = (g1 - xp.sum(g1 * S1, axis=-2, keepdims=True)) / D
        gz_res = P * (gS - xp.sum(gS * P, axis=-1, keepdims=True))
    gz = xp.concat([gz_pre, gz_post, xp.reshape(gz_res, batch + (n * n,))], axis=-1)
    a_k = xp.concat([alpha[0] * xp.ones(n, dtype=x.dtype, device=device(x)),
                     alpha[1] * xp.ones(n, dtype=x.dtype, device=device(x)),
                     alpha[2] * xp.ones(n * n, dtype=x.dtype, device=device(x))])
    g_y = gz * a_k
    gp = g_y * r
    g_r = xp.sum(g_y * p, axis=-1, keepdims=True)
    g_v = gp @ xp.matrix_transpose(W) - (g_r * r ** 3 / L) * v
    g_x = xp.reshape(g_v, x.shape)
    if g_in is not None:
        g_x = g_x + xp.expand_dims(h_pre, axis=-1) * xp.expand_dims(g_in, axis=-2)
    K = (2 + n) * n
    gw = xp.matrix_transpose(xp.reshape(gp, (-1, K))) @ xp.reshape(v, (-1, L))
    return g_x, gz, y, gp, gw


def mhc_post(xp, x, f_out, h_post, h_res, *, out, call):
    """``x_next[i] = sum_j h_res[i, j] x[j] + h_post[i] f_out`` in the coefficient dtype
    (into ``out`` when given: the caller's array, possibly ``x`` itself)."""
    res = h_res @ x + xp.expand_dims(h_post, axis=-1) * xp.expand_dims(f_out, axis=-2)
    if out is None:
        return res
    out[...] = res
    return out


def mhc_post_pre(xp, x, f_out, h_post, h_res, phi, bias, alpha, *, iterations, norm_eps,
                 variant, hc_eps, out, call):
    """The layer boundary: ``mhc_post`` then ``mhc_pre`` of its result ->
    ``(x_next, h_in, h_pre, h_post, h_res)`` (x_next into ``out`` when given)."""
    nxt = mhc_post(xp, x, f_out, h_post, h_res, out=out, call=call)
    return (nxt, *mhc_pre(xp, nxt, phi, bias, alpha, iterations=iterations,
                          norm_eps=norm_eps, variant=variant, hc_eps=hc_eps, call=call))


def mhc_post_backward(xp, x, f_out, h_post, h_res, grad, *, call):
    """The gradients of ``mhc_post`` for ``grad`` (x's shape): ``(g_x, g_f, g_post,
    g_res)``, the last three per token of x's batch (not summed over broadcast axes)."""
    batch = tuple(x.shape[:-2])
    n, C = x.shape[-2], x.shape[-1]
    g_x = xp.matrix_transpose(h_res) @ grad
    if tuple(g_x.shape) != tuple(x.shape):
        g_x = xp.broadcast_to(g_x, x.shape)
    g_f = xp.sum(xp.expand_dims(h_post, axis=-1) * grad, axis=-2)
    g_post = xp.sum(grad * xp.expand_dims(f_out, axis=-2), axis=-1)
    g_res = grad @ xp.matrix_transpose(x)
    return (g_x, xp.broadcast_to(g_f, batch + (C,)), xp.broadcast_to(g_post, batch + (n,)),
            xp.broadcast_to(g_res, batch + (n, n)))


# ---------------------------------------------------------------- curvature
# The kernels of the curvature records (mhc_array/curvature/_kernels.py): ragged
# NumPy problems, computed in NumPy and SciPy by _transport.py.

def ot_w1(xp, cost, mu, mv, rptr, cptr, *, reg, iterations, tolerance, relax, call):
    """Entropic W1 of a ragged batch of transport problems -> ``(w (g,), iterations
    done (g,))``: padded batches of ``sinkhorn`` with epsilon scaling, plain
    iterations (``relax``, the native kernel's over-relaxation, is not used)."""
    from . import _transport
    return _transport.ot_w1(xp, cost, mu, mv, rptr, cptr, reg=reg, iterations=iterations,
                            tolerance=tolerance, call=call)


def graph_costs(xp, indptr, indices, weights, X, xptr, Y, yptr, *, call):
    """Shortest-path distances between ragged supports of a CSR graph, every edge's
    matrix one after the other: SciPy Dijkstra searches."""
    from . import _transport
    return _transport.graph_costs(xp, indptr, indices, weights, X, xptr, Y, yptr, call=call)


def point_costs(xp, points, X, xptr, Y, yptr, *, manifold, curvature, call):
    """Manifold distances between ragged supports of points, in ``graph_costs``'
    layout (NaN for a point outside the manifold's domain): ``distance``."""
    from . import _transport
    return _transport.point_costs(xp, points, X, xptr, Y, yptr, manifold=manifold,
                                  curvature=curvature, call=call)


def ot_exact(xp, cost, mu, mv, rptr, cptr, *, metric, call):
    """Exact W1 of a ragged batch of transport problems -> w (g,): each problem a
    linear program (SciPy's HiGHS); ``metric`` (zero-cost pairs are one point) changes
    nothing here but the size of the programs."""
    from . import _transport
    return _transport.ot_exact(xp, cost, mu, mv, rptr, cptr, metric=metric, call=call)


def ot_exact_table(xp, table, X, Y, mu, mv, rptr, cptr, *, metric, call):
    """``ot_exact`` with the costs read from a table of distances (N, N): each
    problem's costs gathered, then a linear program."""
    from . import _transport
    return _transport.ot_exact_table(xp, table, X, Y, mu, mv, rptr, cptr, metric=metric,
                                     call=call)


def unit_w1(xp, indptr, indices, U, V, *, alpha, call):
    """Exact W1(m_u, m_v) of the edges (U, V) of a unit-length CSR graph -> w (E,):
    breadth-first distances (SciPy) between the supports, each edge a linear program."""
    from . import _transport
    return _transport.unit_w1(xp, indptr, indices, U, V, alpha=alpha, call=call)
