"""The NixOS test driver's machine API, on top of one `execute`.

Both test machines offer it: the systemd-nspawn container (tests/support/machine.py) and
the QEMU VM (vm-tests/driver.py), so one scenario runs against either. A subclass gives
`name`, `start`, `shutdown` and `execute`; everything here is built from those.
"""

from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class DriverApi(ABC):
    name: str
    command_timeout = 60.0  # seconds, for execute/succeed/fail
    wait_timeout = 60.0  # seconds, for the wait_* methods
    poll_seconds = 0.1

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    @abstractmethod
    def execute(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Run `command` as root; (exit status, stdout+stderr). TimeoutError when it was
        killed for running past `timeout` (None: `command_timeout`)."""

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def succeed(self, *commands: str, timeout: float | None = None) -> str:
        """Run each command; AssertionError (with its output) when one fails. Returns the
        outputs, concatenated."""
        output = ""
        for command in commands:
            self.log(f"must succeed: {command}")
            output += self.succeed_quietly(command, timeout)
        return output

    def succeed_quietly(self, command: str, timeout: float | None = None) -> str:
        """succeed() without logging the command (for polling helpers)."""
        status, out = self.execute(command, timeout)
        if status != 0:
            raise AssertionError(f"[{self.name}] `{command}` failed with {status}:\n{out}")
        return out

    def fail(self, *commands: str, timeout: float | None = None) -> str:
        """Run each command; AssertionError when one succeeds. Returns the outputs."""
        output = ""
        for command in commands:
            self.log(f"must fail: {command}")
            status, out = self.execute(command, timeout)
            if status == 0:
                raise AssertionError(f"[{self.name}] `{command}` succeeded but should fail:\n{out}")
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: float | None = None) -> str:
        """Run `command` until it succeeds; its output. AssertionError on timeout."""
        self.log(f"waiting for success: {command}")
        return self._wait_until(command, timeout, want_success=True)

    def wait_until_fails(self, command: str, timeout: float | None = None) -> str:
        """Run `command` until it fails; its output. AssertionError on timeout."""
        self.log(f"waiting for failure: {command}")
        return self._wait_until(command, timeout, want_success=False)

    def _wait_until(self, command: str, timeout: float | None, want_success: bool) -> str:
        limit = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                status, out = self.execute(command, timeout=remaining)
            except TimeoutError as error:
                status, out = -1, str(error)
            if (status == 0) == want_success and status != -1:
                return out
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"[{self.name}] `{command}` did not {'succeed' if want_success else 'fail'}"
                    f" within {limit:.0f} s; last status {status}, output:\n{out}"
                )
            time.sleep(self.poll_seconds)

    def systemctl(self, args: str) -> tuple[int, str]:
        return self.execute(f"systemctl {args}")

    def get_unit_info(self, unit: str) -> dict[str, str]:
        """`systemctl show UNIT` as a dict."""
        status, out = self.systemctl(f"--no-pager show {shlex.quote(unit)}")
        if status != 0:
            raise AssertionError(f"[{self.name}] systemctl show {unit} failed ({status}):\n{out}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        state = self.get_unit_info(unit).get("ActiveState")
        if state != require_state:
            raise AssertionError(
                f"[{self.name}] unit {unit} is {state!r}, expected {require_state!r}:\n"
                + self._unit_status(unit)
            )

    def wait_for_unit(self, unit: str, timeout: float | None = None) -> None:
        """Wait until `unit` is active. Fails at once when it fails, is not found, or is
        inactive with no job queued that could start it (as NixOS's does)."""
        self.log(f"waiting for unit {unit}")
        limit = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        quoted = shlex.quote(unit)
        while True:
            out = self.succeed_quietly(
                f"systemctl show --property=ActiveState,LoadState {quoted}; "
                f"echo Jobs=$(systemctl list-jobs --no-legend --plain | wc -l)"
            )
            props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            state = props.get("ActiveState")
            if state == "active":
                return
            if state == "failed" or props.get("LoadState") == "not-found":
                raise AssertionError(
                    f"[{self.name}] unit {unit} {props}:\n" + self._unit_status(unit)
                )
            if state == "inactive" and props.get("Jobs") == "0":
                # No job in flight: nothing will start it, unless it was started since.
                again = self.get_unit_info(unit).get("ActiveState")
                if again == "active":
                    return
                if again == "inactive":
                    raise AssertionError(
                        f"[{self.name}] unit {unit} is inactive and no job is pending:\n"
                        + self._unit_status(unit)
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"[{self.name}] unit {unit} not active after {limit:.0f} s ({props}):\n"
                    + self._unit_status(unit)
                )
            time.sleep(self.poll_seconds)

    def _unit_status(self, unit: str) -> str:
        quoted = shlex.quote(unit)
        return self.execute(
            f"systemctl status --no-pager --full {quoted} || true; "
            f"journalctl --no-pager -n 50 -u {quoted} || true"
        )[1]

    def wait_for_open_port(
        self, port: int, addr: str = "127.0.0.1", timeout: float | None = None
    ) -> None:
        """Wait until something accepts TCP connections on addr:port in the machine."""
        self.wait_until_succeeds(f"nc -z -w 1 {shlex.quote(addr)} {int(port)}", timeout)

    def wait_for_closed_port(
        self, port: int, addr: str = "127.0.0.1", timeout: float | None = None
    ) -> None:
        self.wait_until_fails(f"nc -z -w 1 {shlex.quote(addr)} {int(port)}", timeout)

    def wait_for_file(self, path: str, timeout: float | None = None) -> None:
        self.wait_until_succeeds(f"test -e {shlex.quote(path)}", timeout)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
