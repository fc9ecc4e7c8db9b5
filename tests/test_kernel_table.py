"""The kernels by name, checked where a mistake would otherwise only show at run time.

C: the per-ISA kernel table (native/src/mhc_internal.h, dispatch.c) is generated from
one list, MHC_KERNEL_LIST; every entry is defined by the family files for its
element types, every kernel they define is listed, and the compiled module holds
each entry once per ISA level.

Python: every record names a backend function (``record.kernel``) and the backends
that have it (``record.backends``); each of those backends defines it with the
parameters of the reference, ``array_api`` (the backend every other one hands a
call to): the same number of positional parameters and the same keyword names.
"""

import ast
import importlib.util
import inspect
import os
import platform
import re
import shutil
import subprocess

import pytest

import mhc_array  # noqa: F401 - defines the records
from mhc_array import _dispatch, _pipeline

if importlib.util.find_spec("torch") is not None:
    import mhc_array.torch  # noqa: F401 - may define more records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "native", "src")
ISAS = ("portable", "sse", "avx2", "avx512")
SUFFIXES = ("f32", "f64")


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _plain(text):
    """C text with its line continuations joined and its comments removed."""
    return re.sub(r"/\*.*?\*/", " ", text.replace("\\\n", " "), flags=re.S)


def _macro(text, name):
    """The body of the function-like macro ``name`` in (plain) ``text``."""
    m = re.search(r"^#define %s\(([^)]*)\)(.*)$" % name, text, re.M)
    assert m, f"no macro {name}"
    return m.group(2)


def _entries(body):
    """The names of the X(isa, name, ...) entries of a list macro's body."""
    return [re.sub(r"\s", "", n) for n in re.findall(r"\bX\(\s*isa\s*,\s*([\w#\s]+?)\s*,", body)]


def kernel_list():
    """The entries of MHC_KERNEL_LIST: ``mhc_<name>_<isa>`` is each level's function."""
    text = _plain(_read("native", "src", "mhc_internal.h"))
    typed, full = _macro(text, "MHC_KERNELS_T"), _macro(text, "MHC_KERNEL_LIST")
    types = re.findall(r"MHC_KERNELS_T\(\s*X\s*,\s*isa\s*,\s*(\w+)\s*,\s*(\w+)\s*\)", full)
    assert [sfx for _, sfx in types] == list(SUFFIXES), types
    names = [n.replace("##SFX", sfx) for _, sfx in types for n in _entries(typed)]
    names += _entries(full)
    assert all(re.fullmatch(r"\w+_f(32|64)", n) for n in names), names
    assert len(set(names)) == len(names), names
    return names


def defined_kernels():
    """{(base, suffix)} of the kernels the family files define (``KFN(mhc_<base>)``),
    for the element types the #if T_IS_F32 blocks around each definition allow."""
    family = re.findall(r'#include "(\w+_t\.inc)"', _read("native", "src", "kernels_t.inc"))
    found = set()
    for f in family:
        conditions = []
        for line in _plain(_read("native", "src", f)).splitlines():
            d = line.strip()
            m = re.match(r"#\s*if(n?def)?\s+(.*)", d)
            if m:
                conditions.append(("!" if m.group(1) == "ndef" else "") + m.group(2).strip())
            elif re.match(r"#\s*else", d):
                top = conditions[-1]
                conditions[-1] = top[1:] if top.startswith("!") else "!" + top
            elif re.match(r"#\s*elif", d):
                conditions[-1] = "?"
            elif re.match(r"#\s*endif", d):
                conditions.pop()
            for base in re.findall(r"\bKFN\(mhc_(\w+)\)\s*\(", line):
                allowed = set(SUFFIXES)
                if "!T_IS_F32" in conditions:
                    allowed = {"f64"}
                elif "T_IS_F32" in conditions:
                    allowed = {"f32"}
                found |= {(base, sfx) for sfx in allowed}
        assert not conditions, f"unbalanced #if in {f}"
    return found


def test_the_table_and_the_declarations_are_generated_from_the_list():
    """No slot, declaration or table entry written by hand: the struct holds the ISA
    name and the list's members, and dispatch.c fills each member by name."""
    text = _plain(_read("native", "src", "mhc_internal.h"))
    struct = re.search(r"typedef struct \{([^}]*)\} mhc_kernel_table;", text)
    assert struct, "mhc_kernel_table not found"
    members = [m.strip() for m in struct.group(1).split(";") if m.strip()]
    assert members == ["const char *name", "MHC_KERNEL_LIST(MHC_KERNEL_MEMBER, )"], members
    assert re.search(r"#define MHC_KERNEL_MEMBER\(isa, name, ret, params\) "
                     r"ret\s*\(\*name\) params;", text)
    declared = re.findall(r"^MHC_KERNEL_LIST\(MHC_KERNEL_DECLARE, (\w+)\)", text, re.M)
    assert declared == list(ISAS)
    assert re.search(r"#define MHC_KERNEL_DECLARE\(isa, name, ret, params\) MHC_HIDDEN ret "
                     r"mhc_##name##_##isa params;", text)
    dispatch = _plain(_read("native", "src", "dispatch.c"))
    assert re.search(r"#define MHC_KERNEL_ENTRY\(isa, name, ret, params\) "
                     r"\.name = mhc_##name##_##isa,", dispatch)
    assert re.search(r"#define MHC_TABLE\(isa\) \{\.name = #isa, "
                     r"MHC_KERNEL_LIST\(MHC_KERNEL_ENTRY, isa\)\}", dispatch)
    for isa in ISAS:
        assert re.search(r"#define MHC_ISA %s\b" % isa, _read("native", "src", f"kernels_{isa}.c"))


def test_every_listed_kernel_is_defined_and_every_kernel_is_listed():
    listed = {tuple(n.rsplit("_", 1)) for n in kernel_list()}
    defined = defined_kernels()
    assert listed - defined == set(), "listed, not defined in the family files"
    assert defined - listed == set(), "defined in the family files, not in MHC_KERNEL_LIST"


def test_the_compiled_module_has_every_kernel_at_every_level():
    """The symbols of the built module (hidden ones included, when it keeps its symbol
    table): mhc_<name>_<isa> for every entry and level built, no other such kernel."""
    spec = importlib.util.find_spec("mhc_array._native")
    if spec is None or spec.origin is None:
        pytest.skip("the native module is not built")
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    out = subprocess.run([nm, spec.origin], capture_output=True, text=True, timeout=60).stdout
    isas = ISAS if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else ISAS[:1]
    pattern = r"^[0-9a-fA-F]+ [tT] mhc_(\w+_f(?:32|64))_(%s)$" % "|".join(isas)
    symbols = {(name, isa) for name, isa in re.findall(pattern, out, re.M)}
    if not symbols:
        pytest.skip("the native module keeps no symbol table")
    assert symbols == {(name, isa) for name in kernel_list() for isa in isas}


# ---------------------------------------------------------------- Python records

def _shape(params):
    """(positional parameters, *args, keyword-only names, **kwargs) of a signature."""
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (len(pos), any(p.kind == p.VAR_POSITIONAL for p in params),
            sorted(p.name for p in params if p.kind == p.KEYWORD_ONLY),
            any(p.kind == p.VAR_KEYWORD for p in params))


def _cupy_shape(kernel):
    """The shape of cupy.py's top-level function ``kernel`` (parsed: CuPy cannot be
    imported without a GPU), or None."""
    tree = ast.parse(_read("backends", "cupy.py"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == kernel:
            a = node.args
            return (len(a.posonlyargs) + len(a.args), a.vararg is not None,
                    sorted(k.arg for k in a.kwonlyargs), a.kwarg is not None)
    return None


def backend_shape(name, kernel):
    """The signature shape of backend ``name``'s function ``kernel``, or None."""
    if name == "cupy":
        return _cupy_shape(kernel)
    fn = getattr(_dispatch.backend(name), kernel, None)
    if not inspect.isfunction(fn):
        return None
    return _shape(list(inspect.signature(fn).parameters.values()))


RECORDS = sorted(_pipeline._RECORDS.values(), key=lambda r: r.name)
CASES = [(r, b) for r in RECORDS for b in r.backends]


def test_records_name_known_backends():
    assert RECORDS
    for r in RECORDS:
        assert r.backends and set(r.backends) <= set(_pipeline.ALL_BACKENDS), r


@pytest.mark.parametrize("record,backend", CASES, ids=[f"{r.name}-{b}" for r, b in CASES])
def test_every_backend_a_record_lists_has_its_kernel(record, backend):
    want = backend_shape("array_api", record.kernel)
    assert want is not None, f"array_api has no {record.kernel} (every record falls back to it)"
    got = backend_shape(backend, record.kernel)
    assert got is not None, f"{record.name}: backend {backend} has no function {record.kernel}"
    assert got == want, (f"{record.name}: {backend}.{record.kernel} takes (positional, *args, "
                         f"keywords, **kwargs) {got}, array_api {want}")


def test_the_check_has_teeth(monkeypatch):
    """A backend without a kernel it is listed for, or with other keywords, fails."""
    assert _cupy_shape("no_such_kernel") is None
    assert backend_shape("array_api", "no_such_kernel") is None
    mod = _dispatch.backend("array_api")
    want = backend_shape("array_api", "sinkhorn")
    monkeypatch.setattr(mod, "sinkhorn", lambda xp, x, row_sums, col_sums, *, iterations, call:
                        None)
    assert backend_shape("array_api", "sinkhorn") != want
