"""``estimate_curvature``: a summary of the edges' kappa and the manifold it suggests,
by a fixed rule on the median (see docs/curvature.md)."""

import numpy as np

from ._graph import host
from ._ricci import ollivier_ricci_curvature

#: thresholds on the median kappa (see docs/curvature.md)
NEGATIVE_BELOW = -0.1
POSITIVE_ABOVE = 0.25
RULE = (f"median kappa (edges at degree-1 vertices left out) < {NEGATIVE_BELOW} -> "
        f"'poincare'; > {POSITIVE_ABOVE} -> 'spherical'; otherwise 'euclidean'. Calibrated "
        f"at alpha=0.5 on trees (about -1/3), flat 4-neighbour grids (0) and coarse sphere "
        f"samples (about 0.3-0.4); dense k-NN samples (k/N large) and sample boundaries "
        f"push kappa up whatever the geometry, so 'spherical' needs a flat control at the "
        f"same N and k (docs/curvature.md)")


def estimate_curvature(points=None, /, **options):
    """Summary of ``ollivier_ricci_curvature(points, **options)`` and the manifold it
    suggests.

    Edges at a vertex of degree 1 (the leaves of a given graph; a k-NN graph has
    none) are left out of the summary: their kappa measures the graph's end, not
    its curvature (a tree's leaf edges have kappa = 1/3 at ``alpha=0.5``).

    Returns a dict: ``mean``, ``median``, ``quantiles`` (a dict {5, 25, 75, 95} ->
    kappa at that percent), ``edges`` (their number), ``suggested`` ("poincare" when
    the median kappa is clearly negative, "spherical" when clearly positive, else
    "euclidean") and ``rule`` (the thresholds, as a string). The thresholds are
    calibrated for the default ``alpha=0.5``; dense k-NN samples push kappa up, so a
    "euclidean" answer does not rule out mild negative curvature (docs/curvature.md).

    Examples
    --------
    >>> tree = np.array([(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6), (3, 7), (3, 8)])
    >>> mx.estimate_curvature(None, graph=(tree, np.ones(len(tree))))["suggested"]
    'poincare'
    """
    edges, kappa = (host(a) for a in ollivier_ricci_curvature(points, **options))
    deg = np.bincount(edges.ravel()) if edges.size else np.zeros(0, np.int64)
    leaf = (deg[edges[:, 0]] == 1) | (deg[edges[:, 1]] == 1) if edges.size else \
        np.zeros(0, bool)
    kappa = kappa[np.isfinite(kappa) & ~leaf]
    if kappa.size == 0:
        raise ValueError("the graph has no edge of positive length between vertices of "
                         "degree >= 2: no curvature to estimate")
    median = float(np.median(kappa))
    q = np.percentile(kappa, [5, 25, 75, 95])
    if median < NEGATIVE_BELOW:
        suggested = "poincare"
    elif median > POSITIVE_ABOVE:
        suggested = "spherical"
    else:
        suggested = "euclidean"
    return {"mean": float(np.mean(kappa)), "median": median,
            "quantiles": {p: float(x) for p, x in zip((5, 25, 75, 95), q)},
            "edges": int(kappa.size), "suggested": suggested, "rule": RULE}
