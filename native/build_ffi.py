"""cffi build script (out-of-line API mode) for ``mhc_array._native``.

Used by setup.py as ``cffi_modules=["native/build_ffi.py:ffibuilder"]`` (run
from the repository root), or directly: ``python native/build_ffi.py [tmpdir]``
compiles the module into ``tmpdir`` (default /tmp/mhcbuild) for testing.

The cffi cdef is read from native/include/mhc_native.h (the one statement
of the C ABI) and native/cuda/mhc_constants.h, which it includes (the constants
shared with the CUDA sources and Python): see cdef_from_header.

Environment: MHC_ARRAY_VERSION (version compiled in, default 0.1.0);
MHC_ARRAY_SANITIZE=1 builds with AddressSanitizer and UBSan.
"""

import os
import re
import sys

import cffi

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _rel(*parts):
    """Path relative to the repository root when setup.py runs from there (setuptools
    wants relative sources), else absolute (ffibuilder.compile changes directory)."""
    path = os.path.join(_HERE, *parts)
    if __name__ != "__main__" and os.path.abspath(os.getcwd()) == _ROOT:
        return os.path.relpath(path, _ROOT)
    return path


SOURCES = [_rel("src", f) for f in (
    "cpu_features.c", "dispatch.c", "alloc.c", "threads.c", "workspace.c", "graph.c", "exact.c",
    "kernels_portable.c", "kernels_sse.c", "kernels_avx2.c", "kernels_avx512.c", "probe.c")]
HEADER = os.path.join(_HERE, "include", "mhc_native.h")
# headers and included fragments: a change rebuilds the module
DEPENDS = [_rel("include", "mhc_native.h"), _rel("cuda", "mhc_constants.h")] + [
    _rel("src", f) for f in sorted(os.listdir(os.path.join(_HERE, "src")))
    if f.endswith((".h", ".inc"))]

_LITERAL = r"[( ]*(?:0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*[) ]*"
_INT = re.compile(r"%s(?:(?:<<|>>|[|+\-])%s)*" % (_LITERAL, _LITERAL))  # 16, (1u << 3)
_FLOAT = re.compile(r"[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+")


def cdef_from_header(text, directory=os.path.dirname(HEADER)):
    """The cffi cdef of mhc_native.h: its declarations without comments, include
    guards, system #include lines and the ``#ifdef __cplusplus`` blocks (extern
    "C"); a local ``#include "file"`` (relative to ``directory``) is replaced by
    the cdef of that file. Every integer ``#define NAME value`` becomes
    ``#define NAME ...`` and every floating one (a decimal literal)
    ``static const double NAME;`` (API mode: the compiler supplies the value).
    Enums with literal values are kept as they are. Any other preprocessor line
    is an error."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    out, blocks, guards = [], [], set()  # blocks: open #if..., True = skipped
    for line in text.splitlines():
        stripped = line.strip()
        directive = stripped[1:].split() if stripped.startswith("#") else None
        if directive is not None and directive[:1] in (["ifndef"], ["ifdef"]):
            guard = directive[:1] == ["ifndef"] and re.fullmatch(r"MHC_\w+_H", directive[1])
            if not guard and directive[1:] != ["__cplusplus"]:
                raise ValueError("mhc_native.h: unexpected %r" % stripped)
            if guard:
                guards.add(directive[1])
            blocks.append(directive[1] == "__cplusplus")
        elif directive is not None and directive[:1] == ["endif"]:
            blocks.pop()
        elif any(blocks) or not stripped:
            continue
        elif directive is None:
            out.append(line.rstrip())
        elif directive[:1] == ["include"] and re.fullmatch(r'"[^"]+"', directive[1]):
            path = os.path.join(directory, directive[1][1:-1])
            with open(path) as f:
                out.append(cdef_from_header(f.read(), os.path.dirname(path)).rstrip("\n"))
        elif directive[:1] == ["include"] or (directive[:1] == ["define"] and
                                              len(directive) == 2 and directive[1] in guards):
            continue
        elif (directive[:1] == ["define"] and len(directive) >= 3 and
              re.fullmatch(r"[A-Z_][A-Z0-9_]*", directive[1])):
            value = " ".join(directive[2:])
            if _FLOAT.fullmatch(value):
                out.append("static const double %s;" % directive[1])
            elif _INT.fullmatch(value):
                out.append("#define %s ..." % directive[1])
            else:
                raise ValueError("mhc_native.h: no cdef for %r" % stripped)
        else:
            raise ValueError("mhc_native.h: no cdef for %r" % stripped)
    if blocks:
        raise ValueError("mhc_native.h: unterminated #if")
    return "\n".join(out) + "\n"


with open(HEADER) as _f:
    CDEF = cdef_from_header(_f.read())

VERSION = os.environ.get("MHC_ARRAY_VERSION", "0.1.0")
COMPILE_ARGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=fast", "-pthread"]
LINK_ARGS = ["-pthread"]
if os.environ.get("MHC_ARRAY_SANITIZE", "") not in ("", "0"):
    _san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    COMPILE_ARGS += _san
    LINK_ARGS += _san

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "mhc_array._native",
    '#include "mhc_native.h"',
    sources=SOURCES,
    include_dirs=[_rel("include")],
    depends=DEPENDS,
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
    define_macros=[("MHC_ARRAY_VERSION", '"%s"' % VERSION), ("_GNU_SOURCE", None)],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else "/tmp/mhcbuild",
                       verbose=True)
