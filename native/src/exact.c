/*
 * exact.c -- exact W1 of small transport problems for Ollivier-Ricci curvature
 * (mhc_ot_exact_f64, mhc_unit_w1_f64, see mhc_native.h). Scalar code (no ISA
 * variants): the solver is branchy and works on problems of a few dozen entries.
 *
 * The solver: a network simplex for the transportation problem (ns_solve: a
 * spanning-tree basis kept as a preorder array, a column-minimum start in
 * order of regret, block
 * pricing over whole rows, Cunningham's leaving rule against degenerate cycling),
 * on real masses (no scaling to integers, any alpha). Where it gives up (a pivot
 * limit of 64 (n + m) + 1000, not reached on the benchmark graphs' 66,255
 * problems; or flows that are not numbers) successive shortest paths
 * (sp_solve: node potentials, dense Dijkstra searches by array scan, a greedy
 * start) solve the problem instead. Either result is optimal up to rounding (the
 * plan's marginals exact to ~1e-15 of the total mass; reduced costs >= -1e-12 of
 * the largest cost, so W1 within 1e-12 of it times the mass).
 *
 * mhc_unit_w1_f64 fuses the curvature of a unit-length graph: per edge (u, v)
 * the two measures' shared mass cancelled (m_u - m_v, vertex by vertex), the
 * costs between what is left read from adjacency (1), common neighbours (2), else
 * 3 (every pair is joined by x - u - v - y), by 64-bit masks of the columns kept
 * on every neighbour of a column; then the solver. Threads split the edges; each
 * thread's workspace is three arrays over the vertices and the solver's buffers,
 * grown to the largest problem it meets.
 */
#include <stdlib.h>
#include "mhc_internal.h"
#include "checked.h"
#include "threads.h"

#define MIS(p, type) (((uintptr_t)(const void *)(p)) % sizeof(type) != 0)

/* ---- the solvers --------------------------------------------------------- */

/* A solver workspace, grown on demand: doubles and ints for an n x m problem,
 * enough for either solver (ns_solve: 5 (n + m) doubles, 11 (n + m) + 1 ints;
 * sp_solve: n m + 4 (n + m) doubles, 2 (n + m) ints). */
typedef struct {
    double *d;
    int *i;
    size_t dcap, icap;
} sp_ws;

/* 0 when the sizes overflow or the allocation fails (n, m >= 1, n + m <= 2^20) */
static int sp_reserve(sp_ws *w, int64_t n, int64_t m)
{
    int64_t nm, nd, ni;
    if (__builtin_mul_overflow(n, m, &nm) || __builtin_add_overflow(nm, 5 * (n + m), &nd) ||
        __builtin_add_overflow(11 * (n + m), 1, &ni) ||
        (uint64_t)nd > SIZE_MAX / sizeof(double) || (uint64_t)ni > SIZE_MAX / sizeof(int))
        return 0;
    if ((size_t)nd > w->dcap) {
        double *p = mhc_realloc(w->d, (size_t)nd * sizeof(double));
        if (!p)
            return 0;
        w->d = p;
        w->dcap = (size_t)nd;
    }
    if ((size_t)ni > w->icap) {
        int *p = mhc_realloc(w->i, (size_t)ni * sizeof(int));
        if (!p)
            return 0;
        w->i = p;
        w->icap = (size_t)ni;
    }
    return 1;
}

static void sp_release(sp_ws *w)
{
    mhc_free(w->d);
    mhc_free(w->i);
}

/* min_j (c[j] + p[j]), branch-free with four accumulators (x < y ? x : y is one
 * minsd); an entry that is not a number is skipped */
static inline double rowmin(const double *c, const double *p, int m)
{
    double m0 = INFINITY, m1 = INFINITY, m2 = INFINITY, m3 = INFINITY;
    int j = 0;
    for (; j + 4 <= m; j += 4) {
        const double r0 = c[j] + p[j], r1 = c[j + 1] + p[j + 1];
        const double r2 = c[j + 2] + p[j + 2], r3 = c[j + 3] + p[j + 3];
        m0 = r0 < m0 ? r0 : m0;
        m1 = r1 < m1 ? r1 : m1;
        m2 = r2 < m2 ? r2 : m2;
        m3 = r3 < m3 ? r3 : m3;
    }
    for (; j < m; j++) {
        const double r0 = c[j] + p[j];
        m0 = r0 < m0 ? r0 : m0;
    }
    m0 = m1 < m0 ? m1 : m0;
    m2 = m3 < m2 ? m3 : m2;
    return m2 < m0 ? m2 : m0;
}

/* Network simplex for the transportation problem: exact W1 of the n x m problem
 * (costs c, row-major, finite; row masses a, column masses b, > 0, equal totals up
 * to rounding) in w's buffers. Sets *ok = 0 (and returns 0) when it gives up (the
 * pivot limit, or flows that are not numbers): the caller then runs sp_solve.
 *
 * The basis is a spanning tree of the n + m nodes (rows 0..n-1, columns n..n+m-1)
 * with n + m - 1 arcs (row, column), rooted at node n; each node x != root keeps
 * the flow on the arc to its parent (flow[x]); pot[] holds the duals, u_i for
 * the rows and -v_j for the columns (u_i + v_j = c_ij on the tree's arcs; the
 * reduced cost is c_ij - pot[i] + pot[n + j], and a subtree's duals move by one
 * amount). The tree is stored as a preorder:
 * ord[] the nodes, pos[x] x's place, size[x] its subtree (ord[pos[x] ..
 * pos[x] + size[x]) ), so that "a is an ancestor of b" is two comparisons and a
 * subtree is a contiguous block: the cycle is found by climbing parents, and a
 * pivot moves one block (re-rooted by copying segments) instead of walking
 * pointers.
 *
 * Start: column minimum in order of regret (columns sorted by the gap between
 * their two cheapest rows, largest first; each ships to its cheapest rows with
 * supply left; every step retires a row or a column, the last both: n + m - 1
 * cells, a tree).
 * Pricing: block search over whole rows (at least sqrt(n m) reduced costs per
 * block, from where the last one stopped; the most negative c_ij - u_i - v_j of
 * the first block that has one below -1e-12 max|c| enters). Leaving arc: the last
 * blocking arc met going round the cycle from its apex (Cunningham's rule). */
static double ns_solve(int n, int m, const double *c, const double *a, const double *b,
                       const sp_ws *w, int *ok)
{
    const int V = n + m;
    const int64_t E = (int64_t)n * m;
    int *parent = w->i, *pos = parent + V, *size = pos + V, *ord = size + V, *tmp = ord + V;
    int *pa = tmp + V, *pb = pa + V, *scr = pb + V;                     /* scr: 4 V + 1 */
    double *pot = w->d, *flow = pot + V, *ra = flow + V, *cb = ra + V, *ef = cb + V;
    double cmax = 0;
    *ok = 0;
    memcpy(ra, a, (size_t)n * sizeof(double));
    memcpy(cb, b, (size_t)m * sizeof(double));
    /* the start: cells (ei, ej) carrying ef. Columns in order of regret (their
     * second cheapest row's cost less their cheapest's, largest first), each
     * ships to its cheapest rows with supply left; pen[i] = +inf once row i is
     * retired, so that the cheapest row left is a branch-free minimum. */
    int *ei = pa, *ej = pb, cells = 0;
    {
        double *pen = pot, *reg = flow;     /* scratch until the tree is built */
        int *cord = pos, nra = n;           /* the column order; rows with supply left */
        double *c1 = ef;                    /* each column's cheapest cost (scratch) */
        for (int i = 0; i < n; i++)
            pen[i] = 0;
        for (int j = 0; j < m; j++)
            c1[j] = reg[j] = INFINITY;
        for (int i = 0; i < n; i++) {       /* row by row (contiguous), with max|c| */
            const double *cr = c + (size_t)i * m;
            for (int j = 0; j < m; j++) {
                const double x = cr[j], ax = fabs(x);
                cmax = ax > cmax ? ax : cmax;
                reg[j] = x < reg[j] ? (x < c1[j] ? c1[j] : x) : reg[j];
                c1[j] = x < c1[j] ? x : c1[j];
            }
        }
        for (int j = 0; j < m; j++) {
            reg[j] = n > 1 ? reg[j] - c1[j] : 0;
            cord[j] = j;
        }
        /* Shell sort (Knuth's gaps: no recursion, no memory), largest regret first */
        int h = 1;
        while (h < m / 3)
            h = 3 * h + 1;
        for (; h > 0; h = (h - 1) / 3)
            for (int q = h; q < m; q++) {
                const int t = cord[q];
                int r = q;
                while (r >= h && reg[cord[r - h]] < reg[t]) {
                    cord[r] = cord[r - h];
                    r -= h;
                }
                cord[r] = t;
            }
        for (int q = 0; q < m - 1; q++) {
            const int j = cord[q];
            for (;;) {
                double lo = INFINITY;
                int i = 0;
                for (int r = 0; r < n; r++) {
                    const double x = c[(size_t)r * m + j] + pen[r];
                    i = x < lo ? r : i;
                    lo = x < lo ? x : lo;
                }
                ei[cells] = i;
                ej[cells] = j;
                if (nra == 1 || cb[j] <= ra[i]) {   /* the column is done */
                    ra[i] = ra[i] - cb[j] > 0 ? ra[i] - cb[j] : 0;
                    ef[cells++] = cb[j];
                    break;
                }
                cb[j] -= ra[i];                     /* the row is done */
                ef[cells++] = ra[i];
                pen[i] = INFINITY;
                nra--;
            }
        }
        for (int i = 0; i < n; i++)                 /* the last column: what is left */
            if (pen[i] == 0) {
                ei[cells] = i;
                ej[cells] = cord[m - 1];
                ef[cells++] = ra[i];
            }
    }
    /* the tree from the cells: adjacency by counting, preorder by a stack */
    {
        int *off = scr, *adj = off + V + 1, *fill = adj + 2 * V, *stk = tmp, sp = 0, cnt = 0;
        for (int v = 0; v <= V; v++)
            off[v] = 0;
        for (int k = 0; k < cells; k++) {
            off[ei[k] + 1]++;
            off[n + ej[k] + 1]++;
        }
        for (int v = 0; v < V; v++) {
            off[v + 1] += off[v];
            fill[v] = off[v];
            parent[v] = -2;
        }
        for (int k = 0; k < cells; k++) {
            adj[fill[ei[k]]++] = k;
            adj[fill[n + ej[k]]++] = k;
        }
        stk[sp++] = n;
        parent[n] = -1;
        pot[n] = 0;
        flow[n] = 0;
        while (sp) {
            const int x = stk[--sp];
            pos[x] = cnt;
            ord[cnt++] = x;
            for (int t = off[x]; t < off[x + 1]; t++) {
                const int k = adj[t], y = x < n ? n + ej[k] : ei[k];
                if (parent[y] != -2)
                    continue;
                parent[y] = x;
                flow[y] = ef[k];
                pot[y] = x < n ? pot[x] - c[(size_t)ei[k] * m + ej[k]]
                               : pot[x] + c[(size_t)ei[k] * m + ej[k]];
                stk[sp++] = y;
            }
        }
        if (cnt != V)           /* cannot happen: the start gives a tree */
            return 0;
        for (int v = 0; v < V; v++)
            size[v] = 1;
        for (int k = V - 1; k > 0; k--)
            size[parent[ord[k]]] += size[ord[k]];
    }
    const double tol = 1e-12 * cmax;
    const double block = sqrt((double)E);
    const int64_t maxpiv = 64 * (int64_t)V + 1000;
    const double *pv = pot + n;
    int row = 0;
    for (int64_t pivots = 0;; pivots++) {
        /* pricing: each row's minimum of c_ij + pot[n + j] (branch-free), its
         * column looked up only when it beats the best */
        int bi = -1, bj = -1, i = row;
        double best = -tol, cnt = 0;
        for (int rows = 0; rows < n; rows++) {
            const double *cr = c + (size_t)i * m, lo = rowmin(cr, pv, m);
            if (lo - pot[i] < best) {
                int j = 0;
                while (j < m - 1 && cr[j] + pv[j] != lo)
                    j++;
                best = lo - pot[i];
                bi = i;
                bj = j;
            }
            if (++i == n)
                i = 0;
            cnt += m;
            if (cnt >= block) {
                if (bi >= 0)
                    break;
                cnt = 0;
            }
        }
        if (bi < 0)
            break;              /* no reduced cost below -tol: optimal */
        if (pivots >= maxpiv)
            return 0;
        row = i;
        const int cj = n + bj;
        /* the cycle: the row's side (pa, from the row up, below the apex), then the
         * column's (pb); the flow goes down the row's side, through the entering
         * arc, up the column's side: the arcs against it (under a row on the
         * row's side, under a column on the column's) bound theta */
        int u = bi, nu = 0, nv = 0;
        while (!(pos[u] <= pos[cj] && pos[cj] < pos[u] + size[u])) {
            pa[nu++] = u;
            u = parent[u];
        }
        const int apex = u;
        for (int v = cj; v != apex; v = parent[v])
            pb[nv++] = v;
        double theta = INFINITY;
        for (int t = 0; t < nu; t++)
            if (pa[t] < n && flow[pa[t]] < theta)
                theta = flow[pa[t]];
        for (int t = 0; t < nv; t++)
            if (pb[t] >= n && flow[pb[t]] < theta)
                theta = flow[pb[t]];
        /* leaving: the last blocking arc from the apex (the column's side top
         * down, then the row's side bottom up) */
        int out = -1, side = 0;
        for (int t = nv - 1; t >= 0 && out < 0; t--)
            if (pb[t] >= n && flow[pb[t]] == theta) {
                out = t;
                side = 1;
            }
        for (int t = 0; t < nu && out < 0; t++)
            if (pa[t] < n && flow[pa[t]] == theta)
                out = t;
        if (out < 0)
            return 0;           /* flows that are not numbers */
        if (theta > 0) {
            for (int t = 0; t < nu; t++)
                flow[pa[t]] += pa[t] < n ? -theta : theta;
            for (int t = 0; t < nv; t++)
                flow[pb[t]] += pb[t] >= n ? -theta : theta;
        }
        /* S, the subtree under the leaving arc, is re-rooted at path[0] (the
         * entering arc's end on its side) and hung from the other end, newp */
        const int *path = side ? pb : pa;
        const int newp = side ? bi : cj, oldp = parent[path[out]];
        const int S = size[path[out]], s0 = pos[path[out]];
        int len = 0;
        for (int t = 0; t <= out; t++) {    /* S's new preorder into tmp */
            const int p = path[t], beg = pos[p] + 1, end = pos[p] + size[p];
            tmp[len++] = p;
            if (t == 0) {
                memcpy(tmp + len, ord + beg, (size_t)(end - beg) * sizeof(int));
                len += end - beg;
            } else {    /* p's block less p and the block of the path's node below */
                const int q = path[t - 1], qb = pos[q], qe = pos[q] + size[q];
                memcpy(tmp + len, ord + beg, (size_t)(qb - beg) * sizeof(int));
                len += qb - beg;
                memcpy(tmp + len, ord + qe, (size_t)(end - qe) * sizeof(int));
                len += end - qe;
            }
        }
        double carry = theta;   /* the path's arcs turn round: flows move down it */
        for (int t = 0; t <= out; t++) {
            const double f = flow[path[t]];
            flow[path[t]] = carry;
            carry = f;
        }
        for (int t = out; t > 0; t--) {
            size[path[t]] = S - size[path[t - 1]];
            parent[path[t]] = path[t - 1];
        }
        size[path[0]] = S;
        parent[path[0]] = newp;
        for (int v = oldp; v != apex; v = parent[v])
            size[v] -= S;
        for (int v = newp; v != apex; v = parent[v])
            size[v] += S;
        /* S's block moves to just after newp; what lies between shifts over */
        const int P = pos[newp];
        int lo, hi, dst;
        if (s0 > P) {
            memmove(ord + P + 1 + S, ord + P + 1, (size_t)(s0 - P - 1) * sizeof(int));
            lo = dst = P + 1;
            hi = s0 + S;
        } else {
            memmove(ord + s0, ord + s0 + S, (size_t)(P - s0 - S + 1) * sizeof(int));
            lo = s0;
            dst = P - S + 1;
            hi = P + 1;
        }
        memcpy(ord + dst, tmp, (size_t)S * sizeof(int));
        for (int k = lo; k < hi; k++)
            pos[ord[k]] = k;
        /* potentials: the entering arc's reduced cost to 0, S's rows + d and
         * columns - d (pot[] holds -v_j: + d too) */
        const double d = path[0] < n ? best : -best;
        for (int k = dst; k < dst + S; k++)
            pot[ord[k]] += d;
    }
    double W = 0;
    for (int x = 0; x < V; x++)
        if (x != n) {
            const int p = parent[x], i = x < n ? x : p, j = x < n ? p - n : x - n;
            W += flow[x] * c[(size_t)i * m + j];
        }
    *ok = 1;
    return W;
}

/* Successive shortest paths (the fallback of ns_solve, and the solver measured
 * before it): exact W1 of the n x m problem with costs c (row-major, stride m),
 * row masses a and column masses b (> 0, equal totals up to rounding), in w's
 * buffers (which hold at least what sp_reserve(w, n, m) gives). Returns
 * sum_ij P_ij c_ij of an optimal plan P. */
/* 1: rows reduced and zero-reduced-cost arcs filled before the searches (measured
 * faster: docs/curvature.md); 0: cold start, kept for measurements */
static const int greedy = 1;
static double sp_solve(int n, int m, const double *c, const double *a, const double *b,
                       const sp_ws *w)
{
    const int V = n + m;
    double *flow = w->d, *pot = flow + (size_t)n * m, *dist = pot + V, *ex = dist + V;
    int *pred = w->i, *done = pred + V;
    double total = 0, tb = 0;
    for (int i = 0; i < n; i++)
        total += a[i];
    for (int j = 0; j < m; j++)
        tb += b[j];
    const double eps = 1e-14 * (total > tb ? total : tb);
    memset(flow, 0, (size_t)n * m * sizeof(double));
    for (int i = 0; i < n; i++) {
        pot[i] = 0;
        ex[i] = a[i];
    }
    for (int j = 0; j < m; j++) {   /* reduced costs c_ij - min_i c_ij >= 0 */
        double lo = c[j];
        for (int i = 1; i < n; i++)
            lo = c[(size_t)i * m + j] < lo ? c[(size_t)i * m + j] : lo;
        pot[n + j] = lo;
        ex[n + j] = b[j];
    }
    if (greedy) {   /* rows reduced too, then ship along the arcs of reduced cost 0 */
        for (int i = 0; i < n; i++) {
            const double *cr = c + (size_t)i * m;
            double lo = cr[0] - pot[n];
            for (int j = 1; j < m; j++)
                lo = cr[j] - pot[n + j] < lo ? cr[j] - pot[n + j] : lo;
            pot[i] = -lo;
            for (int j = 0; j < m && ex[i] > eps; j++) {
                const double r = cr[j] + pot[i] - pot[n + j];
                if (ex[n + j] > eps && r <= 1e-13 * (fabs(cr[j]) + fabs(pot[n + j]))) {
                    const double t = ex[i] < ex[n + j] ? ex[i] : ex[n + j];
                    flow[(size_t)i * m + j] = t;
                    ex[i] -= t;
                    ex[n + j] -= t;
                }
            }
        }
    }
    for (;;) {
        int sources = 0, t = -1;
        for (int v = 0; v < V; v++) {
            done[v] = 0;
            pred[v] = -1;
            dist[v] = INFINITY;
            if (v < n && ex[v] > eps) {
                dist[v] = 0;
                sources++;
            }
        }
        if (!sources)
            break;
        for (;;) {  /* Dijkstra by array scan, until a column with demand left */
            int x = -1;
            double best = INFINITY;
            for (int v = 0; v < V; v++)
                if (!done[v] && dist[v] < best) {
                    best = dist[v];
                    x = v;
                }
            if (x < 0)
                break;
            done[x] = 1;
            if (x < n) {                  /* row x -> every column */
                const double *cr = c + (size_t)x * m, px = pot[x] + best;
                for (int j = 0; j < m; j++) {
                    if (done[n + j])
                        continue;
                    double r = cr[j] + px - pot[n + j];
                    r = r < best ? best : r;   /* reduced cost >= 0 (rounding) */
                    if (r < dist[n + j]) {
                        dist[n + j] = r;
                        pred[n + j] = x;
                    }
                }
            } else {
                const int j = x - n;
                if (ex[x] > eps) {
                    t = x;
                    break;
                }
                const double pj = pot[x] + best;   /* column j -> rows it ships from */
                for (int i = 0; i < n; i++) {
                    if (done[i] || !(flow[(size_t)i * m + j] > eps))
                        continue;
                    double r = pj - c[(size_t)i * m + j] - pot[i];
                    r = r < best ? best : r;
                    if (r < dist[i]) {
                        dist[i] = r;
                        pred[i] = x;
                    }
                }
            }
        }
        if (t < 0)
            break;              /* demand left only below the rounding level */
        const double D = dist[t];
        for (int v = 0; v < V; v++)
            pot[v] += dist[v] < D ? dist[v] : D;
        double delta = ex[t];
        int v = t;
        while (pred[v] >= 0) {
            const int p = pred[v];
            if (p >= n) {       /* backward arc: column p - n -> row v */
                const double f = flow[(size_t)v * m + (p - n)];
                delta = f < delta ? f : delta;
            }
            v = p;
        }
        delta = ex[v] < delta ? ex[v] : delta;
        ex[v] -= delta;
        ex[t] -= delta;
        v = t;
        while (pred[v] >= 0) {
            const int p = pred[v];
            if (p < n)
                flow[(size_t)p * m + (v - n)] += delta;
            else
                flow[(size_t)v * m + (p - n)] -= delta;
            v = p;
        }
    }
    double W = 0;
    for (size_t k = 0; k < (size_t)n * m; k++)
        W += flow[k] * c[k];
    return W;
}

/* Exact W1: the network simplex, or successive shortest paths where it gives up. */
static double w1_solve(int n, int m, const double *c, const double *a, const double *b,
                       const sp_ws *w)
{
    int ok;
    const double W = ns_solve(n, m, c, a, b, w, &ok);
    return ok ? W : sp_solve(n, m, c, a, b, w);
}

/* ---- mhc_ot_exact_f64: given cost matrices ---------------------------------- */

typedef struct {
    const double *cost, *mu, *mv;
    const int64_t *rptr, *cptr, *coff;
    double *w;
    int metric;
    /* mhc_ot_exact_table_f64: costs table[X[r] nt + Y[c]] (cost, coff unused) */
    const double *table;
    const int64_t *X, *Y;
    int64_t nt;
} ex_ctx;

static int ex_chunk(const void *ctx, int64_t lo, int64_t hi, int64_t *err)
{
    const ex_ctx *s = ctx;
    sp_ws ws = {0};
    double *buf = NULL;
    size_t bufcap = 0;
    int st = MHC_OK;
    for (int64_t b = lo; b < hi; b++) {
        const int64_t n = s->rptr[b + 1] - s->rptr[b], m = s->cptr[b + 1] - s->cptr[b];
        if (n == 0 || m == 0) {   /* no mass on one side, so none on the other: W1 = 0 */
            s->w[b] = 0;          /* (and no pointer arithmetic on possibly NULL arrays) */
            continue;
        }
        const double *mu = s->mu + s->rptr[b], *mv = s->mv + s->cptr[b];
        /* buf: the masses left (n + m), the kept rows' and columns' indices (n + m),
         * then the kept problem's costs (n * m), then (from a table) the problem's
         * costs gathered (n * m) */
        const size_t need = (size_t)(3 * (n + m) + (s->table ? 2 : 1) * n * m);
        if (need > bufcap) {
            double *p = mhc_realloc(buf, need * sizeof(double));
            if (!p) {
                st = MHC_ERR_OUT_OF_MEMORY;
                break;
            }
            buf = p;
            bufcap = need;
        }
        double *ra = buf, *cb = buf + n, *cc = buf + 3 * (n + m);
        int64_t *ri = (int64_t *)(void *)(buf + n + m), *ci = ri + n;
        const double *C = s->cost ? s->cost + s->coff[b] : NULL;
        if (s->table) {         /* gathered: rows of the table, one per source */
            double *g = cc + n * m;
            const int64_t *x = s->X + s->rptr[b], *y = s->Y + s->cptr[b];
            int fin = 1;
            for (int64_t i = 0; i < n; i++) {
                const double *row = s->table + x[i] * s->nt;
                double *gi = g + i * m;
                for (int64_t j = 0; j < m; j++)
                    gi[j] = row[y[j]];
                if (mu[i] > 0)  /* a cost needed (both masses > 0) must be finite */
                    for (int64_t j = 0; j < m; j++)
                        fin &= !(mv[j] > 0) || isfinite(gi[j]);
            }
            if (!fin) {
                *err = b;
                st = MHC_ERR_DOMAIN;
                break;
            }
            C = g;
        }
        double total = 0;
        for (int64_t i = 0; i < n; i++) {
            ra[i] = mu[i];
            total += mu[i];
        }
        for (int64_t j = 0; j < m; j++)
            cb[j] = mv[j];
        if (s->metric)          /* a zero-cost pair is one point: cancel its mass */
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < m && ra[i] > 0; j++)
                    if (C[i * m + j] == 0 && cb[j] > 0) {
                        const double t = ra[i] < cb[j] ? ra[i] : cb[j];
                        ra[i] -= t;
                        cb[j] -= t;
                    }
        const double tiny = 1e-15 * total;
        int64_t nr = 0, nc = 0;
        for (int64_t i = 0; i < n; i++)
            if (ra[i] > tiny)
                ri[nr++] = i;
        for (int64_t j = 0; j < m; j++)
            if (cb[j] > tiny)
                ci[nc++] = j;
        if (!nr || !nc) {
            s->w[b] = 0;
            continue;
        }
        /* compact the kept problem, the smaller side as the rows (the network
         * simplex's start then needs fewer pivots: measured, docs/curvature.md) */
        const int flip = nc < nr;
        for (int64_t i = 0; i < nr; i++) {
            ra[i] = ra[ri[i]];
            for (int64_t j = 0; j < nc; j++)
                cc[flip ? j * nr + i : i * nc + j] = C[ri[i] * m + ci[j]];
        }
        for (int64_t j = 0; j < nc; j++)
            cb[j] = cb[ci[j]];
        if (!sp_reserve(&ws, nr, nc)) {
            st = MHC_ERR_OUT_OF_MEMORY;
            break;
        }
        s->w[b] = flip ? w1_solve((int)nc, (int)nr, cc, cb, ra, &ws)
                       : w1_solve((int)nr, (int)nc, cc, ra, cb, &ws);
    }
    mhc_free(buf);
    sp_release(&ws);
    return st;
}

/* masses r (n) and q (m): finite, >= 0, equal totals within 1e-6 relative */
static int masses_ok(const double *r, int64_t n, const double *q, int64_t m)
{
    double sr = 0, sc = 0;
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++) {
        ok = r[i] >= 0 && !isinf(r[i]);
        sr += r[i];
    }
    for (int64_t j = 0; j < m && ok; j++) {
        ok = q[j] >= 0 && !isinf(q[j]);
        sc += q[j];
    }
    return ok && fabs(sr - sc) <= 1e-6 * (sr > sc ? sr : sc) && isfinite(sr);
}

static int offsets_ok(const int64_t *ptr, int64_t count)
{
    if (ptr[0] != 0)
        return 0;
    for (int64_t b = 0; b < count; b++)
        if (ptr[b + 1] < ptr[b])
            return 0;
    return 1;
}

/* The problems of ctx on the threads; W1 beyond the double range is
 * MHC_ERR_COMPUTATION (err_index = the problem). */
static int ex_run(const ex_ctx *ctx, int64_t batch, int64_t total, int n_threads,
                  int64_t *err_index)
{
    const int nth = threads_for(n_threads, sat_mul(total, 64), 1 << 16);
    const int st = mhc_run_chunks(ex_chunk, ctx, batch, 1, nth, err_index);
    if (st != MHC_OK)
        return st;
    for (int64_t b = 0; b < batch; b++)     /* masses x costs beyond double range */
        if (!isfinite(ctx->w[b])) {
            if (err_index)
                *err_index = b;
            return MHC_ERR_COMPUTATION;
        }
    return MHC_OK;
}

int mhc_ot_exact_f64(const double *cost, const double *mu, const double *mv, const int64_t *rptr,
                     const int64_t *cptr, int64_t batch, int metric, double *w, int n_threads,
                     int64_t *err_index)
{
    int64_t total = 0, maxside = 0;
    if (err_index)
        *err_index = -1;
    if (!rptr || !cptr || !w)
        return MHC_ERR_NULL_POINTER;
    if (MIS(cost, double) || MIS(mu, double) || MIS(mv, double) || MIS(w, double) ||
        MIS(rptr, int64_t) || MIS(cptr, int64_t))
        return MHC_ERR_MISALIGNED;
    if (batch < 0 || n_threads < 0 || (metric != 0 && metric != 1))
        return MHC_ERR_INVALID_DIMENSION;
    if (!offsets_ok(rptr, batch) || !offsets_ok(cptr, batch))
        return MHC_ERR_INVALID_DIMENSION;
    for (int64_t b = 0; b < batch; b++) {
        int64_t nm;
        const int64_t n = rptr[b + 1] - rptr[b], m = cptr[b + 1] - cptr[b];
        if (__builtin_mul_overflow(n, m, &nm) || __builtin_add_overflow(total, nm, &total))
            return MHC_ERR_INVALID_DIMENSION;
        maxside = n + m > maxside ? n + m : maxside;
    }
    if (batch == 0)
        return MHC_OK;
    if ((!mu && rptr[batch] > 0) || (!mv && cptr[batch] > 0) || (!cost && total > 0))
        return MHC_ERR_NULL_POINTER;
    /* the solvers index with int; their workspace: ~n m + 5 (n + m) doubles */
    if (maxside > (1 << 20) || (uint64_t)batch > SIZE_MAX / sizeof(int64_t) - 1)
        return MHC_ERR_OUT_OF_MEMORY;
    int64_t *coff = mhc_malloc(((size_t)batch + 1) * sizeof(int64_t));
    if (!coff)
        return MHC_ERR_OUT_OF_MEMORY;
    coff[0] = 0;
    for (int64_t b = 0; b < batch; b++) {  /* the domain, before any write */
        const int64_t n = rptr[b + 1] - rptr[b], m = cptr[b + 1] - cptr[b];
        const double *C = cost + coff[b], *r = mu + rptr[b], *q = mv + cptr[b];
        int ok = masses_ok(r, n, q, m);
        coff[b + 1] = coff[b] + n * m;
        for (int64_t i = 0; i < n && ok; i++)
            if (r[i] > 0)
                for (int64_t j = 0; j < m && ok; j++)
                    ok = !(q[j] > 0) || isfinite(C[i * m + j]);
        if (!ok) {
            mhc_free(coff);
            if (err_index)
                *err_index = b;
            return MHC_ERR_DOMAIN;
        }
    }
    const ex_ctx ctx = {cost, mu, mv, rptr, cptr, coff, w, metric, NULL, NULL, NULL, 0};
    const int st = ex_run(&ctx, batch, total, n_threads, err_index);
    mhc_free(coff);
    return st;
}

int mhc_ot_exact_table_f64(const double *table, int64_t nt, const int64_t *X, const int64_t *Y,
                           const double *mu, const double *mv, const int64_t *rptr,
                           const int64_t *cptr, int64_t batch, int metric, double *w,
                           int n_threads, int64_t *err_index)
{
    int64_t total = 0, tt;
    if (err_index)
        *err_index = -1;
    if (!rptr || !cptr || !w)
        return MHC_ERR_NULL_POINTER;
    if (MIS(table, double) || MIS(mu, double) || MIS(mv, double) || MIS(w, double) ||
        MIS(X, int64_t) || MIS(Y, int64_t) || MIS(rptr, int64_t) || MIS(cptr, int64_t))
        return MHC_ERR_MISALIGNED;
    if (batch < 0 || nt < 0 || n_threads < 0 || (metric != 0 && metric != 1) ||
        __builtin_mul_overflow(nt, nt, &tt))
        return MHC_ERR_INVALID_DIMENSION;
    if (!offsets_ok(rptr, batch) || !offsets_ok(cptr, batch))
        return MHC_ERR_INVALID_DIMENSION;
    if (batch == 0)
        return MHC_OK;
    if ((rptr[batch] > 0 && (!mu || !X)) || (cptr[batch] > 0 && (!mv || !Y)) ||
        (tt > 0 && !table))
        return MHC_ERR_NULL_POINTER;
    for (int64_t k = 0; k < rptr[batch]; k++)   /* rows and columns of the table */
        if (X[k] < 0 || X[k] >= nt)
            return MHC_ERR_INVALID_DIMENSION;
    for (int64_t k = 0; k < cptr[batch]; k++)
        if (Y[k] < 0 || Y[k] >= nt)
            return MHC_ERR_INVALID_DIMENSION;
    for (int64_t b = 0; b < batch; b++) {
        int64_t nm;
        const int64_t n = rptr[b + 1] - rptr[b], m = cptr[b + 1] - cptr[b];
        if (__builtin_mul_overflow(n, m, &nm) || __builtin_add_overflow(total, nm, &total) ||
            n + m > (1 << 20) || nm > (int64_t)(SIZE_MAX / (4 * sizeof(double))))
            return n + m > (1 << 20) ? MHC_ERR_OUT_OF_MEMORY : MHC_ERR_INVALID_DIMENSION;
        if (!masses_ok(mu + rptr[b], n, mv + cptr[b], m)) {
            if (err_index)
                *err_index = b;
            return MHC_ERR_DOMAIN;
        }
    }
    /* the costs are checked as they are gathered (a needed one not finite:
     * MHC_ERR_DOMAIN, w partly written) */
    const ex_ctx ctx = {NULL, mu, mv, rptr, cptr, NULL, w, metric, table, X, Y, nt};
    return ex_run(&ctx, batch, total, n_threads, err_index);
}

/* ---- mhc_unit_w1_f64: unit-length graphs, fused ------------------------------ */

typedef struct {
    const int64_t *indptr, *indices, *U, *V;
    int64_t n;
    double alpha;
    double *w;
} uw_ctx;

static int uw_chunk(const void *ctx, int64_t lo, int64_t hi, int64_t *err)
{
    const uw_ctx *s = ctx;
    const int64_t *ip = s->indptr, *ix = s->indices;
    const double alpha = s->alpha;
    const size_t n = (size_t)s->n;
    sp_ws ws = {0};
    int st = MHC_OK;
    /* net mass and the edge that last touched each vertex; column masks */
    double *net = mhc_malloc(n * sizeof(double));
    int64_t *seen = mhc_malloc(n * sizeof(int64_t));
    uint64_t *bits = mhc_malloc(n * sizeof(uint64_t));
    int64_t *list = NULL, *rows = NULL, *cols = NULL;
    double *ma = NULL, *mb = NULL, *cost = NULL;
    size_t lcap = 0, ccap = 0;
    if (!net || !seen || !bits) {
        st = MHC_ERR_OUT_OF_MEMORY;
        goto out;
    }
    for (size_t k = 0; k < n; k++) {
        seen[k] = -1;
        bits[k] = 0;
    }
    for (int64_t e = lo; e < hi; e++) {
        const int64_t u = s->U[e], v = s->V[e];
        const int64_t du = ip[u + 1] - ip[u], dv = ip[v + 1] - ip[v];
        const size_t most = (size_t)(du + dv + 2);
        if (most > lcap) {
            int64_t *l = mhc_realloc(list, 3 * most * sizeof(int64_t));
            double *m2 = mhc_realloc(ma, 2 * most * sizeof(double));
            if (l)
                list = l;
            if (m2)
                ma = m2;
            if (!l || !m2) {
                st = MHC_ERR_OUT_OF_MEMORY;
                goto out;
            }
            lcap = most;
        }
        rows = list + most;
        cols = rows + most;
        mb = ma + most;
        /* the net measure m_u - m_v on the vertices of both supports */
        int64_t cnt = 0;
        const double mu_each = (1 - alpha) / (double)du, mv_each = (1 - alpha) / (double)dv;
        int adjacent = 0, bad = u == v;
#define TOUCH(x, amount)                  \
    do {                                  \
        const int64_t x_ = (x);           \
        if (seen[x_] != e) {              \
            seen[x_] = e;                 \
            net[x_] = 0;                  \
            list[cnt++] = x_;             \
        }                                 \
        net[x_] += (amount);              \
    } while (0)
        if (!bad) {
            TOUCH(u, alpha);
            for (int64_t k = ip[u]; k < ip[u + 1]; k++) {
                const int64_t x = ix[k];
                if (x == u || seen[x] == e) {  /* self loop or multi-edge */
                    bad = 1;
                    break;
                }
                adjacent |= x == v;
                TOUCH(x, mu_each);
            }
        }
        if (bad || !adjacent || du == 0 || dv == 0) {
            if (err)
                *err = e;
            st = MHC_ERR_DOMAIN;
            goto out;
        }
        TOUCH(v, -alpha);
        for (int64_t k = ip[v]; k < ip[v + 1]; k++)
            TOUCH(ix[k], -mv_each);
#undef TOUCH
        int64_t nr = 0, nc = 0;
        const double tiny = 1e-14;
        for (int64_t k = 0; k < cnt; k++) {
            const int64_t x = list[k];
            if (net[x] > tiny) {
                rows[nr] = x;
                ma[nr++] = net[x];
            } else if (net[x] < -tiny) {
                cols[nc] = x;
                mb[nc++] = -net[x];
            }
        }
        if (!nr || !nc) {
            s->w[e] = 0;
            continue;
        }
        const double *ra = ma, *cb = mb;
        if (nc < nr) {      /* the smaller side as the rows (the costs are symmetric) */
            int64_t *t = rows, nt = nr;
            rows = cols;
            cols = t;
            nr = nc;
            nc = nt;
            ra = mb;
            cb = ma;
        }
        if ((size_t)(nr * nc) > ccap) {
            double *p = mhc_realloc(cost, (size_t)(nr * nc) * sizeof(double));
            if (!p) {
                st = MHC_ERR_OUT_OF_MEMORY;
                goto out;
            }
            cost = p;
            ccap = (size_t)(nr * nc);
        }
        /* costs: 1 adjacent, 2 a common neighbour, else 3; 64 columns at a time */
        for (int64_t j0 = 0; j0 < nc; j0 += 64) {
            const int64_t j1 = j0 + 64 < nc ? j0 + 64 : nc;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t k = ip[cols[j]]; k < ip[cols[j] + 1]; k++)
                    bits[ix[k]] |= (uint64_t)1 << (j - j0);
            for (int64_t i = 0; i < nr; i++) {
                const int64_t x = rows[i];
                const uint64_t one = bits[x];
                uint64_t two = 0;
                for (int64_t k = ip[x]; k < ip[x + 1]; k++)
                    two |= bits[ix[k]];
                double *cr = cost + i * nc;
                for (int64_t j = j0; j < j1; j++) {
                    const uint64_t bit = (uint64_t)1 << (j - j0);
                    cr[j] = (one & bit) ? 1.0 : (two & bit) ? 2.0 : 3.0;
                }
            }
            for (int64_t j = j0; j < j1; j++)
                for (int64_t k = ip[cols[j]]; k < ip[cols[j] + 1]; k++)
                    bits[ix[k]] = 0;
        }
        if (!sp_reserve(&ws, nr, nc)) {
            st = MHC_ERR_OUT_OF_MEMORY;
            goto out;
        }
        s->w[e] = w1_solve((int)nr, (int)nc, cost, ra, cb, &ws);
    }
out:
    mhc_free(net);
    mhc_free(seen);
    mhc_free(bits);
    mhc_free(list);
    mhc_free(ma);
    mhc_free(cost);
    sp_release(&ws);
    return st;
}

int mhc_unit_w1_f64(const int64_t *indptr, const int64_t *indices, int64_t n, const int64_t *U,
                    const int64_t *V, int64_t edges, double alpha, double *w, int n_threads,
                    int64_t *err_index)
{
    if (err_index)
        *err_index = -1;
    if (!indptr)
        return MHC_ERR_NULL_POINTER;
    if (MIS(indptr, int64_t) || MIS(indices, int64_t) || MIS(U, int64_t) || MIS(V, int64_t) ||
        MIS(w, double))
        return MHC_ERR_MISALIGNED;
    if (n < 0 || edges < 0 || n_threads < 0 || !(alpha >= 0 && alpha < 1))
        return MHC_ERR_INVALID_DIMENSION;
    if (indptr[0] != 0)
        return MHC_ERR_INVALID_DIMENSION;
    for (int64_t v = 0; v < n; v++)
        if (indptr[v + 1] < indptr[v])
            return MHC_ERR_INVALID_DIMENSION;
    const int64_t nnz = indptr[n];
    if ((nnz > 0 && !indices) || (edges > 0 && (!U || !V || !w)))
        return MHC_ERR_NULL_POINTER;
    for (int64_t k = 0; k < nnz; k++)
        if (indices[k] < 0 || indices[k] >= n)
            return MHC_ERR_INVALID_DIMENSION;
    for (int64_t e = 0; e < edges; e++)
        if (U[e] < 0 || U[e] >= n || V[e] < 0 || V[e] >= n)
            return MHC_ERR_INVALID_DIMENSION;
    for (int64_t v = 0; v < n; v++)     /* the solver indexes a problem with int */
        if (indptr[v + 1] - indptr[v] > (1 << 20))
            return MHC_ERR_OUT_OF_MEMORY;
    if (edges == 0)
        return MHC_OK;
    if ((uint64_t)n > SIZE_MAX / 24)
        return MHC_ERR_OUT_OF_MEMORY;
    const uw_ctx ctx = {indptr, indices, U, V, n, alpha, w};
    /* work per edge ~ (du + dv)^2; a chunk allocates 24 n bytes */
    const int64_t work = sat_mul(edges, sat_mul(nnz / (n ? n : 1) + 1, 64));
    const int nth = threads_for(n_threads, work, 1 << 16);
    return mhc_run_chunks(uw_chunk, &ctx, edges, 1, nth, err_index);
}
