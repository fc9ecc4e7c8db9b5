"""W2: the distances (Euclidean, Poincare, spherical) of many points to one, against
the textbook formulas in NumPy and PyTorch and SimSIMD's kernels; the latency rows
(one point, against the bare cffi call), the bandwidth row and the dimension
scaling rows of the full run; on the GPU (``gpu_rows``) the bandwidth row on CUDA
tensors."""

import math

import numpy as np

from .. import _api
from ._measure import read_floor


def _naive_distance(manifold, sqrt, acosh, acos, clip, norm):
    """The textbook formulas a user would write in one library (the peers)."""
    def euclidean(x, c):
        return sqrt(((x - c) ** 2).sum(-1))

    def poincare(x, c):
        diff = ((x - c) ** 2).sum(-1)
        z = 2 * diff / ((1 - (x * x).sum(-1)) * (1 - (c * c).sum(-1)))
        return acosh(1 + z)

    def spherical(x, c):
        return acos(clip((x * c).sum(-1) / (norm(x) * norm(c)), -1, 1))
    return {"euclidean": euclidean, "poincare": poincare, "spherical": spherical}[manifold]


def _numpy_distance(manifold):
    return _naive_distance(manifold, np.sqrt, np.arccosh, np.arccos, np.clip,
                           lambda a: np.linalg.norm(a, axis=-1))


def _torch_distance(torch, manifold):
    return _naive_distance(manifold, torch.sqrt, torch.acosh, torch.acos, torch.clamp,
                           lambda a: torch.linalg.norm(a, dim=-1))


def _simsimd_distance(simsimd, manifold, threads):
    if manifold == "euclidean":
        return lambda x, c: np.asarray(simsimd.cdist(x, c[None, :], metric="euclidean",
                                                     threads=threads))
    if manifold == "spherical":
        return lambda x, c: np.arccos(np.clip(1 - np.asarray(
            simsimd.cdist(x, c[None, :], metric="cosine", threads=threads)), -1, 1))
    return None


def _bare_distance(manifold, x, c):
    """The native kernel called directly through cffi with prepared pointers: what
    the frontend's cost per call is measured against."""
    from ..backends import native
    if native.lib is None:
        return None
    out = np.empty(x.shape[0], np.float32)
    ffi = native.ffi
    p = [ffi.from_buffer("float[]", a) for a in (x, c, out)]
    lib = native.lib
    code = getattr(lib, "MHC_" + manifold.upper())
    isa = native.ISA_CODES[native.BEST_ISA]
    return (lambda: lib.mhc_distance_f32(code, p[0], x.shape[1], p[1], 0, p[2], x.shape[0],
                                         x.shape[1], 1.0, lib.MHC_DOM_RAISE, isa, 1,
                                         ffi.NULL), ())


def _distance(s, name, rows, d, manifold):
    torch, simsimd, rng, mhc, threads = s.torch, s.simsimd, s.rng, s.mhc, s.threads
    compiled, compile_peers = s.compiled, s.compile_peers
    scale = 0.9 / math.sqrt(d) if manifold == "poincare" else 1.0
    x = (rng.standard_normal((rows, d)) * scale * 0.5).astype(np.float32)
    c = (rng.standard_normal(d) * scale * 0.5).astype(np.float32)
    cands = {} if s.gpu else {"numpy": (_numpy_distance(manifold), (x, c))}
    if torch is not None:
        tx, tc = s.tensor(x), s.tensor(c)
        cands["torch eager"] = (_torch_distance(torch, manifold), (tx, tc))
        if compile_peers and (fn := compiled(_torch_distance(torch, manifold))) is not None:
            cands["torch.compile"] = (fn, (tx, tc))
    if simsimd is not None and _simsimd_distance(simsimd, manifold, threads) is not None:
        cands["simsimd"] = (_simsimd_distance(simsimd, manifold, threads), (x, c))
    fn = {"euclidean": _api.euclidean_distance, "poincare": _api.poincare_distance,
          "spherical": _api.spherical_distance}[manifold]
    xa, ca = s.array(x), s.array(c)
    for label, ctx in mhc:
        cands[label] = (fn, (xa, ca), ctx)
    if s.gpu:
        return (name, cands, s.floor(x.nbytes + rows * 4,
                                     "one read of the points + the distances"))
    if rows == 1:  # latency: the reference is the bare cffi call, not a bandwidth
        bare = _bare_distance(manifold, x, c)
        if bare is not None:
            cands["bare cffi call"] = bare
        return (name, cands, None)
    return (name, cands, read_floor(x, 1, "one read of the points"))


def rows(s):
    work = [_distance(s, f"W2 {manifold} 1000 x 1024", 1000, 1024, manifold)
            for manifold in ("euclidean", "poincare", "spherical")]
    work.append(_distance(s, "W2 latency euclidean 1 x 1024", 1, 1024, "euclidean"))
    work.append(_distance(s, "W2 latency poincare 1 x 1024", 1, 1024, "poincare"))
    return work


def bandwidth_rows(s):
    return [_distance(s, "W2 bandwidth euclidean 100000 x 1024", 100000, 1024, "euclidean")]


def scaling_rows(s):
    """The full run's scaling in the dimension."""
    return [_distance(s, f"scaling euclidean 1000 x {d}", 1000, d, "euclidean")
            for d in (512, 1024, 2048, 4096)]


def gpu_rows():
    """The GPU run's W2: (name, build(setting, name)) -- 100000 points of dim 1024."""
    return [(f"GPU W2 bandwidth {m} 100000 x 1024",
             lambda s, name, m=m: _distance(s, name, 100000, 1024, m))
            for m in ("euclidean", "poincare", "spherical")]
