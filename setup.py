"""Build the native C kernels with cffi (out-of-line API mode).

Everything else is declared in pyproject.toml. The version compiled into the
native module is read from mhc_array/__init__.py, so that the module refuses to
load against another version of the Python package.

The native part is optional: on a machine without a working C compiler the
package installs anyway and runs on the ``array_api`` backend, and
``mhc_array.config()`` says why. Set ``MHC_ARRAY_REQUIRE_NATIVE=1`` to make a
failed native build an error (CI does).
"""

import os
import re
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "mhc_array", "__init__.py")) as f:
    os.environ.setdefault("MHC_ARRAY_VERSION",
                          re.search(r'__version__ = "([^"]+)"', f.read()).group(1))

REQUIRE_NATIVE = os.environ.get("MHC_ARRAY_REQUIRE_NATIVE", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """build_ext that reports, instead of failing on, a native build error."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler/linker failure
            if REQUIRE_NATIVE:
                raise
            print(f"WARNING: the native extension {ext.name} was not built ({exc}); "
                  "mhc_array will run on its array_api backend", file=sys.stderr)


setup(cffi_modules=["native/build_ffi.py:ffibuilder"],
      cmdclass={"build_ext": OptionalBuildExt})
