"""The one path every public function takes (SPEC 2.5-2.6), driven by a record.

A public function is an :class:`Op` -- a declarative record: its array
arguments and their core shapes, its options and their validators, its dtype
rule, the backend kernel that computes it and the backends that have one --
plus its docstring. Calling the record runs :func:`run`, which, for every
function alike:

1. validates the options (``_options``), naming them in errors;
2. finds the namespace and device of the arrays, one library and one device
   (``_dispatch.common_namespace``);
3. checks each array's core dimensions and element count, then the function's
   own shape relations (the record's ``shapes`` hook);
4. chooses the compute and result dtypes (``_dispatch.compute_dtype``) and
   casts the arrays (copies counted);
5. chooses the backend for the configuration in force (``select_backend``);
6. calls the backend's kernel with validated arrays and plain scalars;
7. casts the results back, writes ``out=``, records ``stats()``.

Cached plans: for the calls that dominate latency (NumPy arrays of the native
float dtypes on the native backend) the result of steps 2, 4 and 5 depends
only on the arrays' type, dtype and ndim and on the configuration, so it is
computed once per such key and kept as a *plan* -- a callable the backend
builds (``backend.plan``) that runs the kernel directly. A plan may decline a
call (returns None: an unusual layout, a shape to report) and the call then
takes the general path, which raises every error. Plans see validated options
(a dict) and the caller's ``state`` (a layer's workspace), and record no
statistics: the pipeline does both.
"""

import operator
import time
from typing import NamedTuple

from . import _config, _dispatch, _options, _stats
from ._dispatch import Call, checked_size, common_namespace, compute_dtype, select_backend
from .errors import ShapeError

_is = operator.is_
_overrides_get = _config._overrides.get
_perf = time.perf_counter
_current = _config.current

ALL_BACKENDS = ("native", "cupy", "array_api")
_RECORDS = {}  # name -> Op: records pickle by name (dask sends calls to worker processes)


class Arg(NamedTuple):
    """One array argument of a record.

    name      its name in errors (a record's ``names`` hook may rename it per call)
    core      the names of its core (last) dimensions, e.g. ``("n", "m")``: the
              generalised-ufunc signature of the argument (``mhc_array.dask`` maps
              the other, batch, axes block-wise)
    optional  None is a valid value (else None is a TypeError naming it)
    checked   the pipeline checks that it has at least ``len(core)`` dimensions;
              False: the record's ``shapes`` hook checks its shape
    """
    name: str
    core: tuple = ()
    optional: bool = False
    checked: bool = True

    @property
    def text(self):
        """The shape as errors write it: ``(..., n, m)``."""
        return "(" + ", ".join(("...",) + tuple(self.core)) + ")"


class _LastPlan(NamedTuple):
    """The plan a record used last and what it was made for: the configuration and
    the type, dtype and ndim of the first array and (two-array plans) the second."""
    config: object
    x_type: type
    x_dtype: object
    x_ndim: int
    y_type: type
    y_dtype: object
    y_ndim: int
    plan: object


_NO_PLAN = _LastPlan(None, None, None, -1, None, None, -1, None)  # matches no call


class _Counted:
    """The seconds queue of a plan that counts its own calls in ``stats()`` (the
    torch plans: a copy of narrower streams is counted as one): takes nothing."""
    __slots__ = ()

    def append(self, seconds):
        pass

    def __len__(self):
        return 0


_COUNTED = _Counted()


def _counting(plan, function, backend):
    """A plan that reports ``(result, bytes copied)`` as one that counts its calls:
    zero-copy ones like the other plans, the others as copies (``stats()``)."""
    queue = _stats.zero_copy_queue(function, backend)

    def run(arrays, options, state):
        t0 = _perf()
        done = plan(arrays, options, state)
        if done is None:
            return None
        res, copied = done
        if copied:
            _stats.record(function, backend, 1, copied, _perf() - t0)
        else:
            queue.append(_perf() - t0)
        return res
    return run


def record(name):
    """The record of the public function ``name`` (what an Op unpickles to)."""
    if name not in _RECORDS:
        import mhc_array  # noqa: F401 - defines every record
    return _RECORDS[name]


class Op:
    """One public function as data.

    name      the public name (the key of ``stats()``)
    arrays    its array arguments in positional order, each an :class:`Arg`
              (name, core dimensions, optional, checked by the pipeline or by
              ``shapes``)
    results   the core dimensions of each result (``(("n", "m"),)`` for one
              matrix per batch entry), or None where a record has no block-wise
              (dask) form
    kernel    the backend function to call:
              ``kernel(xp, *arrays, call=..., **options, **extra[, out=])``
    options   ((name, validator), ...) keyword options, validated on every call;
              the record is called as ``op(arrays, options[, out=][, state=])``
              with both as tuples in the record's order
    fixed     options the public function sets itself (not validated)
    dtype     "first": the first array's compute dtype (SPEC 2.6), the others
              only checked; "common": one dtype for all (float64 if any is);
              "coefficients": float32 (float64 for float64 or integer input)
              for every array, results in the first array's dtype; "exact":
              nothing cast, the arrays reach the kernel as given (the curvature
              kernels: float64 values and int64 indices a composite built, the
              ``shapes`` hook checks them; ``restore`` must be ())
    shapes    hook ``(xp, call, names, arrays, options, cdt) -> (arrays, extra)``
              checking the relations between shapes (and preparing arrays);
              ``extra`` are more keyword arguments for the kernel
    restore   which results go back to the result dtype: "all" (one result),
              a tuple of indices (a tuple of results), or () (none)
    out       the function takes ``out=`` for its (first) result (checked: the
              first array's shape and the result dtype); ragged: a list of arrays
              maps over its elements
    names     optional hook ``options -> array names`` (names that depend on an
              option, e.g. the mHC variant's parameter names)
    backends  the backends that implement ``kernel``; another backend chosen by
              the configuration hands the call to ``array_api``
    plan_arrays
              how many leading arrays (1 or 2; 0: no plans) key a cached plan (the
              plan gets every array and declines the calls it does not serve)
    """

    __slots__ = ("name", "arrays", "results", "kernel", "options", "fixed", "dtype", "shapes",
                 "restore", "out", "ragged", "names", "backends", "plan_arrays", "plans",
                 "_array_names", "_valid", "_last_options", "_last_plan", "_core", "_required")

    def __init__(self, name, *, arrays, kernel, results=None, options=(), fixed=None,
                 dtype="first", shapes=None, restore="all", out=False, ragged=False,
                 names=None, backends=ALL_BACKENDS, plan_arrays=0):
        self.name, self.kernel = name, kernel
        self.arrays = tuple(a if isinstance(a, Arg) else Arg(*a) for a in arrays)
        self.results = None if results is None else tuple(tuple(r) for r in results)
        self.options, self.fixed = tuple(options), dict(fixed or {})
        self.dtype, self.shapes, self.restore = dtype, shapes, restore
        self.out, self.ragged, self.names = out, ragged, names
        self.backends, self.plan_arrays = tuple(backends), plan_arrays
        _RECORDS[name] = self
        self.plans = {}
        self._valid = {}
        self._last_options = ((object(),), None)  # (options, validated): matches nothing
        self._last_plan = _NO_PLAN
        if plan_arrays not in (0, 1, 2):
            raise ValueError(f"{name}: plans are keyed by 1 or 2 arrays, not {plan_arrays}")
        self._array_names = tuple(a.name for a in self.arrays)
        # (index, min ndim, shape text) of the arrays whose core ndim the pipeline checks
        self._core = tuple((i, len(a.core), a.text) for i, a in enumerate(self.arrays)
                           if a.checked)
        self._required = tuple(i for i, a in enumerate(self.arrays) if not a.optional)

    def __repr__(self):
        return f"Op({self.name!r}, kernel={self.kernel!r})"

    def __reduce__(self):
        return record, (self.name,)

    def validate(self, options):
        """The options (a tuple, in the record's order), validated and normalised, as
        a dict with the fixed ones added."""
        return _options.validated(self, options)

    def _validated(self, options):
        """``validate(options)``, remembered: the last call's options when these are
        the very same objects (the defaults of a public function always are), else
        the last few distinct option tuples (with their types: 1, 1.0 and True are
        equal but not the same option)."""
        last = self._last_options
        if len(options) == len(last[0]) and all(map(_is, options, last[0])):
            return last[1]
        try:
            hit = self._valid.get(options)
        except TypeError:  # an unhashable value: validation reports it
            return self.validate(options)
        types = tuple(map(type, options))
        if hit is not None and hit[0] == types:
            checked = hit[1]
        else:
            checked = self.validate(options)
            if len(self._valid) >= 64:
                self._valid.clear()
            self._valid[options] = (types, checked)
        self._last_options = (options, checked)
        return checked

    def __call__(self, arrays, options=(), out=None, state=None):
        """One call: ``arrays`` and ``options`` are tuples in the record's order."""
        if self.plan_arrays and out is None:  # a cached plan, when one serves these arrays
            res = self.planned(arrays, options, state)
            if res is not None:
                return res
        return run(self, arrays, options, out, state)

    def planned(self, arrays, options=(), state=None):
        """The call served by the cached plan for these arrays, or None where no plan
        serves it (none for these arrays, or the plan declines): the caller then takes
        the general path, which checks everything and raises the errors. The frontends'
        eager decode path (``mhc_array.torch`` without gradients) calls this first."""
        k = self.plan_arrays
        if not k:
            return None
        # The last plan and options used, when the keying arrays' type, dtype and ndim,
        # the configuration and the option objects are the very same (written out
        # inline: this is the latency of every small call); else _plan and _validated
        # look them up.
        x, y, last = arrays[0], arrays[k - 1], self._last_plan
        o = _overrides_get()  # _config.current(), inline: None means the defaults
        cfg = _config._default if o is None else _current()
        if (x.__class__ is last.x_type and x.dtype is last.x_dtype
                and x.ndim == last.x_ndim and cfg is last.config
                and y.__class__ is last.y_type and y.dtype is last.y_dtype
                and y.ndim == last.y_ndim):
            plan = last.plan
        else:
            plan = self._plan(arrays)
        if not plan:
            return None
        last = self._last_options
        opts = last[1] if all(map(_is, options, last[0])) else self._validated(options)
        t0 = _perf()
        res = plan[0](arrays, opts, state)
        if res is not None:
            seconds = plan[1]
            seconds.append(_perf() - t0)
            if len(seconds) > 4096:
                _stats.fold()
        return res

    def _plan(self, arrays):
        """The cached plan for these arrays under the configuration in force, looked
        up (or made) by the keying arrays' type, dtype and ndim and the
        configuration, and remembered as the last one used; False when none serves
        them. A one-array plan keys the first array twice (x and y alike)."""
        x, y, cfg = arrays[0], arrays[self.plan_arrays - 1], _current()
        try:
            key = _LastPlan(cfg, x.__class__, x.dtype, x.ndim, y.__class__, y.dtype, y.ndim,
                            None)
        except AttributeError:  # not arrays (a list, None, ...): the general path
            return False
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._make_plan(arrays[:self.plan_arrays], cfg)
        self._last_plan = key._replace(plan=plan)
        return plan

    # ------------------------------------------------------------ plans

    def _make_plan(self, arrays, config):
        """A plan for arrays of these types, dtypes and ndims under ``config``, or
        False when such calls take the general path."""
        requested, isa, threads = config
        if requested not in ("auto", "native") or "native" not in self.backends:
            return False
        x = arrays[0]
        if type(x).__module__ == "torch" and all(type(a) is type(x) for a in arrays):
            native = _dispatch.backend("native")   # CPU tensors (the plan checks the device)
            if native.UNAVAILABLE is not None:
                return False
            fn = native.torch_plan(self.kernel, [a.dtype for a in arrays],
                                   [a.ndim for a in arrays], Call(self.name, isa, threads))
            return False if fn is None else (_counting(fn, self.name, native.NAME), _COUNTED)
        if any(type(a).__module__ != "numpy" or a.dtype.kind != "f"
               or (spec.checked and a.ndim < len(spec.core))
               for a, spec in zip(arrays, self.arrays)):
            return False
        native = _dispatch.backend("native")
        if native.UNAVAILABLE is not None or native.cannot_serve(x, "numpy", self.kernel):
            return False
        fn = native.plan(self.kernel, [a.dtype for a in arrays], [a.ndim for a in arrays],
                         Call(self.name, isa, threads))
        return False if fn is None else (fn, _stats.zero_copy_queue(self.name, native.NAME))


_ROWS_PLANS = {}   # (record, configuration, x's dtype and ndim) -> counted plan or False


def run_rows(op, arrays, options):
    """``op`` (mhc_pre, mhc_post_pre; variant deepseek-v4) with the projection in the
    paper's rows layout ``(n*C, K)`` -- a module's prepared copy of ``fn`` -- through the
    native torch plan: the result, or None where that plan does not serve the call
    (another backend forced, not CPU tensors, another dtype): the caller then makes
    its usual call with ``fn`` itself."""
    cfg = _current()
    requested, isa, threads = cfg
    x = arrays[0]
    key = (op.name, cfg, x.dtype, x.ndim)
    plan = _ROWS_PLANS.get(key)
    if plan is None:
        plan = False
        native = _dispatch.backend("native")
        if requested in ("auto", "native") and native.UNAVAILABLE is None:
            fn = native.torch_plan(op.kernel, [x.dtype], [x.ndim], Call(op.name, isa, threads),
                                   rows=True)
            if fn is not None:
                plan = _counting(fn, op.name, native.NAME)
        _ROWS_PLANS[key] = plan
    return plan(arrays, op._validated(options), None) if plan else None


def run(op, arrays, options, out=None, state=None):
    """The general path of one call of ``op`` (see the module docstring)."""
    opts = op.validate(options)
    names = op.names(opts) if op.names else op._array_names
    if op.ragged and isinstance(arrays[0], (list, tuple)) and not (
            arrays[0] and _dispatch.is_array_like(arrays[0])):   # a list of matrices
        return _ragged(op, names, arrays, options, out)
    arrays = _dispatch.from_array_likes(arrays)
    for i in op._required:
        if arrays[i] is None:
            raise _dispatch.not_an_array(names[i], None)
    xp, lib = common_namespace(zip(names, arrays) if out is None
                               else [*zip(names, arrays), ("out", out)])
    for i, min_ndim, text in op._core:
        a = arrays[i]
        if a.ndim < min_ndim:
            dims = "dimension" if min_ndim == 1 else "dimensions"
            raise ShapeError(f"{names[i]} must have shape {text} with at least {min_ndim} "
                             f"{dims}; got shape {tuple(a.shape)}")
        checked_size(a.shape, names[i])
    cdt, rdt = _dtypes(op.dtype, xp, names, arrays)
    if lib == "dask":  # lazy: the same call mapped over the blocks (mhc_array/dask.py)
        from . import dask as lazy
        _check_shapes_of(op, names, arrays, opts, cdt)
        return lazy.run(op, names, arrays, options, out, cdt, rdt)
    requested, isa, threads = _current()
    call = Call(op.name, isa, threads, state)
    extra = {}
    if op.shapes is not None:
        arrays, extra = op.shapes(xp, call, names, arrays, opts, cdt)
    if cdt is not None:  # None: the dtype rule "exact"
        arrays = [None if a is None else call.cast(xp, a, cdt) for a in arrays]
    x = arrays[0]
    if out is not None:
        if tuple(out.shape) != tuple(x.shape):
            raise ShapeError(f"out must have shape {tuple(x.shape)}; got {tuple(out.shape)}")
        if out.dtype != rdt:
            raise TypeError(f"out must have dtype {rdt}; got {out.dtype}")
    backend = select_backend(x, lib, op.kernel, requested)
    if backend.NAME not in op.backends:
        backend = _dispatch.backend("array_api")
    call.backend = backend.NAME
    if op.out:
        extra["out"] = out if (out is not None and cdt == rdt) else None
    res = getattr(backend, op.kernel)(xp, *arrays, call=call, **opts, **extra)
    if op.restore == "all":
        if res.dtype != rdt:
            res = xp.astype(res, rdt)
    elif op.restore:
        res = tuple(xp.astype(r, rdt) if i in op.restore and r.dtype != rdt else r
                    for i, r in enumerate(res))
    if out is not None:   # out= receives the (first) result
        several = isinstance(res, tuple)
        first = res[0] if several else res
        if first is not out:
            out[...] = first
        res = (out, *res[1:]) if several else out
    call.done()
    return res


def _check_shapes_of(op, names, arrays, opts, cdt):
    """The record's shape relations checked on stand-ins of the arrays' shapes (zeros
    broadcast from one element, no memory), for arrays whose values are not at hand
    (lazy arrays); skipped where a shape is unknown."""
    if op.shapes is None:
        return
    import array_api_compat.numpy as npx
    import numpy as np
    shapes = [None if a is None else tuple(a.shape) for a in arrays]
    if any(s is not None and any(not isinstance(d, int) for d in s) for s in shapes):
        return  # unknown chunk sizes: checked when the blocks are computed
    stand_ins = [None if s is None else np.broadcast_to(np.zeros((), np.dtype(cdt)), s)
                 for s in shapes]
    op.shapes(npx, Call(op.name, "auto", 1), names, stand_ins, opts, np.dtype(cdt))


def _dtypes(rule, xp, names, arrays):
    """(compute dtype, result dtype) of a call by the record's dtype rule; every
    array's dtype is checked (complex refused, naming it). (None, None) for the
    rule "exact": no cast, no check."""
    if rule == "exact":
        return None, None
    cdt, rdt = compute_dtype(xp, arrays[0], names[0])
    if rule == "common":
        for name, a in zip(names[1:], arrays[1:]):
            c, r = compute_dtype(xp, a, name)
            if c == xp.float64:
                cdt = xp.float64
            if r != rdt:
                rdt = None
        if rdt is None:
            rdt = cdt
        return cdt, rdt
    for name, a in zip(names[1:], arrays[1:]):
        if a is not None:
            compute_dtype(xp, a, name)
    if rule == "coefficients" and cdt != xp.float64 and rdt != xp.float64:
        cdt = xp.float32
    return cdt, rdt


def _ragged(op, names, arrays, options, out):
    """A list of first arrays of different shapes: the call mapped over it (the
    other array arguments and ``out`` are None or lists of the same length)."""
    xs = arrays[0]
    count = len(xs)
    for name, seq in [*zip(names[1:], arrays[1:]), ("out", out)]:
        if seq is not None and (not isinstance(seq, (list, tuple)) or len(seq) != count):
            raise TypeError(f"with a list of matrices, {name} must be None or a list of "
                            f"{count} arrays; got {type(seq).__name__}")
    if count:
        common_namespace([(f"{names[0]}[{i}]", a) for i, a in enumerate(xs)])
    return [op((a, *(None if s is None else s[i] for s in arrays[1:])), options,
               out=None if out is None else out[i])
            for i, a in enumerate(xs)]
