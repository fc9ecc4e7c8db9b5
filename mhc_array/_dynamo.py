"""The plain functions under ``torch.compile`` (SPEC 2.7): a graph break, never a
compiler error.

TorchDynamo traces the Python it meets. The frontend and the backends hand
tensors to C through DLPack and cffi, which Dynamo cannot trace (it failed with
internal errors on DLPack's device enum), so their source files are put on
Dynamo's skip list: a call from compiled code into them is a graph break, and
they run as in eager mode, with the same results. ``mhc_array.torch`` stays
traceable: its functions are custom ops that ``torch.compile(fullgraph=True)``
keeps in the graph.

Registered once torch is in use: when ``mhc_array`` is imported after torch,
when ``mhc_array.torch`` is imported, and when the frontend first meets a torch
tensor. Imports nothing of torch before the caller has.
"""

import os
import sys
import threading

_done = False
_lock = threading.Lock()

#: subpackages Dynamo may trace: ``torch`` (custom ops with fake kernels) and ``bench``
#: (its peers are torch code that ``torch.compile`` must compile to be measured; skipped,
#: their torch calls ran eagerly and "torch.compile" timed eager torch). The option
#: validators (``_options.py``) stay traceable too: ``mhc_array.torch``'s functions call them
TRACEABLE = ("torch", "bench")


def _modules():
    """The names of the frontend's modules and subpackages (bar ``TRACEABLE``), of
    the backends package and of array-api-compat, which only the frontend calls."""
    package = __package__
    here = os.path.dirname(os.path.abspath(__file__))
    names = [f"{package}.backends", "array_api_compat"]   # (its frames are ours to run)
    for entry in sorted(os.listdir(here)):
        path = os.path.join(here, entry)
        if entry.endswith(".py") and entry not in ("__init__.py", "_options.py"):
            names.append(f"{package}.{entry[:-3]}")
        elif (os.path.isfile(os.path.join(path, "__init__.py")) and entry not in TRACEABLE
              and entry != "backends"):
            names.append(f"{package}.{entry}")
    return names


def register():
    """Put the frontend's and the backends' files on Dynamo's skip list (once; a no-op
    without torch, or with a torch whose Dynamo lacks the skip list)."""
    global _done
    if _done or "torch" not in sys.modules:
        return
    with _lock:
        if _done:
            return
        _done = True
        try:
            from torch._dynamo import trace_rules
        except ImportError:  # a torch without Dynamo: nothing traces the frontend
            return
        add = getattr(trace_rules, "add", None)
        if add is None:
            return
        for name in _modules():
            add(name)
