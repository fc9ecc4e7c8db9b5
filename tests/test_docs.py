"""The documentation's examples run as written, and print what they show.

Every ```python block of README.md and docs/*.md is executed (in a fresh namespace,
in-process). Where a block shows its output it is checked:

- ``print(...)  # -> text``: the lines the block prints are exactly the ``# ->`` texts,
  in order (a block that uses ``# ->`` marks every line it prints so, on the statement that
  prints it; ``# ->`` inside a comment line is only a comment);
- a ```text block right after the ```python block (only blank lines between them):
  the block's whole output, line by line.

In both, ``...`` in an expected line matches any text (a version, an address).
Blocks that import torch, transformers, dask / distributed, scipy or matplotlib skip
when that library is absent; blocks that use CuPy or a CUDA device (or say
``# needs a GPU``) run only where the cupy backend has a device.

The public modules' docstring examples run as doctests.
"""

import doctest
import importlib
import pathlib
import re

import numpy as np
import pytest

import mhc_array as mx

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_FENCE = re.compile(r"```python\n(.*?)```(?:\s*\n```text\n(.*?)```)?", re.S)
_OPTIONAL = {"torch": "torch", "transformers": "transformers", "dask": "dask",
             "distributed": "distributed", "scipy": "scipy", "matplotlib": "matplotlib",
             "array_api_strict": "array_api_strict", "jax": "jax", "simsimd": "simsimd",
             "networkx": "networkx"}
_GPU = re.compile(r"^\s*(import|from) cupy\b|\.cuda\(|device=.cuda|# needs a GPU", re.M)


def _blocks():
    out = []
    for page in PAGES:
        for k, m in enumerate(_FENCE.finditer(page.read_text())):
            out.append(pytest.param(m.group(1), m.group(2), id=f"{page.name}-{k}"))
    return out


BLOCKS = _blocks()


def _expected_from_comments(code):
    lines = [line for line in code.splitlines()
             if "# ->" in line and line.split("# ->", 1)[0].strip()[:1] not in ("", "#")]
    return [line.split("# ->", 1)[1].strip() for line in lines] if lines else None


def _matches(expected, got):
    if "..." not in expected:
        return expected == got
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, got) is not None


@pytest.fixture
def restore_config():
    saved = (mx.get_backend(), mx.get_isa(), mx.get_num_threads())
    yield
    mx.set_backend(saved[0])
    mx.set_isa(saved[1])
    mx.set_num_threads(saved[2])


def test_every_page_has_examples():
    pages = {b.id.split("-")[0] for b in BLOCKS}
    for name in ("README.md", "index.md", "api.md", "backends.md", "mhc.md", "errors.md",
                 "distributed.md"):
        assert name in pages, f"{name} has no ```python example"


@pytest.mark.parametrize("code, text", BLOCKS)
def test_example_runs_and_prints_what_it_shows(code, text, capsys, restore_config):
    for mod in sorted(set(re.findall(r"^\s*(?:import|from)\s+(\w+)", code, re.M))):
        if mod in _OPTIONAL:
            pytest.importorskip(_OPTIONAL[mod])
    if re.search(r"^\s*import mhc_array\.torch|from mhc_array\.torch|mhc_array import torch",
                 code, re.M):
        pytest.importorskip("torch")
    if _GPU.search(code) and mx.config()["backends"]["cupy"]["available"] is False:
        pytest.skip("needs a CUDA device and CuPy (the cupy backend)")
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__main__"})  # as a script
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    expected = ([line.rstrip() for line in text.strip("\n").splitlines()] if text is not None
                else _expected_from_comments(code))
    if expected is None:
        return
    assert len(printed) == len(expected), f"printed:\n{chr(10).join(printed)}"
    for want, got in zip(expected, printed):
        assert _matches(want, got), f"expected {want!r}, printed {got!r}"


# ---------------------------------------------------------------- doctests

DOCTEST_MODULES = ["mhc_array._api", "mhc_array._mhc", "mhc_array._config", "mhc_array._info",
                   "mhc_array.errors", "mhc_array.curvature._ricci",
                   "mhc_array.curvature._summary", "mhc_array.torch._sinkhorn",
                   "mhc_array.torch._distances", "mhc_array.torch._mhc",
                   "mhc_array.torch._modules", "mhc_array.torch._replace"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name, restore_config):
    if "torch" in name:
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"mx": mx, "np": np}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


def test_public_functions_have_docstring_examples():
    """Every public function of mhc_array carries an example in its docstring (run by
    test_docstring_examples)."""
    names = [n for n in mx.__all__ if callable(getattr(mx, n)) and not n[0].isupper()]
    missing = [n for n in names if ">>>" not in (getattr(mx, n).__doc__ or "")]
    assert not missing, f"no docstring example: {missing}"
