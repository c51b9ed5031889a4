"""The root code's isolation, held by what actually loads: each root entry point, imported
in a fresh interpreter as its console script would, loads nothing of nanoclaw's outside
nanoclaw.broker and none of the agent side's libraries."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
ROOT_ENTRY_POINTS = ("nanoclaw-sandboxd",)
AGENT_LIBRARIES = ("claude_agent_sdk", "nio", "aiohttp", "markdown_it", "croniter")


def loaded_by(module: str) -> tuple[list[str], list[str]]:
    """(nanoclaw's modules, agent-side libraries) that importing `module` loads."""
    code = (
        "import importlib, json, sys; "
        f"importlib.import_module({module!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"('nanoclaw', *{AGENT_LIBRARIES!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    modules = json.loads(done.stdout)
    return (
        [m for m in modules if m.split(".")[0] == "nanoclaw"],
        sorted({m.split(".")[0] for m in modules} - {"nanoclaw"}),
    )


@pytest.mark.parametrize("script", ROOT_ENTRY_POINTS)
def test_a_root_entry_point_loads_the_broker_package_alone(script: str) -> None:
    module = SCRIPTS[script].split(":")[0]
    ours, libraries = loaded_by(module)
    outside = [m for m in ours if m not in ("nanoclaw", "nanoclaw.broker")]
    outside = [m for m in outside if not m.startswith("nanoclaw.broker.")]
    assert outside == [], f"{script} loads {outside}"
    assert libraries == [], f"{script} loads {libraries}"
    assert f"{module}" in ours


def test_the_probe_sees_what_the_host_loads() -> None:
    # The control: the host's own entry point loads the agent side, and the probe says so.
    ours, libraries = loaded_by("nanoclaw.host.service")
    assert "nanoclaw.host.router" in ours and "claude_agent_sdk" in libraries
