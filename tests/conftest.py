"""Shared fixtures: one real Synapse per test session, a scripted model and a world per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel
from tests.support.world import World, echo


@pytest.fixture(scope="session")
async def homeserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedHomeserver]:
    directory: Path = tmp_path_factory.mktemp("synapse")
    async with EmbeddedHomeserver(directory, port=free_port()) as server:
        yield server


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    with ScriptedModel() as model:
        yield model


@pytest.fixture
async def world(
    homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[World]:
    """A test's accounts, main room and host, answering with `echo` unless told otherwise."""
    scripted_model.script = echo
    w = World(homeserver, scripted_model, tmp_path)
    yield w
    await w.close()
