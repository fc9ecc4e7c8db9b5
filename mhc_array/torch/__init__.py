"""PyTorch integration (SPEC 2.7): differentiable functions for torch tensors,
registered as ``torch.library`` custom ops with fake kernels, so that they run
under ``torch.compile(fullgraph=True)`` without graph breaks.

Imported only when used (``import mhc_array`` does not import torch)::

    import mhc_array.torch as mt
    P = mt.sinkhorn_knopp(logits, logits=True)   # differentiable w.r.t. logits
    P.sum().backward()

The ops compute through the library's pipeline (``mhc_array``'s configuration
chooses the backend: ``native`` for CPU tensors, ``array_api`` elsewhere);
float16/bfloat16 are computed in float32 and returned in the input dtype.
Their results are fresh tensors (never an input or a view of one).

Modules (this file only re-exports their public names):

- ``_common``: the helpers every op uses (fresh results, detached inputs,
  argument checks, gradients summed over broadcast axes);
- ``_sinkhorn``: ``mhc_array::sinkhorn_knopp`` and its backward
  ``mhc_array::sinkhorn_knopp_backward``;
- ``_distances``: ``mhc_array::distance`` and ``mhc_array::pairwise_distance``
  (the distances of SPEC 2.2, differentiable w.r.t. both point arguments; their
  backwards are analytic formulas in torch operations);
- ``_mhc``: ``mhc_array::mhc_pre`` / ``mhc_post`` and their backwards (the mHC
  connection, SPEC 2.3);
- ``_modules``: the ``nn.Module``s ``MHCConnection``, ``DeepseekV4Connection``,
  ``DeepseekV4Head``;
- ``_replace``: ``replace_hyper_connections`` (a transformers DeepSeek-V4 model
  onto these modules).
"""

from ._distances import (euclidean_distance, geometric_distance, pairwise_distance,
                         poincare_distance, spherical_distance)
from ._mhc import mhc_post, mhc_post_pre, mhc_pre
from ._modules import DeepseekV4Connection, DeepseekV4Head, MHCConnection
from ._replace import replace_hyper_connections
from ._sinkhorn import sinkhorn_knopp

__all__ = ["sinkhorn_knopp", "euclidean_distance", "poincare_distance", "spherical_distance",
           "geometric_distance", "pairwise_distance", "mhc_pre", "mhc_post", "mhc_post_pre",
           "MHCConnection",
           "DeepseekV4Connection", "DeepseekV4Head", "replace_hyper_connections"]

from .. import _dynamo  # noqa: E402 - the plain functions under torch.compile

_dynamo.register()
