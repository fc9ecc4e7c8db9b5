"""Self-check of the native C backend (a plain script, not pytest).

Builds mhc_array._native with native/build_ffi.py into a temporary directory
(or uses --build DIR), then, for every ISA level, compares every kernel in
float32 and float64 with plain float64 / long double NumPy references, checks
the status codes and err_index, and prints timings of W1 and W2.

    python native/tests/check_native.py [--build DIR] [--no-timing]

Exit status 0 when every check passes.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

ISAS = {"avx512": 3, "avx2": 2, "sse": 1, "portable": 0}
OK, OOM, BADDIM, NULLPTR, COMP, DOMAIN = range(6)
EUC, POIN, SPH = range(3)
RAISE, NAN, CLIP = range(3)
CLIP_R = 1 - 1e-5

ffi = lib = None
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def build(outdir):
    env = dict(os.environ)
    subprocess.run([sys.executable, os.path.join(ROOT, "native", "build_ffi.py"), outdir],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    sys.path.insert(0, outdir)
    global ffi, lib
    from mhc_array._native import ffi as f, lib as l  # noqa: E402
    ffi, lib = f, l


def ptr(a):
    """cffi pointer to the first element of a (possibly strided) array."""
    ctype = "float *" if a.dtype == np.float32 else "double *"
    if a.size == 0:
        return ffi.cast(ctype, 1)
    base = a.base if a.base is not None else a
    while base.base is not None:
        base = base.base
    buf = ffi.from_buffer(ctype, base, require_writable=False)
    off = (a.__array_interface__["data"][0] - base.__array_interface__["data"][0])
    return ffi.cast(ctype, ffi.cast("char *", buf) + off)


def estr(a, axis):
    return a.strides[axis] // a.itemsize if a.shape[axis] > 1 else 0


def close(got, ref, rtol, atol=0.0):
    """Max violation ratio of |got-ref| <= atol + rtol|ref|; NaN must match NaN."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not np.array_equal(np.isnan(got), np.isnan(ref)):
        return np.inf
    m = ~np.isnan(ref)
    if not m.any():
        return 0.0
    err = np.abs(got[m] - ref[m]) / (atol + rtol * np.abs(ref[m]))
    return float(err.max())


# ---- Sinkhorn ----------------------------------------------------------------

def sk_ref(x, iters, tau, logits, cols_first, rs=None, cs=None):
    """Plain float64 Sinkhorn on (B, n, m)."""
    x = x.astype(np.float64)
    B, n, m = x.shape
    with np.errstate(all="ignore"):
        M = np.exp(x - x.max(axis=(1, 2), keepdims=True)) if logits else x.copy()
        a = np.ones((B, n)) if rs is None else np.broadcast_to(rs, (B, n)).astype(np.float64)
        b = np.full((B, m), n / m) if cs is None else np.broadcast_to(cs, (B, m)).astype(np.float64)
        for _ in range(iters):
            for side in ((1, 0) if cols_first else (0, 1)):
                if side == 0:
                    s = M.sum(axis=2, keepdims=True) + tau
                    M = M * np.where(s != 0, a[:, :, None] / s, 0)
                else:
                    s = M.sum(axis=1, keepdims=True) + tau
                    M = M * np.where(s != 0, b[:, None, :] / s, 0)
    return M


def sk_call(x, out, iters, tau, flags, isa, rs=None, cs=None, n_threads=1):
    """x, out: (B, n, m) views with a contiguous last axis."""
    fn = lib.mhc_sinkhorn_f32 if x.dtype == np.float32 else lib.mhc_sinkhorn_f64
    B, n, m = x.shape
    err = ffi.new("int64_t *")
    null = ffi.NULL
    st = fn(ptr(x), estr(x, 0), estr(x, 1), ptr(out), estr(out, 0), estr(out, 1), B, n, m,
            ptr(rs) if rs is not None else null, estr(rs, 0) if rs is not None and rs.ndim == 2 else 0,
            ptr(cs) if cs is not None else null, estr(cs, 0) if cs is not None and cs.ndim == 2 else 0,
            iters, tau, flags, isa, n_threads, err)
    return st, err[0]


def strided(shape, dtype, rng, pad=3, fill=None):
    """A (B, n, m) view with row stride m + pad and batch stride > n*(m+pad)."""
    B, n, m = shape
    base = np.full((B, n + 1, m + pad), np.nan, dtype=dtype)
    v = base[:, :n, :m]
    v[...] = rng.standard_normal(shape) if fill is None else fill
    return v


def check_sinkhorn(isa_name, isa, rng):
    tol = {np.float32: 2e-5, np.float64: 1e-12}
    shapes = [(4096, 4, 4), (17, 4, 4), (5, 1, 1), (9, 3, 5), (6, 7, 13), (3, 8, 8), (3, 9, 8)]
    for dt in (np.float32, np.float64):
        rt = tol[dt]
        for shape in shapes + [(2, 512, 1024)]:
            big = shape[1] * shape[2] > 10000
            combos = [(it, lg, cf, tau) for it in (0, 1, 20) for lg in (0, 1) for cf in (0, 1)
                      for tau in (0.0, 0.1)]
            if big:
                combos = [(20, 1, 0, 0.0), (20, 0, 1, 0.1), (0, 1, 0, 0.0), (1, 1, 1, 0.0)]
            for it, lg, cf, tau in combos:
                x = rng.standard_normal(shape).astype(dt)
                if not lg:
                    x = np.abs(x)
                if shape[0] > 2 and shape[1] > 1 and not big:
                    x[1, 0, :] = 0          # a zero row
                    x[2, :, 0] = 0          # a zero column
                out = np.empty_like(x)
                st, _ = sk_call(x, out, it, tau, lg | (cf << 1), isa)
                ref = sk_ref(x, it, tau, lg, cf)
                e = close(out, ref, rt, rt * 1e-2 * (1 if dt == np.float32 else 1e-3))
                check(st == OK and e <= 1, f"{isa_name} sk {dt.__name__} {shape} it={it} logits={lg} "
                      f"cols_first={cf} tau={tau}: st={st} err={e:.3g}")
        # targets: per-batch and broadcast, strided rows, in place
        for shape in [(33, 4, 4), (5, 3, 6), (3, 20, 30)]:
            B, n, m = shape
            for bcast in (0, 1):
                rs = (rng.random((1 if bcast else B, n)) + 0.5).astype(dt)
                cs = (rng.random((1 if bcast else B, m)) + 0.5).astype(dt)
                cs *= rs.sum(1, keepdims=True) / cs.sum(1, keepdims=True)
                rsa, csa = (rs[0], cs[0]) if bcast else (rs, cs)
                x = strided(shape, dt, rng)
                out = strided(shape, dt, rng, pad=5)
                st, _ = sk_call(x, out, 20, 0.0, 1, isa, rsa, csa)
                ref = sk_ref(x, 20, 0.0, 1, 0, rs, cs)
                e = close(out, ref, rt, rt * 1e-2)
                check(st == OK and e <= 1, f"{isa_name} sk targets {dt.__name__} {shape} bcast={bcast} err={e:.3g}")
                x2 = strided(shape, dt, rng)
                ref = sk_ref(x2, 7, 0.05, 1, 1, rs, cs)
                st, _ = sk_call(x2, x2, 7, 0.05, 3, isa, rsa, csa)       # in place
                e = close(x2, ref, rt, rt * 1e-2)
                check(st == OK and e <= 1, f"{isa_name} sk in-place {dt.__name__} {shape} err={e:.3g}")
                x3 = np.abs(strided(shape, dt, rng))
                ref = sk_ref(x3, 3, 0.0, 0, 0)
                st, _ = sk_call(x3, x3, 3, 0.0, 0, isa)                  # in place, non-logits
                e = close(x3, ref, rt, rt * 1e-2)
                check(st == OK and e <= 1, f"{isa_name} sk in-place raw {dt.__name__} {shape} err={e:.3g}")
        # NaN in one matrix: that matrix all NaN, the others untouched by it
        for shape in [(20, 4, 4), (4, 30, 40)]:
            for lg in (0, 1):
                x = rng.standard_normal(shape).astype(dt)
                if not lg:
                    x = np.abs(x)
                x[2, 1, 2] = np.nan
                out = np.empty_like(x)
                st, _ = sk_call(x, out, 5, 0.0, lg, isa)
                ref = sk_ref(x, 5, 0.0, lg, 0)
                check(st == OK and np.isnan(out[2]).all() and close(out, ref, rt, rt * 1e-2) <= 1,
                      f"{isa_name} sk NaN {dt.__name__} {shape} logits={lg}")
        # negative entry: DOMAIN, first flat index, nothing written
        x = np.abs(rng.standard_normal((10, 5, 6))).astype(dt)
        x[7, 2, 3] = -1
        x[8, 0, 0] = -2
        out = np.full_like(x, 42)
        st, ei = sk_call(x, out, 3, 0.0, 0, isa)
        check(st == DOMAIN and ei == 7 * 30 + 2 * 6 + 3 and (out == 42).all(),
              f"{isa_name} sk domain {dt.__name__}: st={st} err_index={ei}")
        # threads: same result, first error index
        x = rng.standard_normal((4096, 4, 4)).astype(dt)
        o1, o2 = np.empty_like(x), np.empty_like(x)
        sk_call(x, o1, 20, 0.0, 1, isa)
        st, _ = sk_call(x, o2, 20, 0.0, 1, isa, n_threads=2)
        check(st == OK and np.array_equal(o1, o2), f"{isa_name} sk threads {dt.__name__}")
        x = np.abs(x)
        x[3000, 1, 1] = -1
        st, ei = sk_call(x, o2, 20, 0.0, 0, isa, n_threads=2)
        check(st == DOMAIN and ei == 3000 * 16 + 5, f"{isa_name} sk threads domain {dt.__name__}")


# ---- distances ---------------------------------------------------------------

def dist_ref(manifold, x, c, K=1.0, mode=RAISE):
    """Reference in long double; NaN where a domain error is (nan mode)."""
    x = np.asarray(x, dtype=np.longdouble)
    c = np.asarray(c, dtype=np.longdouble)
    x, c = np.broadcast_arrays(x, c)
    with np.errstate(all="ignore"):
        if manifold == EUC:
            return np.sqrt(((x - c) ** 2).sum(-1))
        xx = (x * x).sum(-1)
        cc = (c * c).sum(-1)
        if manifold == POIN:
            K = np.longdouble(K)
            R2 = np.longdouble(CLIP_R) ** 2
            if mode == CLIP:
                sx = np.where(K * xx >= R2, np.sqrt(R2 / (K * xx)), 1)
                sc = np.where(K * cc >= R2, np.sqrt(R2 / (K * cc)), 1)
                x = x * sx[..., None]
                c = c * sc[..., None]
                xx = (x * x).sum(-1)
                cc = (c * c).sum(-1)
            dd = ((x - c) ** 2).sum(-1)
            z = 2 * K * dd / ((1 - K * xx) * (1 - K * cc))
            r = np.log1p(z + np.sqrt(z * (z + 2))) / np.sqrt(K)
            return np.where((K * xx < 1) & (K * cc < 1), r, np.nan)
        xh = x / np.sqrt(xx)[..., None]
        ch = c / np.sqrt(cc)[..., None]
        r = 2 * np.arctan2(np.sqrt(((xh - ch) ** 2).sum(-1)), np.sqrt(((xh + ch) ** 2).sum(-1)))
        return np.where((xx > 0) & (cc > 0), r, np.nan)


def dist_call(manifold, x, c, K=1.0, mode=RAISE, isa=0, n_threads=1):
    """x (rows, d) view; c (rows, d) view or (d,) (stride 0)."""
    fn = lib.mhc_distance_f32 if x.dtype == np.float32 else lib.mhc_distance_f64
    rows, d = x.shape
    out = np.full(rows, 42, dtype=x.dtype)
    err = ffi.new("int64_t *")
    cr = estr(c, 0) if c.ndim == 2 else 0
    st = fn(manifold, ptr(x), estr(x, 0), ptr(c), cr, ptr(out), rows, d, K, mode, isa,
            n_threads, err)
    return st, err[0], out


def pair_call(manifold, x, y, K=1.0, mode=RAISE, isa=0, n_threads=1):
    fn = lib.mhc_pairwise_f32 if x.dtype == np.float32 else lib.mhc_pairwise_f64
    out = np.full((x.shape[0], y.shape[0]), 42, dtype=x.dtype)
    err = ffi.new("int64_t *")
    st = fn(manifold, ptr(x), x.shape[0], estr(x, 0), ptr(y), y.shape[0], estr(y, 0),
            x.shape[1], ptr(out), K, mode, isa, n_threads, err)
    return st, err[0], out


def rows_view(a, pad, rng):
    """a copied into a row-strided view (row stride d + pad)."""
    base = rng.standard_normal((a.shape[0], a.shape[1] + pad)).astype(a.dtype)
    v = base[:, :a.shape[1]]
    v[...] = a
    return v


def ball_points(rows, d, K, rng, dt, radius=None):
    x = rng.standard_normal((rows, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r = rng.uniform(0, 0.95, (rows, 1)) if radius is None else radius
    return (x * r / np.sqrt(K)).astype(dt)


def check_distances(isa_name, isa, rng):
    from scipy.spatial.distance import cdist
    tol = {np.float32: 1e-5, np.float64: 1e-12}
    for dt in (np.float32, np.float64):
        rt = tol[dt]
        for d in (1, 3, 15, 16, 17, 1024, 1031):
            rows = 40
            for K in (1.0, 0.37):
                cases = {}
                x = rng.standard_normal((rows, d)).astype(dt)
                noise = rng.standard_normal((rows, d))
                cases["random"] = (x, rng.standard_normal((rows, d)).astype(dt))
                cases["tiny"] = (x, (x + 1e-4 * noise).astype(dt))
                cases["scaled-tiny"] = (x, (3 * x + 1e-4 * noise).astype(dt))
                cases["antipodal"] = (x, (-2 * x + 1e-4 * noise).astype(dt))
                xb = ball_points(rows, d, K, rng, dt)
                cases["ball"] = (xb, ball_points(rows, d, K, rng, dt))
                edge = ball_points(rows, d, K, rng, dt, radius=np.sqrt(1 - 1e-4))
                cases["edge"] = (edge, ball_points(rows, d, K, rng, dt, radius=np.sqrt(1 - 1e-4)))
                cases["edge-tiny"] = (edge, (edge * (1 - 1e-6) + 1e-6 * noise / np.sqrt(d * K)).astype(dt))
                for name, (a, b) in cases.items():
                    for man in (EUC, POIN, SPH):
                        if man == POIN and name in ("random", "tiny", "scaled-tiny", "antipodal"):
                            sc = 2 * np.sqrt(K) * max(np.abs(a).max(), np.abs(b).max()) * np.sqrt(d)
                            a2, b2 = (a / sc).astype(dt), (b / sc).astype(dt)
                        else:
                            a2, b2 = a, b
                        if man != POIN and K != 1.0:
                            continue
                        ref = dist_ref(man, a2, b2, K)
                        for layout in range(3):
                            xa, ca = a2, b2
                            if layout == 1:
                                xa, ca = rows_view(a2, 5, rng), rows_view(b2, 2, rng)
                            elif layout == 2:
                                ca = b2[0]
                            r = ref if layout != 2 else dist_ref(man, a2, b2[0], K)
                            st, ei, out = dist_call(man, xa, ca, K, RAISE, isa)
                            e = close(out, r, rt, 1e-300 if man != SPH else rt * 1e-6)
                            check(st == OK and e <= 1, f"{isa_name} dist {dt.__name__} man={man} d={d} "
                                  f"K={K} {name} layout={layout}: st={st} ei={ei} err={e:.3g}")
        # domain errors, nan / clip modes, non-finite input, threads
        for d in (3, 16, 1031):
            rows = 30
            K = 2.0
            x = ball_points(rows, d, K, rng, dt)
            c = ball_points(rows, d, K, rng, dt)
            x[7] = x[7] / np.linalg.norm(x[7].astype(np.float64)) * 1.2 / np.sqrt(K)
            c[12] = c[12] / np.linalg.norm(c[12].astype(np.float64)) * 1.0000001 / np.sqrt(K)
            x[20] = x[20] / np.linalg.norm(x[20].astype(np.float64)) * (1 - 3e-6) / np.sqrt(K)
            x[21] = x[21] / np.linalg.norm(x[21].astype(np.float64)) * (1 - 1e-3) / np.sqrt(K)
            x[25, 0] = np.nan
            c[26, 0] = np.inf
            st, ei, out = dist_call(POIN, x, c, K, RAISE, isa)
            check(st == DOMAIN and ei == 7, f"{isa_name} poincare raise {dt.__name__} d={d}: st={st} ei={ei}")
            st, ei, out = dist_call(POIN, x, c, K, NAN, isa)
            ref = dist_ref(POIN, x, c, K, NAN)
            check(st == OK and np.isnan(out[[7, 12, 25, 26]]).all() and close(out, ref, rt) <= 1,
                  f"{isa_name} poincare nan {dt.__name__} d={d}")
            st, ei, out = dist_call(POIN, x, c, K, CLIP, isa)
            ref = dist_ref(POIN, x, c, K, CLIP)
            e = close(out, ref, rt)
            check(st == OK and e <= 1 and np.isfinite(out[[7, 12, 20]]).all(),
                  f"{isa_name} poincare clip {dt.__name__} d={d} err={e:.3g}")
            s = rng.standard_normal((rows, d)).astype(dt)
            t = rng.standard_normal((rows, d)).astype(dt)
            s[3] = 0
            t[9] = 0
            s[11, 1 % d] = np.inf
            st, ei, out = dist_call(SPH, s, t, 1.0, RAISE, isa)
            check(st == DOMAIN and ei == 3, f"{isa_name} sphere raise {dt.__name__} d={d}: st={st} ei={ei}")
            for mode in (NAN, CLIP):
                st, ei, out = dist_call(SPH, s, t, 1.0, mode, isa)
                ref = dist_ref(SPH, s, t)
                check(st == OK and np.isnan(out[[3, 9, 11]]).all() and close(out, ref, rt) <= 1,
                      f"{isa_name} sphere mode={mode} {dt.__name__} d={d}")
            st, ei, out = dist_call(EUC, s, t, 1.0, RAISE, isa)
            ref = dist_ref(EUC, s, t)
            ref[11] = np.nan                        # non-finite input gives NaN
            check(st == OK and np.isnan(out[11]) and close(out, ref, rt) <= 1,
                  f"{isa_name} euclid nonfinite {dt.__name__} d={d}")
        # threads: large enough to split; first bad row in the second chunk
        x = ball_points(3000, 512, 1.0, rng, dt)
        c = ball_points(1, 512, 1.0, rng, dt)[0]
        for man in (EUC, POIN, SPH):
            st1, _, o1 = dist_call(man, x, c, 1.0, RAISE, isa, 1)
            st2, _, o2 = dist_call(man, x, c, 1.0, RAISE, isa, 2)
            check(st1 == st2 == OK and np.array_equal(o1, o2), f"{isa_name} dist threads {dt.__name__} man={man}")
        x[2500] *= 2 / np.linalg.norm(x[2500])
        x[2900] *= 2 / np.linalg.norm(x[2900])
        st, ei, _ = dist_call(POIN, x, c, 1.0, RAISE, isa, 2)
        check(st == DOMAIN and ei == 2500, f"{isa_name} dist threads domain {dt.__name__}: {st} {ei}")
        # pairwise
        for d in (3, 17, 64):
            xs = rng.standard_normal((23, d)).astype(dt)
            ys = rows_view(rng.standard_normal((31, d)).astype(dt), 3, rng)
            st, ei, out = pair_call(EUC, xs, ys, isa=isa)
            e = close(out, cdist(xs.astype(np.float64), ys.astype(np.float64)), max(rt, 1e-6 if dt == np.float32 else 1e-12))
            check(st == OK and e <= 1, f"{isa_name} pairwise cdist {dt.__name__} d={d} err={e:.3g}")
            for man, K in ((POIN, 0.5), (SPH, 1.0)):
                px = ball_points(23, d, K, rng, dt)
                py = rows_view(ball_points(31, d, K, rng, dt), 3, rng)
                st, ei, out = pair_call(man, px, py, K, isa=isa)
                ref = dist_ref(man, px[:, None, :], py[None, :, :], K)
                e = close(out, ref, rt)
                check(st == OK and e <= 1, f"{isa_name} pairwise man={man} {dt.__name__} d={d} err={e:.3g}")
            py = np.ascontiguousarray(py)
            py[4] *= 3 / np.linalg.norm(py[4])
            px[9] *= 3 / np.linalg.norm(px[9])
            st, ei, out = pair_call(POIN, px, py, 0.5, isa=isa)
            check(st == DOMAIN and ei == 4, f"{isa_name} pairwise domain {dt.__name__}: {st} {ei}")
            st, ei, out = pair_call(POIN, px, py, 0.5, isa=isa, n_threads=2)
            check(st == DOMAIN and ei == 4, f"{isa_name} pairwise domain threads {dt.__name__}: {st} {ei}")


def check_abi():
    """Argument validation at the ABI (isa-independent)."""
    x = np.ones((2, 3, 3), np.float32)
    err = ffi.new("int64_t *")
    f = lib.mhc_sinkhorn_f32
    check(f(ffi.NULL, 9, 3, ptr(x), 9, 3, 2, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, err) == NULLPTR, "null x")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, -1, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, err) == BADDIM, "neg batch")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 2, 3, 3, ffi.NULL, 0, ffi.NULL, 0, -5, 0.0, 0, -1, 1, err) == BADDIM, "neg iters")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 2, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, -1.0, 0, -1, 1, err) == BADDIM, "neg tau")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 2, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, -1, err) == BADDIM, "neg threads")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 2**40, 2**20, 2**20, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, err) == BADDIM, "overflow")
    check(f(ptr(x), 2**62, 3, ptr(x), 9, 3, 3, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, err) == BADDIM, "stride overflow")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 0, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, err) == OK and err[0] == -1, "empty batch")
    check(f(ptr(x), 9, 3, ptr(x), 9, 3, 2, 3, 3, ffi.NULL, 0, ffi.NULL, 0, 5, 0.0, 0, -1, 1, ffi.NULL) == OK, "NULL err_index")
    d = lib.mhc_distance_f32
    o = np.empty(3, np.float32)
    check(d(EUC, ptr(x), 3, ffi.NULL, 0, ptr(o), 3, 3, 1.0, 0, -1, 1, err) == NULLPTR, "dist null")
    check(d(POIN, ptr(x), 3, ptr(x), 0, ptr(o), 3, 3, -1.0, 0, -1, 1, err) == BADDIM, "dist curvature")
    check(d(7, ptr(x), 3, ptr(x), 0, ptr(o), 3, 3, 1.0, 0, -1, 1, err) == BADDIM, "dist manifold")
    check(d(EUC, ptr(x), 3, ptr(x), 0, ptr(o), -3, 3, 1.0, 0, -1, 1, err) == BADDIM, "dist rows")
    check(d(EUC, ptr(x), 3, ptr(x), 0, ptr(o), 0, 3, 1.0, 0, -1, 1, err) == OK, "dist empty")
    p = lib.mhc_pairwise_f32
    check(p(EUC, ptr(x), 2**40, 0, ptr(x), 2**40, 0, 3, ptr(o), 1.0, 0, -1, 1, err) == BADDIM, "pair overflow")
    bits = lib.mhc_cpu_feature_bits()
    best = lib.mhc_best_isa()
    check(lib.mhc_resolve_isa(-1) == best and lib.mhc_resolve_isa(99) == best and lib.mhc_resolve_isa(0) == 0,
          "resolve_isa")
    print(f"build: {ffi.string(lib.mhc_build_info()).decode()}; version {ffi.string(lib.mhc_version()).decode()}; "
          f"features 0x{bits:x}; best isa {best}")


def bench(fn, reps=7):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return np.median(ts)


def timings(rng):
    best = lib.mhc_best_isa()
    x = rng.standard_normal((4096, 4, 4)).astype(np.float32)
    out = np.empty_like(x)
    print(f"timings (best isa {best}), median of 7:")
    for nt in (1, 2):
        t = bench(lambda: sk_call(x, out, 20, 0.0, 1, best, n_threads=nt))
        print(f"  W1  sinkhorn 4096x4x4 f32 logits 20 it, {nt} thread(s): {t * 1e6:9.1f} us")
    t = bench(lambda: sk_ref(x, 20, 0.0, 1, 0), 3)
    print(f"      (numpy float64 reference: {t * 1e6:9.1f} us)")
    xb = rng.standard_normal((8, 512, 1024)).astype(np.float32)
    ob = np.empty_like(xb)
    for nt in (1, 2):
        t = bench(lambda: sk_call(xb, ob, 10, 0.0, 1, best, n_threads=nt), 3)
        print(f"  W1b sinkhorn 8x512x1024 f32 logits 10 it, {nt} thread(s): {t * 1e6:9.1f} us")
    xs = ball_points(1000, 1024, 1.0, rng, np.float32)
    c = ball_points(1, 1024, 1.0, rng, np.float32)[0]
    for man, name in ((EUC, "euclidean"), (POIN, "poincare"), (SPH, "spherical")):
        for nt in (1, 2):
            t = bench(lambda: dist_call(man, xs, c, 1.0, RAISE, best, nt), 21)
            print(f"  W2  {name:9s} 1000x1024 f32 -> 1 point, {nt} thread(s): {t * 1e6:9.1f} us "
                  f"({xs.nbytes / t / 1e9:5.1f} GB/s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=None, help="existing build dir (skip building)")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    if args.build:
        sys.path.insert(0, args.build)
        global ffi, lib
        from mhc_array._native import ffi as f, lib as l  # noqa: E402
        ffi, lib = f, l
    else:
        import tempfile
        build(tempfile.mkdtemp(prefix="mhcbuild"))
    check_abi()
    best = lib.mhc_best_isa()
    for name, isa in ISAS.items():
        rng = np.random.default_rng(1234)
        n0 = len(failures)
        c0 = checks
        check_sinkhorn(name, isa, rng)
        check_distances(name, isa, rng)
        ran = lib.mhc_resolve_isa(isa)
        note = "" if ran == isa else f" (not supported here: ran level {ran})"
        print(f"isa {name}{note}: {checks - c0} checks, "
              f"{'PASS' if len(failures) == n0 else f'FAIL ({len(failures) - n0})'}")
    if not args.no_timing:
        timings(np.random.default_rng(7))
    print(f"{checks} checks, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
