"""The bundled Claude Code CLI runs as the Nix package starts it (nixos-module/claude-loader.sh):
through an explicit glibc loader, with no loader at the path its ELF names, as on NixOS
without nix-ld. A copy of the CLI whose interpreter path is changed to one that does not
exist (same length, so no other byte moves) cannot start by itself, and through the
script it does a whole SDK round trip with a tool call.

Here Debian's loader stands in for nixpkgs' glibc loader; both are glibc's ld.so.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import claude_agent_sdk
import pytest
from claude_agent_sdk import ResultMessage, query

from tests.support.nix import REPO
from tests.support.scripted_model import ScriptedModel
from tests.test_scripted_model import added, adder, options

pytestmark = pytest.mark.integration

BUNDLED = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
INTERPRETER = b"/lib64/ld-linux-x86-64.so.2"
NOWHERE = b"/nonexist/ld-linux-x86-64.2"  # as long as INTERPRETER
LOADER = Path("/lib64/ld-linux-x86-64.so.2").resolve()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled CLI whose PT_INTERP names a loader that does not exist."""
    data = BUNDLED.read_bytes()
    at = data.find(INTERPRETER)
    assert 0 < at < 4096, "the CLI's interpreter path is not in its headers"
    copy = tmp_path_factory.mktemp("cli") / "claude-unwrapped"
    copy.write_bytes(data[:at] + NOWHERE + data[at + len(INTERPRETER) :])
    copy.chmod(0o755)
    return copy


def test_the_copy_cannot_start_by_itself(cli: Path) -> None:
    with pytest.raises(FileNotFoundError):  # the kernel finds no interpreter for it
        subprocess.run([str(cli), "--version"], check=False)


def loader_script(directory: Path, cli: Path) -> Path:
    """claude-loader.sh with its placeholders filled, as `substitute --subst-var-by` does."""
    text = (REPO / "nixos-module" / "claude-loader.sh").read_text()
    assert sorted(set(re.findall(r"@(\w+)@", text))) == ["cli", "loader", "shell"]
    values = {"shell": "/bin/sh", "loader": str(LOADER), "cli": str(cli)}
    script = directory / "claude"
    script.write_text(re.sub(r"@(\w+)@", lambda m: values[m[1]], text))
    script.chmod(0o755)
    return script


async def test_through_the_loader_it_does_a_round_trip_with_a_tool_call(
    cli: Path, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    scripted_model.script = adder
    settings = options(scripted_model, tmp_path, cli_path=str(loader_script(tmp_path, cli)))
    results = [
        m
        async for m in query(prompt="add 2 and 3", options=settings)
        if isinstance(m, ResultMessage)
    ]
    assert [r.result for r in results] == ["sum is 5"]
    assert added[-1] == {"a": 2, "b": 3}
