"""Ollivier-Ricci curvature of a point cloud's k-NN graph (or of a given graph), and
the manifold it suggests (SPEC 2.4). See docs/curvature.md.

A composite of records: the graph is built here (``_graph``: the k-NN graph by
``pairwise_distance`` in row blocks, or a given graph, in CSR form), and each chunk
of edges is one ragged batch through the kernel records of ``_kernels`` -- costs
(``graph_costs``: shortest paths, ``point_costs``: manifold distances) and W1
(``ot_w1``) -- which the backend in force runs (``_ricci``). ``_summary`` turns
the edges' kappa into a suggested manifold. Results in the points' library (NumPy
for a given graph).
"""

from ._ricci import ollivier_ricci_curvature
from ._summary import estimate_curvature

__all__ = ["estimate_curvature", "ollivier_ricci_curvature"]
