"""The flake evaluated as nixos-rebuild and nix flake check would, with nixpkgs and NixOS
stood in for by real derivations (tests/nix/): for the package, nixos-module/demo.nix,
every NixOS test (so vm-tests/node.nix) and both READMEs' examples, every file and unit the
module produces is forced down to its .drvPath. That needs every dependency's .drvPath, so
a dependency cycle (the policy depending on /etc, which holds it) fails here, as does a
Python dependency of pyproject.toml the package lacks.

Needs NANOCLAW_NIXPKGS_LIB (tests/support/nix.py); skipped loudly without it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.nix import REPO, Evaluation, harness, require_nixpkgs_lib

nixpkgs_lib = pytest.fixture(scope="session")(require_nixpkgs_lib)

# Every system's own files and units, as the module and NixOS make them.
MODULE_FILES = {
    "/etc/nanoclaw/policy.json",
    "/etc/nanoclaw/config.toml",
    "/etc/systemd/system",
    "/etc/tmpfiles.d",
    "unit nanoclaw.service",
    "unit nanoclaw-sandboxd.service",
    "unit nanoclaw-sandboxd.socket",
    "tmpfiles 10-nanoclaw",
    "system.build.etc",
    "system.build.toplevel",
}
DRV = re.compile(r"/nix/store/[0-9a-z]{32}-[^/]+\.drv")


def nix_block(path: Path, heading: str) -> str:
    """The first ```nix block after `heading` in a Markdown file."""
    text = path.read_text()
    section = text[text.index(heading) :]
    found = re.search(r"```nix\n(.*?)```", section, re.S)
    assert found, f"{path.name}: no nix block after {heading!r}"
    return found[1]


EXAMPLES = {
    "nixos-module/README.md": nix_block(REPO / "nixos-module/README.md", "## configuration.nix"),
    # A fragment of configuration.nix, as the README shows it.
    "README.md": "{ pkgs, ... }: {\n"
    + nix_block(REPO / "README.md", "The flake gives `nixosModules.default`")
    + "}\n",
}


def evaluated(lib: Path, target: str, example: str | None = None) -> Evaluation:
    result = harness(lib, target, example)
    assert result.ok, f"{target} does not evaluate:\n{result.stderr}"
    files: dict[str, str] = result.value.get("files", {})
    forced = sum(1 for value in files.values() if DRV.fullmatch(value))
    print(f"\n{target}: {forced} .drvPath forced of {len(files)} files in {result.seconds:.1f} s")
    return result


def check_system(value: dict[str, Any]) -> None:
    files: dict[str, str] = value["files"]
    assert MODULE_FILES <= set(files), sorted(MODULE_FILES - set(files))
    for name in MODULE_FILES:
        assert DRV.fullmatch(files[name]), f"{name}: {files[name]}"
    policy = json.loads(value["policy"]["base"])
    confined = [name for name, group in policy["groups"].items() if "empty_paths" in group]
    # Each confined group's closure is read when the policy is built: one closureInfo each.
    assert len(value["policy"]["closures"]) == len(confined), value["policy"]
    assert all("read_only_paths" not in group for group in policy["groups"].values())
    # Every group has its agent unit: without one, the host cannot answer in its room.
    assert all("uid" in group.get("agent", {}) for group in policy["groups"].values()), policy


def test_the_package_has_every_dependency_pyproject_names(nixpkgs_lib: Path) -> None:
    value = evaluated(nixpkgs_lib, "package").value
    for name in ("package", "claude-agent-sdk", "devShell"):
        assert DRV.fullmatch(value["files"][name]), value["files"]
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # PEP 503 names, as nixpkgs names its Python packages.
    wanted = {re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", d)[0]).lower() for d in declared}
    assert wanted <= set(value["dependencies"]), sorted(wanted - set(value["dependencies"]))


def test_the_demo_system(nixpkgs_lib: Path) -> None:
    value = evaluated(nixpkgs_lib, "demo").value
    check_system(value)
    assert DRV.fullmatch(value["files"]["packages.vm"])


def test_every_nixos_test_and_its_node(nixpkgs_lib: Path) -> None:
    value = evaluated(nixpkgs_lib, "checks").value
    check_system(value)
    scenarios = {p.stem for p in (REPO / "vm-tests/scenarios").glob("[!_]*.py")}
    nixos_only = {p.stem for p in (REPO / "vm-tests/nixos").glob("[!_]*.py")}
    assert set(value["testScripts"]) == scenarios | nixos_only
    for name in [*value["testScripts"], "package"]:
        assert DRV.fullmatch(value["files"][f"checks.{name}"]), name
    # The conversation scenario's node runs the host with a Synapse and the scripted model.
    for unit in ("matrix-synapse", "nanoclaw-vm-matrix", "nanoclaw-vm-model"):
        assert f"unit {unit}.service" in value["files"]


@pytest.mark.parametrize("readme", sorted(EXAMPLES))
def test_the_readme_example(nixpkgs_lib: Path, readme: str) -> None:
    check_system(evaluated(nixpkgs_lib, "example", EXAMPLES[readme]).value)


def test_a_policy_that_depends_on_etc_is_an_infinite_recursion(nixpkgs_lib: Path) -> None:
    """The stand-ins can fail as NixOS does: a group whose tools are /etc itself makes the
    policy depend on the tree that holds it."""
    example = (
        EXAMPLES["nixos-module/README.md"]
        .replace("{ pkgs, ... }:", "{ pkgs, config, ... }:", 1)
        .replace(
            "packages = with pkgs; [ coreutils findutils gnugrep ];",
            "packages = [ config.system.build.etc ];",
        )
    )
    result = harness(nixpkgs_lib, "example", example)
    assert not result.ok and "infinite recursion encountered" in result.stderr, result.stderr
