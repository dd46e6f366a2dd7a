"""The shape of the source, checked rather than hoped: the import-linter contracts of
pyproject.toml, no import cycle between any two modules, files of a readable length, and task
names compared in the task registry only."""

import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).parents[1]
SOURCE = ROOT / "src" / "transferlab"


def test_the_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_imports_one_that_imports_it_back():
    """Directly or through others, function-level imports included (grimp sees them all)."""
    graph = grimp.build_graph("transferlab")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, cycles


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: str(p.relative_to(SOURCE)))
def test_no_source_file_is_over_450_lines(path):
    assert len(path.read_text().splitlines()) <= 450


def test_task_names_are_compared_in_the_task_registry_only():
    comparison = re.compile(r"""(==|!=)\s*["'](classification|segmentation)["']|task\s*==""")
    found = sorted({str(p.relative_to(SOURCE)) for p in SOURCE.rglob("*.py")
                    if not p.is_relative_to(SOURCE / "tasks") and comparison.search(p.read_text())})
    assert len(found) <= 1, found
