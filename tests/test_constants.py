"""The constants shared by C, CUDA and Python are stated once, in
native/cuda/mhc_constants.h, and every place sees the same values: the compiled
module (C), the text the CUDA sources are compiled from (NVRTC's, the CPU
harness's), the backends (backends/_constants.py, from the compiled module or,
without one, from the header's text). No source writes one of them again."""

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mhc_array.backends import _constants, array_api
from mhc_array.backends import cupy as cb
from mhc_array.backends import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = os.path.join(ROOT, "native", "cuda")
HEADER = os.path.join(CUDA, "mhc_constants.h")

with open(HEADER) as _f:
    VALUES = _constants.parse(_f.read())     # {"MHC_<NAME>": value}

#: names the constants had before they were shared (none may be defined again)
RETIRED = ("MHC_CLIP_RADIUS", "OT_REG0", "MHC_HC_CHUNK")


def _strip_c_comments(text):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def _files(top, suffixes):
    for d, _, names in os.walk(os.path.join(ROOT, top)):
        for name in sorted(names):
            if name.endswith(suffixes):
                yield os.path.join(d, name)


def test_the_header_states_the_shared_constants():
    assert VALUES["MHC_CLIP_MARGIN"] == 1e-5
    assert VALUES["MHC_HC_MAX_STREAMS"] == 16
    assert VALUES["MHC_SK_SMALL_MAX"] == 256
    assert VALUES["MHC_CUDA_SK_SMALL_MAX"] == 64
    assert VALUES["MHC_OT_REG_START"] == 0.02
    # every define of the header is a constant (no other preprocessor lines but the guard)
    lines = [ln.strip() for ln in _strip_c_comments(open(HEADER).read()).splitlines()
             if ln.strip()]
    assert lines[:2] == ["#ifndef MHC_CONSTANTS_H", "#define MHC_CONSTANTS_H"]
    assert lines[-1] == "#endif"
    assert len(lines[2:-1]) == len(VALUES), lines


def test_python_reads_every_constant():
    """backends/_constants.py has each ``MHC_<NAME>`` as ``<NAME>``, with its value."""
    for name, value in VALUES.items():
        got = getattr(_constants, name.removeprefix("MHC_"))
        assert got == value and type(got) is type(value), name


@pytest.mark.skipif(native.lib is None, reason="native backend not built")
def test_the_compiled_module_has_the_same_values():
    for name, value in VALUES.items():
        got = getattr(native.lib, name)
        assert got == value and type(got) is type(value), name
    assert _constants.SOURCE == "mhc_array._native"


def test_the_cffi_declarations_cover_every_constant():
    sys.path.insert(0, os.path.join(ROOT, "native"))
    try:
        import build_ffi
    finally:
        sys.path.pop(0)
    cdef = build_ffi.cdef_from_header(open(build_ffi.HEADER).read())
    for name, value in VALUES.items():
        line = (f"static const double {name};" if isinstance(value, float)
                else f"#define {name} ...")
        assert cdef.count(line) == 1, name
    with pytest.raises(ValueError, match="no cdef"):
        build_ffi.cdef_from_header("#define MHC_X (1 - 1e-5)\n")


def test_without_the_compiled_module_the_header_is_read():
    """A machine without the compiled module (or with it disabled) reads the same
    values from the header's text."""
    code = ("import json; from mhc_array.backends import _constants as c, array_api; "
            "print(json.dumps([c.SOURCE, {k: getattr(c, k[4:]) for k in c.parse("
            "open(c.header_path()).read())}, array_api.CLIP_MARGIN]))")
    env = dict(os.environ, MHC_ARRAY_DISABLE_NATIVE="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    source, values, clip = json.loads(p.stdout)
    assert os.path.samefile(source, HEADER)
    assert values == VALUES and clip == VALUES["MHC_CLIP_MARGIN"]


@pytest.mark.parametrize("name", cb.SOURCES)
def test_the_cuda_text_defines_each_constant_once(name):
    """The text NVRTC compiles (cupy.source) holds the header's definitions, once."""
    text = _strip_c_comments(cb.source(name))
    for const, value in VALUES.items():
        found = re.findall(r"^\s*#\s*define\s+%s\s+(\S+)\s*$" % const, text, re.M)
        assert len(found) == 1, (const, found)
        assert _constants.parse(f"#define {const} {found[0]}") == {const: value}


@pytest.mark.parametrize("name", cb.SOURCES)
def test_the_harness_build_sees_the_same_values(name):
    """The macros g++ sees when the CPU harness compiles the .cu files."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed")
    p = subprocess.run([cxx, "-std=c++20", "-E", "-dM", "-x", "c++", "-I", CUDA, "-include",
                        os.path.join(CUDA, "harness", "cuda_cpu.h"), os.path.join(CUDA, name)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    macros = dict(re.findall(r"^#define (MHC_\w+) (.*)$", p.stdout, re.M))
    for const, value in VALUES.items():
        assert _constants.parse(f"#define {const} {macros[const]}") == {const: value}, const


def test_python_codes_match():
    """The codes and limits the backends pass to the kernels."""
    v = {k.removeprefix("MHC_"): x for k, x in VALUES.items()}
    manifold = {"euclidean": v["EUCLIDEAN"], "poincare": v["POINCARE"],
                "spherical": v["SPHERICAL"]}
    mode = {"raise": v["DOM_RAISE"], "nan": v["DOM_NAN"], "clip": v["DOM_CLIP"]}
    variant = {"paper": v["HC_PAPER"], "deepseek-v4": v["HC_DEEPSEEK_V4"]}
    assert (cb._MANIFOLD, cb._MODE, cb._VARIANT) == (manifold, mode, variant)
    for logits in (False, True):
        for order in ("rows-first", "cols-first"):
            flags = cb._sk_args(None, None, None, (2,), 3, 3, 1, 0.0, logits, order, None)[-1]
            assert flags == (v["SK_LOGITS"] * logits |
                             v["SK_COLS_FIRST"] * (order == "cols-first"))
    assert array_api.CLIP_MARGIN == v["CLIP_MARGIN"]
    if native.lib is not None:
        assert (native._MANIFOLD, native._DOMAIN_MODE, native._VARIANT) == (manifold, mode,
                                                                          variant)
        assert native.MAX_STREAMS == v["HC_MAX_STREAMS"]
        assert native._ORDER_FLAG["cols-first"] == v["SK_COLS_FIRST"]


# ---------------------------------------------------------------- no second definition

def test_no_c_or_cuda_source_defines_a_shared_constant_again():
    names = [n for n in VALUES] + list(RETIRED)
    for path in _files("native", (".c", ".h", ".inc", ".cu", ".cuh", ".cpp")):
        rel = os.path.relpath(path, ROOT)
        if rel == os.path.join("native", "cuda", "mhc_constants.h"):
            continue
        text = _strip_c_comments(open(path).read())
        for name in names:
            assert not re.search(r"^\s*#\s*define\s+%s\b" % name, text, re.M), \
                f"{rel} defines {name}: use mhc_constants.h"
        if rel.startswith(os.path.join("native", "fuzz")):
            continue  # the fuzzer draws codes at random from their ranges
        # codes by name, not by value
        bad = re.findall(r"\b(?:manifold|mode|variant|flags)\s*(?:==|!=|&)\s*[0-9]", text)
        assert not bad, f"{rel}: {bad} (use the MHC_* names of mhc_constants.h)"
        if rel.startswith(os.path.join("native", "cuda")):
            assert not re.search(r"\bMHC_SK_SMALL_MAX\b", text), \
                f"{rel}: the CUDA limit is MHC_CUDA_SK_SMALL_MAX (MHC_SK_SMALL_MAX is C's)"


#: Python names that would restate a shared constant
_PY_NAME = re.compile(r"_*(?:\w+_)?(CLIP_MARGIN|MAX_STREAMS|SMALL_MAX|REG_START|REG0|HC_CHUNK)")
#: option values the kernels take as codes
_OPTION_KEYS = {"euclidean", "poincare", "spherical", "raise", "nan", "clip", "paper",
                "deepseek-v4", "cols-first"}


def _numeric(node):
    """Whether ``node`` is a number written out (a literal, or arithmetic of them)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _numeric(node.operand)
    if isinstance(node, ast.BinOp):
        return _numeric(node.left) and _numeric(node.right)
    return False


def _python_files():
    yield from _files("backends", (".py",))
    yield from _files("mhc_array", (".py",))


@pytest.mark.parametrize("path", list(_python_files()),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_no_python_module_writes_a_shared_constant(path):
    """Python takes the shared constants from backends/_constants.py:
    ``from mhc_array.backends._constants import CLIP_MARGIN`` (frontend) or
    ``from ._constants import ...`` (backends)."""
    rel = os.path.relpath(path, ROOT)
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and _PY_NAME.fullmatch(t.id.upper()) and \
                        _numeric(node.value):
                    pytest.fail(f"{rel}:{node.lineno}: {t.id} = a number: take it from "
                                "mhc_array.backends._constants")
        if isinstance(node, ast.Dict):
            for k, val in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in _OPTION_KEYS and _numeric(val):
                    pytest.fail(f"{rel}:{node.lineno}: the code of {k.value!r} written as a "
                                "number: take it from mhc_array.backends._constants")


def test_the_header_is_installed_with_the_cuda_sources():
    """pyproject's package data of mhc_array._cuda (native/cuda) ships the header."""
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    line = re.search(r'^"mhc_array\._cuda" = \[(.*)\]$', text, re.M)
    assert line and '"mhc_constants.h"' in line.group(1)
    assert importlib.util.find_spec("mhc_array.backends._constants") is not None
