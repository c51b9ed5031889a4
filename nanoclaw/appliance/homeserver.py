"""An embedded Synapse homeserver: the Quickstart's local server and the integration tests'.

Synapse runs as a child process (`python -m synapse.app.homeserver`) on 127.0.0.1 with
a SQLite database, the client API only (no federation listener) and rate limits raised
out of the way: a personal server with one owner and one bot has nobody to throttle,
and Synapse's defaults refuse the 6th login or the 11th quick message. Accounts are
made with the shared-secret admin API, so open registration stays off.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

PR_SET_PDEATHSIG = 1

# Far above anything a person, a bot or a test suite does.
UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": UNLIMITED,
    "rc_registration": UNLIMITED,
    "rc_registration_token_validity": UNLIMITED,
    "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
    "rc_admin_redaction": UNLIMITED,
    "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
    "rc_joins_per_room": UNLIMITED,
    "rc_key_requests": UNLIMITED,
    "rc_3pid_validation": UNLIMITED,
    "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
    "rc_third_party_invite": UNLIMITED,
    "rc_media_create": UNLIMITED,
    "rc_presence": {"per_user": UNLIMITED},
    "rc_delayed_event_mgmt": UNLIMITED,
    "rc_room_creation": UNLIMITED,
    "rc_reports": UNLIMITED,
    "rc_user_directory": UNLIMITED,
    "rc_profile": UNLIMITED,
}


class HomeserverError(RuntimeError):
    """Synapse would not start, or refused an account."""


@dataclass(frozen=True)
class Account:
    user_id: str
    access_token: str
    device_id: str
    password: str


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a Synapse left behind by a killed parent
    # (a pytest run, a Quickstart) would hold the port and the database. The signal is
    # tied to the forking thread, which is the event loop's thread here.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _write_secret(path: Path) -> None:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))


class EmbeddedHomeserver:
    def __init__(self, directory: Path, port: int = 8008, server_name: str = "localhost") -> None:
        self.directory = directory
        self.port = port
        self.server_name = server_name
        self.config_file = directory / "homeserver.yaml"
        self.log_file = directory / "homeserver.log"
        self._secret_file = directory / "registration_shared_secret"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Write the configuration; keys and secrets are made once and kept.

        The config files are rewritten every time (they only depend on the constructor's
        arguments, so a new port takes effect); the signing key, the secrets and the
        database are never replaced.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        signing_key = self.directory / f"{self.server_name}.signing.key"
        if not signing_key.exists():
            # Imported here: signedjson comes with Synapse, an optional dependency.
            from signedjson.key import generate_signing_key, write_signing_keys

            fd = os.open(signing_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                write_signing_keys(handle, [generate_signing_key("a_" + secrets.token_hex(2))])
        _write_secret(self._secret_file)
        _write_secret(self.directory / "macaroon_secret_key")
        log_config = self.directory / "log.config"
        # JSON is YAML, so no YAML writer is needed.
        log_config.write_text(json.dumps(self._log_config(), indent=2))
        self.config_file.write_text(json.dumps(self._config(signing_key, log_config), indent=2))

    def _config(self, signing_key: Path, log_config: Path) -> dict[str, Any]:
        return {
            "server_name": self.server_name,
            "pid_file": str(self.directory / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.directory / "homeserver.db")},
            },
            "log_config": str(log_config),
            "media_store_path": str(self.directory / "media_store"),
            "signing_key_path": str(signing_key),
            "registration_shared_secret_path": str(self._secret_file),
            "macaroon_secret_key_path": str(self.directory / "macaroon_secret_key"),
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            "suppress_key_server_warning": True,
            "trusted_key_servers": [],
            "federation_domain_whitelist": [],  # never talk to another server
            "presence": {"enabled": False},
            **RATE_LIMITS,
        }

    def _log_config(self) -> dict[str, Any]:
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s",
                }
            },
            # A plain file: Synapse's stderr is appended to the same file (see start).
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_file),
                    "encoding": "utf8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    async def start(self, timeout: float = 30) -> None:
        """Start Synapse and wait until its client API answers."""
        await self.spawn()
        await self.wait_ready(timeout)

    async def spawn(self) -> None:
        """Start Synapse; `wait_ready` waits for it (other work may be done meanwhile)."""
        self.prepare()
        # Config errors and crashes before logging is set up only reach stderr.
        with open(self.log_file, "ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.config_file),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
                # Not in our process group: a Ctrl-C meant for the Quickstart must not stop
                # Synapse before the host has drained (the Quickstart stops it last).
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the client API of the Synapse that `spawn` started answers."""
        assert self._process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self._process.returncode is not None:
                    raise HomeserverError(
                        f"Synapse exited with code {self._process.returncode} while starting"
                        + self._log_tail()
                    )
                try:
                    async with session.get(
                        self.url + "/_matrix/client/versions",
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    await self.stop()
                    raise HomeserverError(
                        f"Synapse did not answer on {self.url} within {timeout} s"
                        + self._log_tail()
                    )
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait; SIGKILL if Synapse does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()

    def _log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return " (no log written)"
        tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of {self.log_file}:\n" + "\n".join(tail)

    async def register(self, localpart: str, password: str, admin: bool = False) -> Account:
        """Create the account, or log in to it if it exists (its admin flag is kept)."""
        endpoint = self.url + "/_synapse/admin/v1/register"
        secret = self._secret_file.read_text().strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(endpoint) as response:
                nonce = (await response.json())["nonce"]
            mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
            for part in (nonce, localpart, password):
                mac.update(part.encode() + b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(endpoint, json=body) as response:
                answer = await response.json()
            if response.status == 400 and answer.get("errcode") == "M_USER_IN_USE":
                async with session.post(
                    self.url + "/_matrix/client/v3/login",
                    json={
                        "type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": localpart},
                        "password": password,
                    },
                ) as response:
                    answer = await response.json()
            if response.status != 200:
                raise HomeserverError(f"could not get an account for {localpart}: {answer}")
        return Account(answer["user_id"], answer["access_token"], answer["device_id"], password)

    async def __aenter__(self) -> EmbeddedHomeserver:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
