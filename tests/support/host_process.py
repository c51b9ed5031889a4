"""The real `nanoclaw run` as a child process, with the config and secrets a test gives it."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A host left behind by a killed pytest would keep answering in later tests.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def write_config(directory: Path, settings: dict[str, Any]) -> Path:
    """Write a JSON config (the same format the NixOS module generates)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(settings, indent=2))
    return path


def write_secret(directory: Path, name: str, value: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(value)
    path.chmod(0o600)
    return path


class HostProcess:
    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, ready_timeout: float = 60.0) -> HostProcess:
        handle = open(self.log, "ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nanoclaw.cli",
            "run",
            "--config",
            str(self.config),
            stdout=handle,
            stderr=handle,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        handle.close()
        await self.wait_for_log("synced; serving", ready_timeout)
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for_log(self, needle: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(needle) >= count:
                return
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(
                    f"host exited with {self.process.returncode} before logging {needle!r}:\n"
                    + self.log_text()[-3000:]
                )
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"host did not log {needle!r} within {timeout} s:\n{self.log_text()[-3000:]}"
        )

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd does, and wait for the graceful exit."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
