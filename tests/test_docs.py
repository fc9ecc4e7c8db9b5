"""The examples in README.md and docs/distributed.md run as written (and print what
their comments say where they show output)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
DISTRIBUTED = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "distributed.md").read_text(),
                         flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md block {index}", "exec"), {})


def _shown(code):
    """The output the example's comments show: ``print(...)  # text`` lines."""
    return [line.split("#", 1)[1].strip() for line in code.splitlines()
            if line.strip().startswith("print(") and "#" in line]


@pytest.mark.parametrize("index", range(len(DISTRIBUTED)))
def test_distributed_example_runs_and_prints_what_it_shows(index, capsys):
    pytest.importorskip("distributed")
    code = DISTRIBUTED[index]
    exec(compile(code, f"docs/distributed.md block {index}", "exec"), {})
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert printed == _shown(code)
