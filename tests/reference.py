"""Independent reference implementations for the tests.

Plain NumPy, written from the formulas of SPEC 2.1-2.2 the obvious way, but
numerically careful: everything is evaluated in float64, and the distances in
``np.longdouble`` (80-bit extended precision on x86-64, float64 elsewhere) so
that the reference is far more accurate than the 1e-12 relative asked of the
library in float64. This module never imports ``mhc_array``.
"""

import numpy as np

LD = np.longdouble

# ---------------------------------------------------------------- Sinkhorn


def sinkhorn(x, *, iterations=20, tau=0.0, logits=False, order="rows-first",
             row_sums=None, col_sums=None):
    """Sinkhorn-Knopp on ``x (..., n, m)`` in float64 (SPEC 2.1).

    One iteration ("rows-first"): every row divided by (its sum + tau) and
    multiplied by its target; then every column likewise. "cols-first" swaps
    them. A row/column whose sum + tau is 0 stays 0. Returns float64.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    n, m = x.shape[-2], x.shape[-1]
    batch = x.shape[:-2]
    if logits:
        if x.size:
            mx = np.max(x, axis=(-2, -1), keepdims=True)  # NaN propagates
            M = np.exp(x - mx)
        else:
            M = x
    else:
        M = x
    r = np.ones(batch + (n,)) if row_sums is None else \
        np.broadcast_to(np.asarray(row_sums, dtype=np.float64), batch + (n,))
    c = np.full(batch + (m,), n / m) if col_sums is None else \
        np.broadcast_to(np.asarray(col_sums, dtype=np.float64), batch + (m,))

    def rows(M):
        s = M.sum(axis=-1, keepdims=True) + tau
        safe = np.where(s == 0, 1.0, s)
        return M / safe * r[..., :, None]

    def cols(M):
        s = M.sum(axis=-2, keepdims=True) + tau
        safe = np.where(s == 0, 1.0, s)
        return M / safe * c[..., None, :]

    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(iterations):
            if order == "rows-first":
                M = cols(rows(M))
            elif order == "cols-first":
                M = rows(cols(M))
            else:
                raise ValueError(order)
    return np.array(M, dtype=np.float64)


def sinkhorn_loops(x, *, iterations=20, tau=0.0, order="rows-first"):
    """The same as ``sinkhorn`` for one 2-D non-negative matrix with default targets,
    with explicit Python loops (a cross-check of the vectorised reference)."""
    M = [[float(v) for v in row] for row in np.asarray(x, dtype=np.float64)]
    n, m = len(M), len(M[0])

    def rows():
        for i in range(n):
            s = sum(M[i]) + tau
            if s != 0:
                M[i] = [v / s * 1.0 for v in M[i]]

    def cols():
        for j in range(m):
            s = sum(M[i][j] for i in range(n)) + tau
            if s != 0:
                for i in range(n):
                    M[i][j] = M[i][j] / s * (n / m)

    for _ in range(iterations):
        if order == "rows-first":
            rows()
            cols()
        else:
            cols()
            rows()
    return np.array(M, dtype=np.float64)


# ---------------------------------------------------------------- distances


def _ld(a):
    return np.asarray(a).astype(LD)


def euclidean(x, c):
    x, c = _ld(x), _ld(c)
    return np.sqrt(np.sum((x - c) ** 2, axis=-1)).astype(np.float64)


def poincare(x, c, curvature=1.0):
    """arccosh(1 + 2K|x-c|^2/((1-K|x|^2)(1-K|c|^2)))/sqrt(K) via the log1p form;
    NaN where a point is outside the open ball."""
    K = LD(curvature)
    x, c = _ld(x), _ld(c)
    nx = np.sum(x * x, axis=-1)
    nc = np.sum(c * c, axis=-1)
    dd = np.sum((x - c) ** 2, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = (1 - K * nx) * (1 - K * nc)
        z = 2 * K * dd / den
        d = np.log1p(z + np.sqrt(z * (z + 2))) / np.sqrt(K)
        bad = (K * nx >= 1) | (K * nc >= 1)
        d = np.where(bad, np.nan, d)
    return np.asarray(d).astype(np.float64)


def spherical(x, c):
    """Angle between x and c: 2*atan2(|u - v|, |u + v|) on unit vectors; NaN for a
    zero vector."""
    x, c = _ld(x), _ld(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        v = c / np.sqrt(np.sum(c * c, axis=-1, keepdims=True))
        d = 2 * np.arctan2(np.sqrt(np.sum((u - v) ** 2, axis=-1)),
                           np.sqrt(np.sum((u + v) ** 2, axis=-1)))
    return np.asarray(d).astype(np.float64)


def distance(manifold, x, c, curvature=1.0):
    if manifold == "euclidean":
        return euclidean(x, c)
    if manifold == "poincare":
        return poincare(x, c, curvature)
    if manifold == "spherical":
        return spherical(x, c)
    raise ValueError(manifold)


def pairwise(manifold, x, y, curvature=1.0):
    x = np.asarray(x)[:, None, :]
    y = np.asarray(y)[None, :, :]
    x, y = np.broadcast_arrays(x, y)
    return distance(manifold, x, y, curvature)


def clip_to_ball(x, curvature=1.0):
    """The "clip" mode of SPEC 2.2 for points outside the ball: projected to radius
    (1-1e-5)/sqrt(K). (Only used on points clearly outside or clearly inside.)"""
    x = _ld(x)
    K = LD(curvature)
    r = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    rmax = (1 - LD(1e-5)) / np.sqrt(K)
    return np.where(K * r * r >= 1, x * (rmax / r), x)


def check_manifold(manifold, x, curvature=1.0, atol=1e-6):
    x = np.asarray(x).astype(np.float64)
    if manifold == "spherical":
        return np.abs(np.sqrt(np.sum(x * x, axis=-1)) - 1) <= atol
    if manifold == "poincare":
        return curvature * np.sum(x * x, axis=-1) < 1 - atol
    return np.all(np.isfinite(x), axis=-1)


def project(manifold, x, curvature=1.0):
    x = _ld(x)
    if manifold == "spherical":
        return (x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))).astype(np.float64)
    if manifold == "poincare":
        r = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        rmax = (1 - LD(1e-5)) / np.sqrt(LD(curvature))
        return np.where(r > rmax, x * (rmax / np.where(r == 0, 1, r)), x).astype(np.float64)
    return x.astype(np.float64)


# ---------------------------------------------------------------- input makers


def ball_points(rng, shape, d, curvature=1.0, rmax=0.9):
    """Random points inside the ball, radius uniform in [0, rmax/sqrt(K))."""
    v = rng.standard_normal(tuple(shape) + (d,))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    r = rng.uniform(0, rmax, tuple(shape) + (1,)) / np.sqrt(curvature)
    return v * r


def sphere_points(rng, shape, d):
    """Random non-zero vectors of assorted norms (not unit: "any non-zero norms")."""
    v = rng.standard_normal(tuple(shape) + (d,))
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    v = np.where(n < 1e-3, 1.0, v)  # keep away from zero
    return v * rng.uniform(0.5, 3.0, tuple(shape) + (1,))


# ---------------------------------------------------------------- the mHC connection


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def mhc_pre(x, phi, bias, alpha, *, iterations=20, norm_eps=1e-6, variant="paper",
            hc_eps=1e-6):
    """SPEC 2.3 in float64, one token at a time, written from the equations:
    returns (h_in, h_pre, h_post, h_res) with h_in from the raw streams."""
    x = np.asarray(x, np.float64)
    phi, bias, alpha = (np.asarray(a, np.float64) for a in (phi, bias, alpha))
    n, C = x.shape[-2:]
    batch = x.shape[:-2]
    flat = x.reshape(-1, n, C)
    outs = [np.empty((len(flat), C)), np.empty((len(flat), n)), np.empty((len(flat), n)),
            np.empty((len(flat), n, n))]
    for t, xt in enumerate(flat):
        v = xt.reshape(n * C)
        r = 1.0 / np.sqrt(np.mean(v * v) + norm_eps)
        if variant == "paper":
            y = (v @ phi) * r
            h_pre = _sig(alpha[0] * y[:n] + bias[:n])
            h_post = 2 * _sig(alpha[1] * y[n:2 * n] + bias[n:2 * n])
            L = (alpha[2] * y[2 * n:] + bias[2 * n:]).reshape(n, n)
            h_res = sinkhorn(L, iterations=iterations, logits=True, order="cols-first")
        else:
            mix = (v * r) @ phi.T
            h_pre = _sig(mix[:n] * alpha[0] + bias[:n]) + hc_eps
            h_post = 2 * _sig(mix[n:2 * n] * alpha[1] + bias[n:2 * n])
            z = (mix[2 * n:] * alpha[2] + bias[2 * n:]).reshape(n, n)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            comb = e / e.sum(axis=1, keepdims=True) + hc_eps
            comb = comb / (comb.sum(axis=0, keepdims=True) + hc_eps)
            for _ in range(iterations - 1):
                comb = comb / (comb.sum(axis=1, keepdims=True) + hc_eps)
                comb = comb / (comb.sum(axis=0, keepdims=True) + hc_eps)
            h_res = comb.T
        outs[0][t] = sum(h_pre[i] * xt[i] for i in range(n))
        outs[1][t], outs[2][t], outs[3][t] = h_pre, h_post, h_res
    return (outs[0].reshape(batch + (C,)), outs[1].reshape(batch + (n,)),
            outs[2].reshape(batch + (n,)), outs[3].reshape(batch + (n, n)))


def mhc_post(x, f_out, h_post, h_res):
    """x_next[i] = sum_j h_res[i, j] x[j] + h_post[i] f_out, in float64."""
    x, f_out, h_post, h_res = (np.asarray(a, np.float64) for a in (x, f_out, h_post, h_res))
    n = x.shape[-2]
    out = np.empty(np.broadcast_shapes(x.shape, h_res.shape[:-2] + x.shape[-2:]))
    for i in range(n):
        acc = h_post[..., i, None] * f_out
        for j in range(n):
            acc = acc + h_res[..., i, j, None] * x[..., j, :]
        out[..., i, :] = acc
    return out


def sinkhorn_grad_numeric(x, up, h=1e-6, **kw):
    """d sum(up * sinkhorn(x)) / dx by central differences of ``sinkhorn``."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = np.sum(up * (sinkhorn(xp, **kw) - sinkhorn(xm, **kw))) / (2 * h)
    return g


def transport_w1(C, mu, mv):
    """Exact W1 of one transport problem by linear programming (SciPy's HiGHS) over
    the plans between the masses > 0 of ``mu`` and ``mv``, costs ``C``."""
    from scipy.optimize import linprog
    rows, cols = np.flatnonzero(mu > 0), np.flatnonzero(mv > 0)
    C = np.asarray(C, dtype=np.float64)[np.ix_(rows, cols)]
    a, b = len(rows), len(cols)
    A_eq = np.zeros((a + b, a * b))
    for i in range(a):
        A_eq[i, i * b:(i + 1) * b] = 1
    for j in range(b):
        A_eq[a + j, j::b] = 1
    res = linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([mu[rows], mv[cols]]),
                  bounds=(0, None), method="highs")
    assert res.status == 0
    return res.fun
