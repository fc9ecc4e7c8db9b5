"""The array_api backend's curvature kernels (``ot_w1``, ``graph_costs``,
``point_costs`` in ``array_api.py``), in NumPy and SciPy: the curvature records
pass the ragged problems as NumPy arrays (float64 values, int64 vertex indices and
offset tables ``ptr``: item ``e`` is ``ptr[e]`` .. ``ptr[e + 1]``).

- W1: each problem padded to a common shape (zero masses: those rows and columns
  of the plan stay 0), the smaller side as the rows; the problems of one padded
  shape are batches of the backend's own ``sinkhorn`` with epsilon scaling in the
  scaled domain, the plan rounded onto the exact marginals.
- Graph costs: SciPy Dijkstra searches from every source, bounded by three times
  the longest edge (enough for the supports of two adjacent vertices), those that
  found no path searched again without bound.
- Point costs: the backend's ``distance`` on the gathered pairs of points.
"""

import math

import numpy as np

from ..errors import DomainError
from ._constants import OT_REG_START
from .array_api import distance, sinkhorn

#: at most this many (padded) plan entries in one Sinkhorn batch
EDGE_ELEMENTS = 1 << 21
#: Dijkstra searches: at most this many dense distance entries (sources x N) at once
DIST_ELEMENTS = 1 << 22
#: at most this many cost entries gathered at once
GATHER_ELEMENTS = 1 << 20
#: point costs: at most this many coordinates (cost entries x d) per distance call
POINT_ELEMENTS = 1 << 22
#: epsilon scaling: each stage's reg at most this many times below the last
STAGE_RATIO = 3.0
#: the marginal error (L1) at which a stage before the last ends (a warm start only)
STAGE_TOLERANCE = 1e-2
#: iterations before the first check; the interval doubles up to CHECK_EVERY
FIRST_CHECK = 4
CHECK_EVERY = 64


def _ranges(lengths):
    """(owner, index) of every element of consecutive ranges of these lengths."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    return owner, np.arange(owner.size) - first[owner]


def _blocks(sizes, limit):
    """Slices of consecutive items whose sizes add up to at most ``limit`` (or one item)."""
    ends = np.cumsum(sizes)
    start = 0
    while start < len(sizes):
        stop = int(np.searchsorted(ends, ends[start] - sizes[start] + limit, "right"))
        yield slice(start, max(start + 1, stop))
        start = max(start + 1, stop)


# ---------------------------------------------------------------- transport

def ot_w1(xp, cost, mu, mv, rptr, cptr, *, reg, iterations, tolerance, call):
    """W1 and the iterations done (all stages) of each problem (see array_api.ot_w1)."""
    a, b = np.diff(rptr), np.diff(cptr)
    starts = np.cumsum(a * b) - a * b
    _check_domain(cost, mu, mv, rptr, cptr, b, starts)
    g = a.shape[0]
    w, done = np.zeros(g), np.zeros(g, dtype=np.int64)
    live = np.flatnonzero((_positives(mu, rptr) > 0) & (_positives(mv, cptr) > 0))
    if live.size == 0:
        return w, done
    flip = a > b
    rows = _pad_to(np.where(flip, b, a), 4)
    cols = _pad_to(np.where(flip, a, b), 16)
    key = rows * (int(cols.max()) + 1) + cols
    order = live[np.argsort(key[live], kind="stable")]
    for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        r, c = int(rows[group[0]]), int(cols[group[0]])
        step = max(1, EDGE_ELEMENTS // (r * c))
        for s in range(0, len(group), step):
            idx = group[s:s + step]
            f = flip[idx]
            C = np.zeros((len(idx), r, c))
            t, k = _ranges(a[idx] * b[idx])
            i, j = np.divmod(k, b[idx][t])
            ft = f[t]
            C[t, np.where(ft, j, i), np.where(ft, i, j)] = cost[starts[idx][t] + k]
            mr, mc = np.zeros((len(idx), r)), np.zeros((len(idx), c))
            for sel, row_side, col_side in ((~f, (mu, rptr), (mv, cptr)),
                                            (f, (mv, cptr), (mu, rptr))):
                _gather(mr, np.flatnonzero(sel), idx, *row_side)
                _gather(mc, np.flatnonzero(sel), idx, *col_side)
            w[idx], done[idx] = _sinkhorn_w1(xp, C, mr, mc, reg, iterations, tolerance, call)
    return w, done


def _positives(m, ptr):
    """How many masses of each problem's side are > 0."""
    counts = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(m > 0, out=counts[1:])
    return counts[ptr[1:]] - counts[ptr[:-1]]


def _gather(dst, at, idx, m, ptr):
    """Rows ``at`` of ``dst`` <- the masses of the problems ``idx[at]`` (0 after them)."""
    first = ptr[idx[at]]
    t, j = _ranges(ptr[idx[at] + 1] - first)
    dst[at[t], j] = m[first[t] + j]


def _check_domain(cost, mu, mv, rptr, cptr, b, starts):
    """DomainError naming the first problem whose masses are not finite and >= 0 with
    equal totals (1e-6 relative), or whose costs are not finite where both masses are
    > 0 (the checks of the native kernel)."""
    g = rptr.shape[0] - 1
    bad = []
    totals = []
    for m, ptr in ((mu, rptr), (mv, cptr)):
        pos = np.flatnonzero(~(m >= 0) | np.isinf(m))
        if pos.size:
            bad.append(np.searchsorted(ptr, pos[0], "right") - 1)
        owner = np.repeat(np.arange(g), np.diff(ptr))
        totals.append(np.bincount(owner, weights=m, minlength=g))
    tu, tv = totals
    with np.errstate(invalid="ignore"):
        differ = np.flatnonzero(~(np.abs(tu - tv) <= 1e-6 * np.maximum(tu, tv)))
    if differ.size:
        bad.append(differ[0])
    pos = np.flatnonzero(~np.isfinite(cost))
    if pos.size:
        e = np.searchsorted(starts, pos, "right") - 1
        i, j = np.divmod(pos - starts[e], b[e])
        used = (mu[rptr[e] + i] > 0) & (mv[cptr[e] + j] > 0)
        if used.any():
            bad.append(e[used][0])
    if bad:
        raise DomainError(f"transport problem {min(bad)}: masses must be finite, >= 0 and "
                          "of equal totals, costs finite where both masses are > 0",
                          argument="cost")


def _pad_to(x, base):
    """``x`` rounded up to a multiple of ``base`` below 4 * base, of a quarter of its
    power of two above (padding waste <= 25 %, few distinct sizes)."""
    x = np.maximum(x, 1)
    step = np.maximum(base, 2 ** np.floor(np.log2(x)).astype(np.int64) // 4)
    return -(-x // step) * step


def _sinkhorn_w1(xp, C, mu, mv, reg, iterations, tolerance, call):
    """Entropic W1 of a batch of (g, a, b) cost matrices with masses mu (g, a) and
    mv (g, b): sum(P * C) of the plan rounded onto the transport polytope (an upper
    bound of the exact W1), and the iterations each problem took. Zero masses are
    padding: their rows / columns of the plan stay 0 (a row whose sum is 0 stays 0
    in ``sinkhorn``)."""
    valid = (mu > 0)[:, :, None] & (mv > 0)[:, None, :]
    big = np.where(valid, C, np.inf)
    low = np.where(valid, C, -np.inf)
    # reduced costs (row then column minima removed): the same Sinkhorn solution
    # (a diagonal scaling of the kernel), but every row and column keeps an entry
    # exp(0) = 1; scaled by the cost range so that ``reg`` is relative, Z in [0, 1]
    cmin = big.min(axis=(1, 2), keepdims=True)
    scale = low.max(axis=(1, 2), keepdims=True) - cmin
    scale = np.where(scale > 0, scale, 1.0)
    m = big.min(axis=2, keepdims=True)
    Z = big - np.where(np.isfinite(m), m, 0.0)         # inf on padding
    m = Z.min(axis=1, keepdims=True)
    Z -= np.where(np.isfinite(m), m, 0.0)
    Z /= scale
    del big, low
    # epsilon scaling: stages from OT_REG_START down to reg (STAGE_RATIO apart). Each
    # stage starts from the last one's plan P = exp((f + g - Z) / prev) (the
    # potentials absorbed, the "scaled domain"): exp((f + g - Z) / r) = P ** (prev / r),
    # so the entries the plan needs stay near the masses' size whatever ``reg``,
    # and none underflows the way exp(-Z / reg) does for reg << 1
    P, prev = None, None
    done = np.zeros(C.shape[0], dtype=np.int64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for r in _stages(reg):
            if P is None:
                P = np.exp(Z * (-1.0 / r))
            else:
                np.power(P, prev / r, out=P)
            P[~valid] = 0.0
            done += _iterate(xp, P, mu, mv, iterations,
                             tolerance if r == reg else STAGE_TOLERANCE, call)
            prev = r
    del Z, valid
    P = _round_plan(P, mu, mv)
    return np.einsum("gab,gab->g", P, np.where(np.isfinite(C), C, 0.0)), done


def _iterate(xp, P, mu, mv, iterations, tolerance, call):
    """Sinkhorn on the batch P in place (rows first) until each matrix's row sums
    are within ``tolerance`` (L1, the total mass is 1) of ``mu`` or ``iterations``
    are done; converged matrices leave the active set. Returns the iterations each
    matrix took."""
    done = np.zeros(P.shape[0], dtype=np.int64)
    active = np.arange(P.shape[0])
    Pa, ra, ca = P, mu, mv  # Pa: P itself until some matrices leave, then a copy
    count, step = 0, FIRST_CHECK
    while count < iterations:
        step = min(step, iterations - count)
        sinkhorn(xp, Pa, ra, ca, iterations=step, tau=0.0, logits=False, order="rows-first",
                 out=Pa, call=call)
        count += step
        done[active] += step
        err = np.abs(Pa.sum(axis=2) - ra).sum(axis=1)
        more = ~(err <= tolerance)
        if not more.any():
            break
        if not more.all():
            if Pa is not P:
                P[active] = Pa
            active = active[more]
            Pa, ra, ca = P[active], mu[active], mv[active]
        step = min(2 * step, CHECK_EVERY)
    if Pa is not P:
        P[active] = Pa
    return done


def _stages(reg):
    """The regularisations of epsilon scaling: from OT_REG_START down to ``reg``, each
    stage at most STAGE_RATIO times smaller than the last (the native kernel's)."""
    if reg >= OT_REG_START:
        return [reg]
    count = math.ceil(math.log(OT_REG_START / reg) / math.log(STAGE_RATIO) - 1e-9)
    return [OT_REG_START * (reg / OT_REG_START) ** (i / count) for i in range(count)] + [reg]


def _round_plan(P, r, c):
    """Altschuler-Weed-Rigollet rounding: a plan with exactly the marginals r, c."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = P.sum(2)
        x = np.minimum(np.where(s > 0, r / s, 0.0), 1.0)
        P *= x[:, :, None]
        s = P.sum(1)
        y = np.minimum(np.where(s > 0, c / s, 0.0), 1.0)
        P *= y[:, None, :]
    er = r - P.sum(2)
    ec = c - P.sum(1)
    tot = er.sum(1)
    tot = np.where(tot > 0, tot, 1.0)
    P += er[:, :, None] * (ec / tot[:, None])[:, None, :]
    return P


# ---------------------------------------------------------------- costs

class _Rows:
    """The rows of the flat cost matrices: one per source ``X[r]``, its targets
    ``Y[first[r]:first[r] + count[r]]`` written at ``out[offset[r]:...]``."""

    def __init__(self, X, xptr, Y, yptr):
        a, b = np.diff(xptr), np.diff(yptr)
        entries = a * b
        e, i = _ranges(a)
        self.Y, self.count = Y, b[e]
        self.first = yptr[e]
        self.offset = (np.cumsum(entries) - entries)[e] + i * self.count
        self.size = int(entries.sum())

    def pairs(self, rows, limit=GATHER_ELEMENTS):
        """(row, target, position in out) of every cost entry of ``rows`` (a row as
        its index into ``rows``), in blocks of at most ``limit`` entries."""
        for blk in _blocks(self.count[rows], limit):
            sel = rows[blk]
            t, j = _ranges(self.count[sel])
            yield blk.start + t, self.Y[self.first[sel][t] + j], self.offset[sel][t] + j


def graph_costs(xp, indptr, indices, weights, X, xptr, Y, yptr, *, call):
    """Shortest-path costs between ragged supports (see array_api.graph_costs)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra
    bad = np.flatnonzero(~(weights > 0) | np.isinf(weights))
    if bad.size:
        raise DomainError(f"graph edge lengths must be finite and > 0; entry {bad[0]} is "
                          f"{weights[bad[0]]!r}", argument="graph")
    n = indptr.shape[0] - 1
    adj = sp.csr_array((weights, indices, indptr), shape=(n, n))
    rows = _Rows(X, xptr, Y, yptr)
    out = np.empty(rows.size)

    def search(which, limit):
        """The cost rows ``which`` from Dijkstra searches bounded by ``limit``, a batch
        of sources (DIST_ELEMENTS dense entries at most) at a time."""
        sources, local = np.unique(X[which], return_inverse=True)
        per = max(1, DIST_ELEMENTS // max(n, 1))
        order = np.argsort(local, kind="stable")
        cuts = np.searchsorted(local[order], np.arange(0, len(sources) + per, per))
        for k in range(len(cuts) - 1):
            D = dijkstra(adj, directed=False, indices=sources[k * per:(k + 1) * per],
                         limit=limit)
            batch = order[cuts[k]:cuts[k + 1]]
            for t, target, at in rows.pairs(which[batch]):
                out[at] = D[local[batch][t] - k * per, target]

    if X.size:
        search(np.arange(X.size), 3 * float(weights.max(initial=0.0)) * (1 + 1e-9))
        far = np.flatnonzero(np.isinf(out))
        if far.size:  # a path longer than the bound, or none
            search(np.unique(np.searchsorted(rows.offset, far, "right") - 1), np.inf)
    return out


def point_costs(xp, points, X, xptr, Y, yptr, *, manifold, curvature, call):
    """Manifold distances between ragged supports (see array_api.point_costs)."""
    rows = _Rows(X, xptr, Y, yptr)
    out = np.empty(rows.size)
    for r, target, at in rows.pairs(np.arange(X.size),
                                    max(1, POINT_ELEMENTS // max(1, points.shape[1]))):
        out[at] = distance(xp, points[X[r]], points[target], manifold=manifold,
                           curvature=curvature, on_domain_error="nan", call=call)
    return out


# ---------------------------------------------------------------- exact transport

def _lp_w1(C, a, b):
    """Exact W1 of one problem (costs C (n, m), masses a, b > 0) as a linear program."""
    from scipy.optimize import linprog
    n, m = C.shape
    if n == 0 or m == 0:
        return 0.0
    if n == 1 or m == 1:            # one row or column: the plan is forced
        return float(C.ravel() @ (b if n == 1 else a))
    A = np.zeros((n + m, n * m))
    for i in range(n):
        A[i, i * m:(i + 1) * m] = 1
    for j in range(m):
        A[n + j, j::m] = 1
    bm = b * (a.sum() / b.sum())    # equal totals exactly (they agree to 1e-6)
    res = linprog(C.ravel(), A_eq=A[:-1], b_eq=np.concatenate([a, bm])[:-1],
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"internal error: the transport program failed ({res.message})")
    return float(res.fun)


def _cancel(C, a, b):
    """The masses left after cancelling the shared mass of zero-cost pairs."""
    a, b = a.copy(), b.copy()
    for i, j in zip(*np.nonzero(C == 0)):
        t = min(a[i], b[j])
        a[i] -= t
        b[j] -= t
    return a, b


def ot_exact(xp, cost, mu, mv, rptr, cptr, *, metric, call):
    """Exact W1 of each problem (see array_api.ot_exact)."""
    g = rptr.shape[0] - 1
    w = np.empty(g)
    at = 0
    for e in range(g):
        a, b = mu[rptr[e]:rptr[e + 1]], mv[cptr[e]:cptr[e + 1]]
        C = cost[at:at + a.size * b.size].reshape(a.size, b.size)
        at += a.size * b.size
        ok = (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a >= 0)
              and np.all(b >= 0))
        sa, sb = a.sum(), b.sum()
        ok = ok and abs(sa - sb) <= 1e-6 * max(sa, sb)
        ok = ok and bool(np.all(np.isfinite(C[np.ix_(a > 0, b > 0)])))
        if not ok:
            raise DomainError(f"transport problem {e}: masses must be finite, >= 0 and of "
                              "equal totals, costs finite where both masses are > 0",
                              argument="cost")
        if metric:
            a, b = _cancel(C, a, b)
        tiny = 1e-15 * max(sa, sb)
        r, c = a > tiny, b > tiny
        w[e] = _lp_w1(C[np.ix_(r, c)], a[r], b[c]) if r.any() and c.any() else 0.0
    return w


def ot_exact_table(xp, table, X, Y, mu, mv, rptr, cptr, *, metric, call):
    """Exact W1 of each problem, costs from a table (see array_api.ot_exact_table)."""
    cost = np.concatenate([table[np.ix_(X[rptr[e]:rptr[e + 1]], Y[cptr[e]:cptr[e + 1]])].ravel()
                           for e in range(rptr.shape[0] - 1)] + [np.empty(0)])
    return ot_exact(xp, cost, mu, mv, rptr, cptr, metric=metric, call=call)


def unit_w1(xp, indptr, indices, U, V, *, alpha, call):
    """Exact W1(m_u, m_v) of unit-length edges (see array_api.unit_w1)."""
    import scipy.sparse as sp
    n = indptr.shape[0] - 1
    adj = sp.csr_array((np.ones(indices.shape[0]), indices, indptr), shape=(n, n))
    for e, (u, v) in enumerate(zip(U, V)):
        nu = indices[indptr[u]:indptr[u + 1]]
        if u == v or v not in nu or u in nu or len(np.unique(nu)) != len(nu):
            raise DomainError(f"edge {e} ({int(u)}, {int(v)}): its ends must be adjacent, "
                              "without self loops or repeated neighbours", argument="graph")
    w = np.empty(U.shape[0])
    for e, (u, v) in enumerate(zip(U, V)):
        net = {}
        for x, m in ((u, alpha), (v, -alpha)):
            net[x] = net.get(x, 0.0) + m
        for x, sign in ((u, 1), (v, -1)):
            nb = indices[indptr[x]:indptr[x + 1]]
            for y in nb:
                net[int(y)] = net.get(int(y), 0.0) + sign * (1 - alpha) / len(nb)
        rows = [x for x, m in net.items() if m > 1e-14]
        cols = [x for x, m in net.items() if m < -1e-14]
        if not rows or not cols:
            w[e] = 0.0
            continue
        from scipy.sparse.csgraph import shortest_path
        D = shortest_path(adj, unweighted=True, indices=rows)[:, cols]
        w[e] = _lp_w1(D, np.array([net[x] for x in rows]), np.array([-net[x] for x in cols]))
    return w
