"""The services in units/ as `systemd-analyze security --offline=true` rates them: each
at most 2.0 ("OK"), next to an unhardened service that it rates unsafe (the control
that shows the score is read right). The tool units themselves are rated online, in a
booted VM (vm-tests/scenarios/exposure.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = sorted((REPO / "units").glob("*.service"))
LIMIT = 2.0


@pytest.fixture(scope="module")
def analyze() -> str:
    subprocess.run([REPO / "scripts" / "host-deps"], check=True)
    return "systemd-analyze"


def exposure(analyze: str, unit: Path) -> float:
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        cwd=unit.parent,
    )
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", done.stdout
    )
    assert found, f"no score for {unit.name} (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    return float(found.group(1))


def test_every_unit_file_is_rated() -> None:
    names = {unit.name for unit in SERVICES}
    assert {"nanoclaw.service", "nanoclaw-sandboxd.service"} <= names


@pytest.mark.parametrize("unit", SERVICES, ids=lambda unit: unit.name)
def test_the_service_is_hardened(analyze: str, unit: Path) -> None:
    score = exposure(analyze, unit)
    print(f"{unit.name}: {score}")
    assert score <= LIMIT, f"{unit.name} rates {score}, above {LIMIT}"


def test_control_an_unhardened_service_rates_unsafe(analyze: str, tmp_path: Path) -> None:
    unit = tmp_path / "plain.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(analyze, unit) > 9.0
