"""vm-tests/mutations.py without a VM: every mutation still applies to this tree (its
text is there exactly once), and names a scenario and a subtest that exist. The VM run
itself, `vm-tests/mutate`, shows each one caught; its output is in the README."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "vm-tests" / "scenarios"


def load_mutations() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutations", REPO / "vm-tests/mutations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutations"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutations = load_mutations()


def subtest_patterns(scenario: Path) -> list[re.Pattern[str]]:
    """Each subtest(...) name in the scenario; an f-string's fields match any text."""
    patterns = []
    for node in ast.walk(ast.parse(scenario.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "subtest":
            name = node.args[0]
            if isinstance(name, ast.Constant):
                parts = [re.escape(name.value)]
            else:
                assert isinstance(name, ast.JoinedStr)
                parts = [
                    re.escape(part.value) if isinstance(part, ast.Constant) else ".+"
                    for part in name.values
                ]
            patterns.append(re.compile("".join(parts)))
    return patterns


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_the_mutation_applies_and_names_a_real_subtest(mutation: Any, tmp_path: Path) -> None:
    mutations.mutated_copy(mutation, tmp_path)
    for edit in mutation.edits:
        assert edit.old not in (tmp_path / edit.path).read_text() or edit.old in edit.new
    scenario = SCENARIOS / f"{mutation.scenario}.py"
    assert scenario.is_file()
    patterns = subtest_patterns(scenario)
    assert any(p.fullmatch(mutation.subtest) for p in patterns), patterns


def test_names_are_unique() -> None:
    names = [mutation.name for mutation in mutations.MUTATIONS]
    assert len(names) == len(set(names))


def test_a_stale_mutation_is_refused(tmp_path: Path) -> None:
    stale = mutations.Mutation(
        "stale", "nothing", (mutations.Edit("pyproject.toml", "no such text", ""),), "egress", "x"
    )
    with pytest.raises(mutations.StaleMutation, match="has 0 of 'no such text'"):
        mutations.mutated_copy(stale, tmp_path)
