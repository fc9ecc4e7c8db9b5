"""Every CUDA kernel family of the cupy backend launched once, small, on CuPy
arrays: the program that .ci/gpu runs under compute-sanitizer (memcheck,
racecheck). Sinkhorn 4x4 / small / block (shared and global scalings), forward
and backward; the distances (each manifold, one-to-many and pairwise); mhc_pre
(both variants, n = 4 and n = 16), mhc_post, mhc_post_pre (out= x too), their
backwards. Exit status 0 when every call returned and the device synchronised; the
sanitizer judges the rest.
``--cpu``: the same calls on NumPy arrays through the native backend (a check of
this script where there is no GPU)."""

import sys

import numpy as np

import mhc_array as mx
from mhc_array._api import SINKHORN_BACKWARD
from mhc_array._mhc import MHC_POST_BACKWARD, MHC_PRE_BACKWARD

CPU = "--cpu" in sys.argv[1:]
if CPU:
    import types
    cp = types.SimpleNamespace(asarray=np.asarray, float32=np.float32, cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(deviceSynchronize=lambda: None)))
else:
    try:
        import cupy as cp
    except ImportError:
        sys.exit("CuPy is not installed")
    # every array its own cudaMalloc (no pool): memcheck then sees an access past
    # an allocation's end, which a pool's larger block would hide
    cp.cuda.set_allocator(None)
BACKEND = "native" if CPU else "cupy"

rng = np.random.default_rng(0)


def dev(a, dtype=np.float64):
    return cp.asarray(np.asarray(a, dtype))


def sinkhorn():
    for shape in ((64, 4, 4), (9, 3, 5), (3, 40, 33), (1, 8, 5500)):
        for dtype in (np.float32, np.float64):
            x = dev(rng.standard_normal(shape), dtype)
            mx.sinkhorn_knopp(x, logits=True, iterations=3)
            mx.sinkhorn_knopp(x, logits=True, iterations=3, order="cols-first")
            up = dev(rng.standard_normal(shape), dtype)
            SINKHORN_BACKWARD((x, None, None, up), (3, 0.0, True, "rows-first"))
    x = dev(rng.uniform(0.1, 1, (5, 3, 4)))
    mx.sinkhorn_knopp(x, row_sums=dev(rng.uniform(0.5, 2, (5, 3))), iterations=4)


def distances():
    x = dev(rng.standard_normal((50, 33)) * 0.02)
    c = dev(rng.standard_normal(33) * 0.02)
    for fn in (mx.euclidean_distance, mx.poincare_distance, mx.spherical_distance):
        fn(x, c)
        fn(x.astype(cp.float32), c.astype(cp.float32))
    mx.pairwise_distance(x[:7], x[:5])
    mx.pairwise_distance(x[:7], x[:5], manifold="poincare")


def mhc():
    for n, C in ((4, 64), (16, 5), (3, 37)):
        K = (2 + n) * n
        for variant in ("paper", "deepseek-v4"):
            for dtype in (np.float32, np.float64):
                x = dev(rng.standard_normal((2, 3, n, C)), dtype)
                w = dev(rng.standard_normal((n * C, K) if variant == "paper" else
                                            (K, n * C)) * 0.1, dtype)
                b, a = dev(rng.standard_normal(K) * 0.1, dtype), dev([0.8, 0.5, 1.3], dtype)
                h_in, h_pre, h_post, h_res = mx.mhc_pre(x, w, b, a, variant=variant)
                mx.mhc_post(x, h_in, h_post, h_res)
                mx.mhc_post_pre(x, h_in, h_post, h_res, w, b, a, variant=variant)
                mx.mhc_post_pre(x, h_in, h_post, h_res, w, b, a, variant=variant, out=x)
                ups = [dev(rng.standard_normal(s), dtype) for s in
                       ((2, 3, C), (2, 3, n), (2, 3, n), (2, 3, n, n))]
                MHC_PRE_BACKWARD((x, w, b, a, *ups), (20, 1e-6, variant, 1e-3))
                MHC_PRE_BACKWARD((x, w, b, a, ups[0], None, None, None),
                                 (20, 1e-6, variant, 1e-3))
                MHC_POST_BACKWARD((x, h_in, h_post, h_res, dev(rng.standard_normal(
                    (2, 3, n, C)), dtype)), ())


mx.reset_stats()
with mx.use_backend(BACKEND):
    sinkhorn()
    distances()
    mhc()
cp.cuda.runtime.deviceSynchronize()
used = {k: sorted(v) for k, v in mx.stats().items() if v}
print("every kernel family ran:", used)
assert all(set(v) == {BACKEND} for v in used.values()), used
