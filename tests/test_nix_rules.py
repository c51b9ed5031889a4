"""nixos-module/rules.json is the policy's rules as nanoclaw/rules.py writes them, and Nix
reads the group name rule in it as Python does. (The module's use of the file is tested
in test_nixos_module.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from nanoclaw.broker import policy
from nanoclaw.rules import rules

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "nixos-module" / "rules.json"
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}


def test_the_module_reads_the_rules_the_python_code_enforces() -> None:
    assert json.loads(RULES.read_text()) == rules(), (
        "nixos-module/rules.json is stale: python -m nanoclaw.rules > nixos-module/rules.json"
    )


def test_every_limit_has_its_text() -> None:
    assert [limit["name"] for limit in rules()["limits"]] == [n for n, *_ in policy.LIMIT_RANGES]


def test_a_group_name_leaves_room_for_its_tool_user_and_agent_user() -> None:
    group = rules()["group"]
    longest = "a" * group["max_length"]
    assert re.fullmatch(group["pattern"], longest)
    assert not re.fullmatch(group["pattern"], longest + "a")
    assert len(group["tool_user_prefix"] + longest) < group["max_user_name"] == 31
    assert len(group["agent_user_prefix"] + longest) == 31


NAMES = [
    "a",
    "main",
    "my-group",
    "my_group",
    "9-9",
    "a" * 17,
    "a" * 18,
    "Family",
    "-x",
    "_x",
    "fam ily",
    "a.b",
    "é",
    "",
    "x\n",
]


def test_nix_matches_group_names_as_python_does() -> None:
    """builtins.match (POSIX extended) and re.fullmatch agree on the pattern."""
    nix = shutil.which("nix-instantiate")
    assert nix, "nix-instantiate is needed (scripts/host-deps)"
    expression = (
        "map (name: builtins.match (builtins.fromJSON (builtins.readFile "
        f"{RULES})).group.pattern name != null) (builtins.fromJSON ''{json.dumps(NAMES)}'')"
    )
    done = subprocess.run(
        [nix, "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        env=NIX_ENV,
    )
    assert done.returncode == 0, done.stderr
    pattern = rules()["group"]["pattern"]
    assert json.loads(done.stdout) == [bool(re.fullmatch(pattern, n)) for n in NAMES]
