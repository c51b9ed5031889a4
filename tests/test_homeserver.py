"""The embedded Synapse: accounts, rooms, messages past Synapse's default rate limits, restarts."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    WhoamiResponse,
)

from nanoclaw.appliance.homeserver import Account, EmbeddedHomeserver, HomeserverError
from tests.support.net import free_port

pytestmark = pytest.mark.integration


def client(homeserver: EmbeddedHomeserver, account: Account) -> AsyncClient:
    # max_limit_exceeded=0: a 429 must fail the test, not be silently waited out by nio.
    matrix = AsyncClient(homeserver.url, config=AsyncClientConfig(max_limit_exceeded=0))
    matrix.user_id, matrix.device_id = account.user_id, account.device_id
    matrix.access_token = account.access_token
    return matrix


async def test_two_users_talk_faster_than_default_rate_limits(
    homeserver: EmbeddedHomeserver,
) -> None:
    alice = await homeserver.register("alice-talk", "alice-password")
    bob = await homeserver.register("bob-talk", "bob-password")
    again = await homeserver.register("bob-talk", "bob-password")
    assert (again.user_id, again.password) == (bob.user_id, bob.password)
    assert again.access_token != bob.access_token, "a second register logs in a new device"

    alice_client, bob_client = client(homeserver, alice), client(homeserver, bob)
    try:
        created = await alice_client.room_create(invite=[bob.user_id])
        assert isinstance(created, RoomCreateResponse), created
        assert isinstance(await bob_client.join(created.room_id), JoinResponse)
        for i in range(20):  # Synapse's default rc_message allows a burst of 10
            sent = await bob_client.room_send(
                created.room_id, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"}
            )
            assert isinstance(sent, RoomSendResponse), sent
        history = await alice_client.room_messages(created.room_id, limit=50)
        assert isinstance(history, RoomMessagesResponse), history
        bodies = [e.body for e in reversed(history.chunk) if isinstance(e, RoomMessageText)]
        assert bodies == [f"message {i}" for i in range(20)]
    finally:
        await alice_client.close()
        await bob_client.close()


async def test_restart_keeps_accounts_and_secrets(tmp_path: Path) -> None:
    directory = tmp_path / "synapse"
    server = EmbeddedHomeserver(directory, port=free_port())
    async with server:
        first = await server.register("owner", "owner-password", admin=True)
    secret = (directory / "registration_shared_secret").read_text()
    assert stat.S_IMODE((directory / "registration_shared_secret").stat().st_mode) == 0o600

    async with EmbeddedHomeserver(directory, port=free_port()) as restarted:
        # The old token still works: the database (and its devices) survived the restart.
        old = client(restarted, first)
        try:
            assert isinstance(who := await old.whoami(), WhoamiResponse), who
            assert who.user_id == first.user_id
        finally:
            await old.close()
        again = await restarted.register("owner", "owner-password")
        assert again.user_id == first.user_id
    assert (directory / "registration_shared_secret").read_text() == secret


async def test_a_failed_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedHomeserver(tmp_path / "synapse", port=taken.getsockname()[1])
        with pytest.raises(HomeserverError, match="exited with code") as failure:
            await server.start()
    assert "Failed to listen" in str(failure.value), "the log's tail is in the error"
