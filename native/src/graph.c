/*
 * graph.c -- the cost matrices of Ollivier-Ricci curvature on a given graph:
 * shortest-path distances between the supports of every edge's two measures
 * (mhc_graph_costs_f64, see mhc_native.h). Scalar code (no ISA variants): the
 * searches are memory-bound pointer chasing.
 *
 * The (edge, row) slots are grouped by their source vertex (counting sort); one
 * Dijkstra search per distinct source runs until every vertex its slots ask for is
 * settled, and fills those slots' cost rows: breadth-first when every edge has
 * the same length; Dial's buckets of width just below the shortest length when
 * the longest is at most BUCKET_SPAN times it (a bucket's vertices are then all
 * final when it is reached: no heap, no order inside a bucket; a stack of
 * entries each, a shorter path pushes a new entry and the stale one is skipped);
 * else a binary heap of (distance, vertex) entries, stale ones skipped likewise
 * (no decrease-key). The
 * arcs' lengths and heads side by side (one load per relaxation).
 * Threads split the distinct sources; each slot row is written by one search.
 */
#include "mhc_internal.h"
#include "checked.h"
#include "threads.h"

/* the longest length at most this many times the shortest: Dial's buckets */
#define BUCKET_SPAN 32

/* an arc of the graph: its length and head together, one load per relaxation */
struct arc {
    double len;
    int64_t head;
};

typedef struct {
    const int64_t *indptr, *indices;
    const double *weights;
    int64_t n;
    const int64_t *Y, *yptr;  /* edge e's targets: Y[yptr[e] .. yptr[e+1]) */
    const int64_t *src;       /* distinct sources, in slot-group order */
    const int64_t *slot_ptr;  /* group g: slots slot_ptr[g] .. slot_ptr[g+1] */
    const int64_t *slots;     /* slot k: X[k], of edge slot_edge[k] */
    const int64_t *slot_edge, *slot_out;  /* its edge, its cost row's offset in out */
    double *out;
    size_t ws_bytes;
    double unit;              /* > 0: every edge has this length (breadth-first search) */
    const struct arc *arcs;   /* else the arcs, (length, head) side by side (CSR order) */
    double delta;             /* > 0: bucket width (below the shortest length) */
    int64_t nbuckets;         /* the buckets' cycle (longest length / delta + 2) */
    size_t heap_len;          /* else the heap's room: nnz + 1 entries */
} graph_ctx;

/* A binary min-heap of (distance, vertex) entries without decrease-key: a
 * shorter path pushes a new entry and the stale one is skipped when popped (at
 * most one entry per relaxed arc, plus the source). Keys and vertices side by side:
 * no indirection through dist[] while sifting. */
typedef struct {
    double key;
    int64_t v;
} hent;

/* an entry of Dial's buckets (a stack per bucket), in the heap's room */
struct bent {
    int64_t v, next;
};

static inline void heap_push(hent *h, int64_t *len, double key, int64_t v)
{
    int64_t k = (*len)++;
    while (k > 0) {
        const int64_t p = (k - 1) / 2;
        if (h[p].key <= key)
            break;
        h[k] = h[p];
        k = p;
    }
    h[k].key = key;
    h[k].v = v;
}

static inline hent heap_pop(hent *h, int64_t *len)
{
    const hent top = h[0], x = h[--*len];
    const int64_t n = *len;
    int64_t k = 0;
    for (;;) {
        int64_t c = 2 * k + 1;
        if (c >= n)
            break;
        c += c + 1 < n && h[c + 1].key < h[c].key;
        if (h[c].key >= x.key)
            break;
        h[k] = h[c];
        k = c;
    }
    if (n > 0)
        h[k] = x;
    return top;
}

/* Sources [lo, hi) of the context; workspace: dist, and the stamps seen, done and
 * want, the breadth-first queue (n each); the heap or the buckets' entries
 * (heap_len); the buckets' heads (nbuckets). */
static int graph_chunk(const void *ctx, int64_t lo, int64_t hi, int64_t *err)
{
    const graph_ctx *g = ctx;
    const int64_t n = g->n;
    (void)err;
    char *ws = mhc_malloc(g->ws_bytes);
    if (!ws)
        return MHC_ERR_OUT_OF_MEMORY;
    double *dist = (double *)ws;
    int64_t *seen = (int64_t *)(dist + n), *done = seen + n, *want = done + n;
    int64_t *queue = want + n;
    hent *heap = (hent *)(void *)(queue + n);
    int64_t *head = (int64_t *)(void *)(heap + g->heap_len);
    for (int64_t v = 0; v < n; v++)
        seen[v] = done[v] = want[v] = -1;
    for (int64_t s = lo; s < hi; s++) {
        const int64_t x = g->src[s];
        /* the vertices asked for: the Y rows of this source's slots */
        int64_t missing = 0;
        for (int64_t k = g->slot_ptr[s]; k < g->slot_ptr[s + 1]; k++) {
            const int64_t e = g->slot_edge[g->slots[k]];
            const int64_t *y = g->Y + g->yptr[e], b = g->yptr[e + 1] - g->yptr[e];
            for (int64_t j = 0; j < b; j++)
                if (want[y[j]] != s) {
                    want[y[j]] = s;
                    missing++;
                }
        }
        if (g->unit > 0) {
            /* one length: breadth-first, a vertex is settled when first reached */
            int64_t head = 0, tail = 0;
            seen[x] = done[x] = s;
            dist[x] = 0;
            queue[tail++] = x;
            while (head < tail && missing > 0) {
                const int64_t v = queue[head++];
                if (want[v] == s)
                    missing--;
                for (int64_t e = g->indptr[v]; e < g->indptr[v + 1]; e++) {
                    const int64_t w = g->indices[e];
                    if (done[w] != s) {
                        done[w] = seen[w] = s;
                        dist[w] = dist[v] + g->unit;
                        queue[tail++] = w;
                    }
                }
            }
            goto fill;
        }
        if (g->delta > 0) {
            /* Dial's buckets of width delta < the shortest length: a vertex's
             * shortest-path predecessor lies in an earlier bucket, so a bucket's
             * vertices are all final when it is reached, in any order; and a
             * relaxation never lands in the bucket being emptied. Buckets are
             * stacks of entries (vertex, next) in a cycle of nbuckets (more than
             * the longest length spans); a shorter path pushes a new entry and the
             * old one is skipped when popped (v settled): no unlinking. At most
             * one entry per relaxed arc, plus the source (the heap's room). */
            struct bent *pool = (struct bent *)(void *)heap;   /* the heap's room */
            const double inv = 1 / g->delta;
            const int64_t B = g->nbuckets;      /* a power of two */
            int64_t live = 1, top = 1, cur = 0;
            for (int64_t b = 0; b < B; b++)
                head[b] = -1;
            seen[x] = s;
            dist[x] = 0;
            pool[0].v = x;
            pool[0].next = -1;
            head[0] = 0;
            while (live > 0 && missing > 0) {
                while (head[cur & (B - 1)] < 0)
                    cur++;
                const int64_t k = head[cur & (B - 1)], v = pool[k].v;
                head[cur & (B - 1)] = pool[k].next;
                live--;
                if (done[v] == s)
                    continue;       /* reached shorter since: settled already */
                const double dv = dist[v];
                done[v] = s;
                if (want[v] == s)
                    missing--;
                const struct arc *arc = g->arcs + g->indptr[v], *end = g->arcs + g->indptr[v + 1];
                for (; arc < end; arc++) {
                    const int64_t w = arc->head;
                    const double nd = dv + arc->len;
                    if (seen[w] != s || (nd < dist[w] && done[w] != s)) {
                        seen[w] = s;
                        dist[w] = nd;
                        const int64_t b = (int64_t)(nd * inv) & (B - 1);
                        pool[top].v = w;
                        pool[top].next = head[b];
                        head[b] = top++;
                        live++;
                    }
                }
            }
            goto fill;
        }
        /* Dijkstra from x until every asked vertex is settled (seen[v] == s: v was
         * reached in this search, done[v] == s: settled, its distance final) */
        int64_t len = 0;
        seen[x] = s;
        dist[x] = 0;
        heap_push(heap, &len, 0, x);
        while (len > 0 && missing > 0) {
            const hent top = heap_pop(heap, &len);
            const int64_t v = top.v;
            if (done[v] == s || top.key > dist[v])
                continue;           /* stale: v was settled, or reached shorter since */
            const double dv = top.key;
            done[v] = s;
            if (want[v] == s)
                missing--;
            const struct arc *arc = g->arcs + g->indptr[v], *end = g->arcs + g->indptr[v + 1];
            for (; arc < end; arc++) {
                const int64_t w = arc->head;
                const double nd = dv + arc->len;
                if (seen[w] != s || (nd < dist[w] && done[w] != s)) {
                    seen[w] = s;
                    dist[w] = nd;
                    heap_push(heap, &len, nd, w);
                }
            }
        }
    fill:
        for (int64_t k = g->slot_ptr[s]; k < g->slot_ptr[s + 1]; k++) {
            const int64_t slot = g->slots[k], e = g->slot_edge[slot];
            const int64_t *y = g->Y + g->yptr[e], b = g->yptr[e + 1] - g->yptr[e];
            double *row = g->out + g->slot_out[slot];
            for (int64_t j = 0; j < b; j++)
                row[j] = done[y[j]] == s ? dist[y[j]] : INFINITY;
        }
    }
    mhc_free(ws);
    return MHC_OK;
}

/* A pointer not aligned to its element type (C forbids dereferencing it). */
#define MIS(p, T) (((uintptr_t)(const void *)(p)) % sizeof(T) != 0)

/* ptr (count + 1) is an offset table from 0, non-decreasing; its entries index
 * vals (ptr[count] of them) that must lie in [0, n). */
static int ragged_ok(const int64_t *ptr, const int64_t *vals, int64_t count, int64_t n)
{
    if (ptr[0] != 0)
        return 0;
    for (int64_t e = 0; e < count; e++)
        if (ptr[e + 1] < ptr[e])
            return 0;
    for (int64_t k = 0; k < ptr[count]; k++)
        if (vals[k] < 0 || vals[k] >= n)
            return 0;
    return 1;
}

int mhc_graph_costs_f64(const int64_t *indptr, const int64_t *indices, const double *weights,
                        int64_t n, const int64_t *X, const int64_t *xptr, const int64_t *Y,
                        const int64_t *yptr, int64_t edges, double *out, int n_threads,
                        int64_t *err_index)
{
    int64_t nnz, ea, total = 0;
    if (err_index)
        *err_index = -1;
    if (!indptr || !xptr || !yptr)
        return MHC_ERR_NULL_POINTER;
    if (MIS(indptr, int64_t) || MIS(indices, int64_t) || MIS(weights, double) ||
        MIS(X, int64_t) || MIS(xptr, int64_t) || MIS(Y, int64_t) || MIS(yptr, int64_t) ||
        MIS(out, double))
        return MHC_ERR_MISALIGNED;
    if (n < 0 || edges < 0 || n_threads < 0)
        return MHC_ERR_INVALID_DIMENSION;
    nnz = indptr[n];
    ea = xptr[edges];
    if ((nnz > 0 && (!indices || !weights)) || (ea > 0 && !X) ||
        (yptr[edges] > 0 && !Y))
        return MHC_ERR_NULL_POINTER;
    /* the graph: indptr from 0, non-decreasing; indices in [0, n); weights > 0;
     * the supports: offset tables from 0, vertices in [0, n) */
    if (!ragged_ok(indptr, indices, n, n) || !ragged_ok(xptr, X, edges, n) ||
        !ragged_ok(yptr, Y, edges, n))
        return MHC_ERR_INVALID_DIMENSION;
    for (int64_t e = 0; e < nnz; e++)
        if (!(weights[e] > 0) || isinf(weights[e])) {
            if (err_index)
                *err_index = e;
            return MHC_ERR_DOMAIN;
        }
    for (int64_t e = 0; e < edges; e++) {   /* out holds sum a_e * b_e costs */
        int64_t ab;
        if (__builtin_mul_overflow(xptr[e + 1] - xptr[e], yptr[e + 1] - yptr[e], &ab) ||
            __builtin_add_overflow(total, ab, &total))
            return MHC_ERR_INVALID_DIMENSION;
    }
    if (total == 0)
        return MHC_OK;
    if (!out)
        return MHC_ERR_NULL_POINTER;
    /* per-thread workspace: dist, seen, done, want, queue (n each), the heap or
     * the buckets' entries (nnz + 1 of 16 bytes, unless breadth-first), the
     * buckets' heads; the arcs (nnz of 16 bytes); the slot tables: 3 * ea + 3 *
     * (n + 1) int64 */
    if ((uint64_t)n > SIZE_MAX / 48 - 2 || (uint64_t)nnz > SIZE_MAX / 64 - 1 ||
        (uint64_t)ea > SIZE_MAX / (3 * sizeof(int64_t)) - 1)
        return MHC_ERR_OUT_OF_MEMORY;
    double unit = nnz > 0 ? weights[0] : 0;     /* one length for all edges? */
    double wmin = unit, wmax = unit;
    for (int64_t e = 1; e < nnz; e++) {
        unit = weights[e] != unit ? 0 : unit;
        wmin = weights[e] < wmin ? weights[e] : wmin;
        wmax = weights[e] > wmax ? weights[e] : wmax;
    }
    /* buckets when the lengths are within a factor BUCKET_SPAN of each other (at
     * most that many empty buckets passed per vertex settled) and a distance in
     * bucket widths (below BUCKET_SPAN n) stays below 2^30: its rounding (the product
     * by the rounded inverse of delta: < 2^-21 of a width) then cannot undo the
     * margin of 1e-6 (> 2^-20) of a width between delta and the shortest length, so a
     * relaxed vertex always lands in a later bucket. The buckets' cycle: a power of
     * two (an index by a mask) */
    double delta = 0;
    int64_t nbuckets = 0;
    if (unit == 0 && nnz > 0 && wmax <= BUCKET_SPAN * wmin && n < ((int64_t)1 << 24)) {
        delta = wmin * (1 - 1e-6);
        for (nbuckets = 1; nbuckets < (int64_t)(wmax / delta) + 2; nbuckets *= 2)
            ;
    }
    size_t ws_bytes, heap_len = unit == 0 ? (size_t)nnz + 1 : 0;
    if (__builtin_add_overflow((size_t)n * 40, heap_len * sizeof(hent), &ws_bytes) ||
        __builtin_add_overflow(ws_bytes, (size_t)nbuckets * sizeof(int64_t), &ws_bytes))
        return MHC_ERR_OUT_OF_MEMORY;
    /* slots grouped by source: counting sort */
    int64_t *count = mhc_malloc(((size_t)n + 1) * sizeof(int64_t));
    int64_t *slots = mhc_malloc((size_t)(ea > 0 ? 3 * ea : 1) * sizeof(int64_t));
    int64_t *src = mhc_malloc(((size_t)n + 1) * sizeof(int64_t));
    int64_t *slot_ptr = mhc_malloc(((size_t)n + 1) * sizeof(int64_t));
    struct arc *arcs = NULL;
    int status = MHC_ERR_OUT_OF_MEMORY;
    if (!count || !slots || !src || !slot_ptr)
        goto finish;
    int64_t *slot_edge = slots + ea, *slot_out = slot_edge + ea;
    memset(count, 0, ((size_t)n + 1) * sizeof(int64_t));
    for (int64_t e = 0, off = 0; e < edges; e++) {
        const int64_t b = yptr[e + 1] - yptr[e];
        for (int64_t k = xptr[e]; k < xptr[e + 1]; k++, off += b) {
            slot_edge[k] = e;
            slot_out[k] = off;
            count[X[k] + 1]++;
        }
    }
    int64_t groups = 0;
    for (int64_t v = 0; v < n; v++) {
        if (count[v + 1] > 0) {
            src[groups] = v;
            slot_ptr[groups] = count[v];
            groups++;
        }
        count[v + 1] += count[v];
    }
    slot_ptr[groups] = ea;
    for (int64_t k = 0; k < ea; k++)
        slots[count[X[k]]++] = k;
    if (unit == 0) {
        arcs = mhc_malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(struct arc));
        if (!arcs)
            goto finish;
        for (int64_t e = 0; e < nnz; e++) {
            arcs[e].len = weights[e];
            arcs[e].head = indices[e];
        }
    }
    const graph_ctx ctx = {indptr, indices, weights, n, Y, yptr, src, slot_ptr, slots,
                           slot_edge, slot_out, out, ws_bytes, unit, arcs, delta, nbuckets,
                           heap_len};
    const int nth = threads_for(n_threads, sat_mul(groups, sat_mul(nnz, 4) + 1), 1 << 18);
    status = mhc_run_chunks(graph_chunk, &ctx, groups, 1, nth, err_index);
finish:
    mhc_free(count);
    mhc_free(slots);
    mhc_free(src);
    mhc_free(slot_ptr);
    mhc_free(arcs);
    return status;
}
