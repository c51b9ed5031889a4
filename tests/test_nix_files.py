"""Every .nix file parses, and every VM scenario is also a NixOS test.

nixpkgs cannot be fetched here, so the NixOS tests (vm-tests/*.nix) cannot run: Nix
(Debian's nix-bin, installed by scripts/host-deps) parses every file, and evaluates
vm-tests/default.nix against a minimal stand-in for nixpkgs, without any nixpkgs lib, far
enough to check each test's name and its testScript (our driver's globals, prelude.py, the
scenario). test_nix_harness.py evaluates them fully where a nixpkgs lib is present.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VM_TESTS = REPO / "vm-tests"
# Not wrappers of a scenario: the test itself, the node, the attrset of all tests.
NOT_WRAPPERS = {"nixos-test.nix", "node.nix", "default.nix"}
# Parsing and evaluating need no store or build users.
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}

# Just enough of nixpkgs for default.nix, the wrappers and nixos-test.nix to give each
# test's name and testScript; runNixOSTest hands back its argument.
STAND_IN = """
{ repo }:
let
  lib = {
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    hasSuffix = x: s:
      let n = builtins.stringLength s - builtins.stringLength x;
      in n >= 0 && builtins.substring n (builtins.stringLength x) s == x;
    removeSuffix = x: s:
      if lib.hasSuffix x s
      then builtins.substring 0 (builtins.stringLength s - builtins.stringLength x) s
      else s;
    filterAttrs = f: set:
      builtins.removeAttrs set (builtins.filter (n: !f n set.${n}) (builtins.attrNames set));
    genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
    inherit (builtins) concatStringsSep;
  };
  pkgs = { inherit lib; writeText = name: _: "/nix/store/stand-in-${name}"; };
  tests = import (/. + repo + "/vm-tests") { inherit pkgs; self = { }; runNixOSTest = t: t; };
in
builtins.mapAttrs (_: t: { inherit (t) name testScript; }) tests
"""


@pytest.fixture(scope="session")
def nix() -> Path:
    """Where nix-instantiate is, installed when missing; a test fails without it."""
    deps = subprocess.run([REPO / "scripts/host-deps"], capture_output=True, text=True)
    assert deps.returncode == 0, f"scripts/host-deps failed:\n{deps.stdout}{deps.stderr}"
    found = shutil.which("nix-instantiate")
    assert found, "scripts/host-deps succeeded but nix-instantiate is not on PATH"
    return Path(found)


def nix_files() -> list[str]:
    """Every .nix file git tracks, or would (untracked but not ignored), that exists."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.nix"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


# Scenarios for both nodes (vm-tests/driver.py runs these too), and for the NixOS node only.
SCENARIO_DIRECTORIES = ("scenarios", "nixos")


def scenario_files() -> dict[str, Path]:
    """Each scenario by name: vm-tests/scenarios/*.py and vm-tests/nixos/*.py, without
    helpers (_*.py)."""
    return {
        path.stem: path
        for directory in SCENARIO_DIRECTORIES
        for path in (VM_TESTS / directory).glob("*.py")
        if not path.name.startswith("_")
    }


def scenario_names() -> list[str]:
    return sorted(scenario_files())


def wrappers() -> list[Path]:
    return sorted(path for path in VM_TESTS.glob("*.nix") if path.name not in NOT_WRAPPERS)


def test_the_nixos_tests_are_found() -> None:
    assert "vm-tests/default.nix" in nix_files()
    assert scenario_names(), "no scenarios in vm-tests/scenarios"


@pytest.mark.parametrize("name", nix_files())
def test_nix_file_parses(nix: Path, name: str) -> None:
    result = subprocess.run(
        [nix, "--parse", name], cwd=REPO, capture_output=True, text=True, env=NIX_ENV
    )
    assert result.returncode == 0, f"{name} does not parse:\n{result.stderr}"


def test_every_scenario_has_its_nixos_wrapper() -> None:
    missing = [
        f"vm-tests/{name}.nix"
        for name in scenario_names()
        if not (VM_TESTS / f"{name}.nix").is_file()
    ]
    assert not missing, f"scenarios without a NixOS wrapper: {missing}"


@pytest.mark.parametrize("wrapper", wrappers(), ids=lambda path: path.name)
def test_wrapper_names_its_own_existing_scenario(wrapper: Path) -> None:
    named = re.findall(r"\./((?:scenarios|nixos)/[\w.-]+\.py)", wrapper.read_text())
    assert len(named) == 1 and Path(named[0]).stem == wrapper.stem, (
        f"{wrapper.name} should wrap its scenario: {named}"
    )
    assert (VM_TESTS / named[0]).is_file(), f"{wrapper.name}: no {named[0]}"


def test_each_test_script_is_driver_globals_prelude_and_scenario(nix: Path) -> None:
    result = subprocess.run(
        [nix, "--eval", "--strict", "--json", "--argstr", "repo", str(REPO), "-E", STAND_IN],
        capture_output=True,
        text=True,
        env=NIX_ENV,
    )
    assert result.returncode == 0, f"vm-tests/default.nix does not evaluate:\n{result.stderr}"
    tests = json.loads(result.stdout)
    assert sorted(tests) == scenario_names()

    # WEB_SERVERS, the addresses vm-tests/driver.py gives a scenario as `web_servers`.
    declared = re.search(r"^WEB_SERVERS = \((.*)\)$", (VM_TESTS / "driver.py").read_text(), re.M)
    assert declared, "vm-tests/driver.py: no WEB_SERVERS"
    web_servers = json.dumps(re.findall(r'"([^"]+)"', declared[1]), separators=(",", ":"))
    prelude = (VM_TESTS / "prelude.py").read_text()
    for name, test in tests.items():
        script: str = test["testScript"]
        assert test["name"] == f"nanoclaw-{name}"
        assert f"web_servers = {web_servers}\n" in script
        scenario = scenario_files()[name].read_text()
        assert script.index(prelude) < script.index(scenario), f"{name}: prelude, then scenario"
        compile(script, f"testScript of {name}", "exec")
