"""The few systemd D-Bus calls the broker makes, with explicit signatures.

StartTransientUnit with properties as (name, signature, value) triples and pipes passed as
file descriptors; a tool unit is created with AddRef so it stays loaded after it stops,
until we have read its exit status and drop the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"

Property = tuple[str, str, object]
AuxUnit = tuple[str, Sequence[Property]]  # a unit started along with another (a socket's service)


class BusError(Exception):
    """systemd refused a call; the message is systemd's own."""


@dataclass(frozen=True)
class UnitOutcome:
    result: str  # "success", "exit-code", "signal", "timeout", "oom-kill", ...
    exit_code: int  # CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3
    exit_status: int  # the exit status, or the signal number


def _wire(value: object) -> object:
    """dbus-next wants lists for structs and arrays; our plans use immutable tuples."""
    if isinstance(value, tuple | list):
        return [_wire(item) for item in value]
    return value


def sent_properties(properties: Sequence[Property], keep_loaded: bool = True) -> list[Property]:
    """The properties start_transient sends for `properties`: AddRef keeps the unit loaded."""
    return [*properties, ("AddRef", "b", True)] if keep_loaded else list(properties)


def _properties(properties: Sequence[Property]) -> list[list[object]]:
    return [[key, Variant(signature, _wire(value))] for key, signature, value in properties]


class Systemd:
    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    @classmethod
    async def connect(cls) -> Systemd:
        bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        return cls(bus)

    def disconnect(self) -> None:
        self._bus.disconnect()

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        fds: Sequence[int] = (),
    ) -> list[object]:
        reply = await self._bus.call(
            Message(
                destination=SYSTEMD,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
                unix_fds=list(fds),
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise BusError(f"{member}: {reply.error_name}: {reply.body[0] if reply.body else ''}")
        return list(reply.body)

    async def start_transient(
        self,
        name: str,
        properties: Sequence[Property],
        fds: Sequence[int] = (),
        aux: Sequence[AuxUnit] = (),
        keep_loaded: bool = True,
    ) -> str:
        """Start the unit; `fds` are referenced from properties of signature 'h' by index.
        With `keep_loaded` it stays loaded once stopped, until release()."""
        body = [
            name,
            "fail",
            _properties(sent_properties(properties, keep_loaded)),
            [[aux_name, _properties(aux_properties)] for aux_name, aux_properties in aux],
        ]
        await self._call(MANAGER_PATH, MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", body, fds)
        (path,) = await self._call(MANAGER_PATH, MANAGER, "GetUnit", "s", [name])
        return str(path)

    async def active_state(self, name: str) -> str:
        """ "active", "activating", "failed", ...; "inactive" for a unit not loaded."""
        try:
            (path,) = await self._call(MANAGER_PATH, MANAGER, "GetUnit", "s", [name])
        except BusError:  # NoSuchUnit
            return "inactive"
        return str(await self._get(str(path), UNIT, "ActiveState"))

    async def has_job(self, name: str) -> bool:
        """Whether a job (a start or stop still to be done) is queued for `name`."""
        try:
            (path,) = await self._call(MANAGER_PATH, MANAGER, "GetUnit", "s", [name])
        except BusError:
            return False
        return await self._queued(str(path))

    async def _queued(self, path: str) -> bool:
        job = await self._get(path, UNIT, "Job")  # (id, path); id 0 is none
        return isinstance(job, list) and job[0] != 0

    async def loaded_units(self, pattern: str) -> list[str]:
        """The names of the loaded units matching the glob `pattern`."""
        (units,) = await self._call(
            MANAGER_PATH, MANAGER, "ListUnitsByPatterns", "asas", [[], [pattern]]
        )
        assert isinstance(units, list)
        return [str(unit[0]) for unit in units]

    async def stop_unit(self, name: str) -> None:
        """Stop `name` the usual way (SIGTERM, then SIGKILL after its stop timeout)."""
        await self._call(MANAGER_PATH, MANAGER, "StopUnit", "ss", [name, "replace"])

    async def _get(self, path: str, interface: str, name: str) -> object:
        (value,) = await self._call(path, PROPERTIES, "Get", "ss", [interface, name])
        assert isinstance(value, Variant)
        return value.value

    async def version(self) -> int:
        """The manager's major version ("252.30-1~deb12u2" is 252; 0 if it says none)."""
        text = str(await self._get(MANAGER_PATH, MANAGER, "Version"))
        digits = text.split(".")[0].removeprefix("v")
        return int(digits) if digits.isdigit() else 0

    async def main_pid(self, unit: str) -> int:
        """The main process of `unit`, or 0 when it is not running (or not loaded)."""
        try:
            (path,) = await self._call(MANAGER_PATH, MANAGER, "GetUnit", "s", [unit])
        except BusError:  # NoSuchUnit: never started since the last reload
            return 0
        pid = await self._get(str(path), SERVICE, "MainPID")
        return pid if isinstance(pid, int) else 0

    async def wait_inactive(
        self, path: str, poll: float = 0.005, longest: float = 0.1
    ) -> UnitOutcome:
        """Wait until the unit has run and stopped, then read how its main process ended.
        It is asked after `poll` seconds, then ever less often, at least every `longest`.

        A unit whose start job is still queued is "inactive" too, as if it had already
        ended (a busy machine queued one for long enough, and a probe unit was read as
        having succeeded before it ran): so it counts as stopped only with no job pending,
        the job read before the state (a start finishing between the two reads would
        otherwise pass as done)."""
        delay = poll
        while await self._queued(path) or await self._get(path, UNIT, "ActiveState") not in (
            "inactive",
            "failed",
        ):
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
        result = await self._get(path, SERVICE, "Result")
        code = await self._get(path, SERVICE, "ExecMainCode")
        status = await self._get(path, SERVICE, "ExecMainStatus")
        return UnitOutcome(str(result), int(code), int(status))  # type: ignore[call-overload]

    async def stop(self, name: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "KillUnit", "ssi", [name, "all", 9])

    async def release(self, path: str) -> None:
        """Drop our reference; CollectMode then lets systemd forget the unit."""
        await self._call(path, UNIT, "Unref")
