"""Nix evaluation for the tests: the nixpkgs lib/ tree they need, and tests/nix/harness.nix.

nixpkgs cannot be fetched on these machines; its lib can (the repository
nix-community/nixpkgs.lib, never committed here), and NANOCLAW_NIXPKGS_LIB names its lib/
directory. Without it, the tests that need it are skipped, loudly and with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "nix" / "harness.nix"
LIB_VARIABLE = "NANOCLAW_NIXPKGS_LIB"
# Evaluation needs no store daemon and no build users.
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}


def require_nixpkgs_lib() -> Path:
    """The lib/ tree, or a skip that says what was not evaluated and how to run it."""
    value = os.environ.get(LIB_VARIABLE)
    if not value:
        reason = (
            f"{LIB_VARIABLE} is not set: the NixOS module and the flake were NOT evaluated. "
            "Point it at a nixpkgs lib/ tree (nix-community/nixpkgs.lib's lib/) to run this."
        )
        print(f"\n*** SKIPPED: {reason}\n", file=sys.stderr)
        pytest.skip(reason)
    path = Path(value)
    assert (path / "default.nix").is_file(), f"{LIB_VARIABLE}={value} has no default.nix"
    assert shutil.which("nix-instantiate"), "nix-instantiate is needed (scripts/host-deps)"
    return path


@dataclass(frozen=True)
class Evaluation:
    ok: bool
    value: Any  # the JSON result when ok
    stderr: str
    seconds: float


def harness(
    lib: Path, target: str, example: str | None = None, inspect: bool = False
) -> Evaluation:
    """tests/nix/harness.nix for `target`; `example` is the text of a NixOS module."""
    with tempfile.TemporaryDirectory() as directory:
        args = ["--argstr", "repo", str(REPO), "--argstr", "target", target]
        if example is not None:
            module = Path(directory) / "example.nix"
            module.write_text(example)
            args += ["--argstr", "example", str(module)]
        if inspect:
            args += ["--arg", "inspect", "true"]
        began = time.monotonic()
        done = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", str(HARNESS), *args],
            capture_output=True,
            text=True,
            env={**NIX_ENV, LIB_VARIABLE: str(lib)},
        )
    seconds = time.monotonic() - began
    value = json.loads(done.stdout) if done.returncode == 0 else None
    return Evaluation(done.returncode == 0, value, done.stderr, seconds)
