"""Shared fixtures: one real Synapse per test session, a scripted model per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nanoclaw.homeserver import EmbeddedHomeserver
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel


@pytest.fixture(scope="session")
async def homeserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedHomeserver]:
    directory: Path = tmp_path_factory.mktemp("synapse")
    async with EmbeddedHomeserver(directory, port=free_port()) as server:
        yield server


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    with ScriptedModel() as model:
        yield model
