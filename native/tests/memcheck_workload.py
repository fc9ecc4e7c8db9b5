"""Native kernels exercised for valgrind memcheck (run by native/tests/memcheck.sh)."""
import numpy as np, mhc_array as mx
from mhc_array._api import SINKHORN_BACKWARD
from mhc_array._mhc import MHC_POST_BACKWARD, MHC_PRE_BACKWARD
rng = np.random.default_rng(0)
with mx.use_backend("native"):
    for isa in ("avx2", "sse", "portable"):
        with mx.use_isa(isa):
            for dt in (np.float32, np.float64):
                for shape in ((17, 4, 4), (3, 5, 7), (2, 70, 90), (1, 1, 1)):
                    x = rng.standard_normal(shape).astype(dt)
                    mx.sinkhorn_knopp(x, logits=True)
                    mx.sinkhorn_knopp(x, logits=True, order="cols-first", tau=0.1)
                    mx.sinkhorn_knopp(np.abs(x), iterations=3)
                    mx.sinkhorn_knopp(np.abs(x)[..., ::1, 1:], iterations=3)
                    SINKHORN_BACKWARD((x, None, None, x * 0.5), (5, 0.0, True, "cols-first"))
                for rows, d in ((1, 1), (33, 17), (5, 1031)):
                    p = (rng.standard_normal((rows, d)) * 0.01).astype(dt)
                    for m in ("euclidean", "poincare", "spherical"):
                        mx.geometric_distance(p, p[0], manifold=m)
                        mx.pairwise_distance(p, p[:3], manifold=m)
                        mx.geometric_distance(p * 1000, p[0], manifold=m, on_domain_error="nan")
                    try:
                        mx.poincare_distance(p * 1000, p[0])
                    except mx.DomainError:
                        pass
            with mx.use_num_threads(2):
                mx.sinkhorn_knopp(rng.standard_normal((70000, 4, 4)).astype(np.float32), logits=True)
            for dt in (np.float32, np.float64):       # the mHC connection, layers freed
                for variant in ("paper", "deepseek-v4"):
                    for n, C in ((1, 3), (4, 37), (8, 16)):
                        layer = mx.MHCLayer(n, C, variant=variant, dtype=dt, seed=1)
                        x = rng.standard_normal((21, n, C)).astype(dt)
                        for nt in (1, 2):
                            with mx.use_num_threads(nt):
                                h_in, h_pre, h_post, h_res = layer.pre(x)
                                mx.mhc_post(x, h_in, h_post, h_res)
                                mx.mhc_post(x, h_in[0], h_post, h_res, out=x)
                        mx.mhc_pre(x, layer.phi, layer.bias, layer.alpha, variant=variant)
                        ups = (h_in, h_pre, h_post, h_res)        # backward, threads 1 and 2
                        for nt in (1, 2):
                            with mx.use_num_threads(nt):
                                MHC_PRE_BACKWARD((x, layer.phi, layer.bias, layer.alpha, *ups),
                                                 (5, 1e-6, variant, 1e-6))
                                MHC_POST_BACKWARD((x, h_in, h_post, h_res, x))
                        del layer
            # curvature: batched transport and graph costs (threads 1 and 2)
            pts = rng.standard_normal((60, 3))
            for nt in (1, 2):
                with mx.use_num_threads(nt):
                    mx.ollivier_ricci_curvature(pts, k=4)
                    A = (rng.random((40, 40)) < 0.15) * rng.uniform(0.5, 2, (40, 40))
                    mx.ollivier_ricci_curvature(None, graph=np.triu(A, 1), alpha=0.0)
                    mx.ollivier_ricci_curvature(None, graph=np.triu(A, 1), reg=1e-4)
print("done")
