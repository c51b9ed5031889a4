"""`nanoclaw up`: the whole appliance on this machine, with one command.

What runs where:

* On this machine, as this process's children: the embedded Synapse (loopback only, data
  in `DATA/homeserver`) and a systemd booted with systemd-nspawn from the cached Debian
  rootfs (`scripts/rootfs`; nanoclaw/appliance/machine.py). The machine shares this
  machine's network, so each side reaches the other on 127.0.0.1.
* In the machine, as systemd units from `units/` exactly as shipped: the broker's socket
  and service, and the host (`nanoclaw.service`, Type=notify, with the bot's
  token and the model key as credentials). Every tool call is a transient unit there.

The machine's root is thrown away at every stop; what must last is bound in from `DATA`
(default `~/.local/share/nanoclaw`):

| in DATA         | in the machine      | what                                             |
|-----------------|---------------------|--------------------------------------------------|
| `machine/etc`   | `/etc/nanoclaw`     | config.toml, policy.json, secrets/ (each `up`)   |
| `machine/state` | `/var/lib/nanoclaw` | the host's data: database, crypto, groups, ...   |
| `machine/agents`| `/var/lib/nanoclaw-agent` | each group's agent unit's own state: transcripts |
| `machine/opt`   | `/opt/nanoclaw`     | a venv of the machine's python3 with the deps    |
| the checkout    | `/opt/nanoclaw-src` | nanoclaw itself, read-only, on the venv's path   |

The venv is made once (again when the dependencies change): the wheels are fetched here
with this Python's pip (its configuration and cache) and installed offline in the machine.
A second `up` boots, starts the units and is serving in seconds. SIGINT or SIGTERM (Ctrl-C,
or `nanoclaw down` from elsewhere) powers the machine off, which stops the host gracefully,
then stops Synapse; the data stays.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from nanoclaw.appliance.machine import (
    REPO,
    ApplianceError,
    NspawnMachine,
    machine_available,
    rootfs,
)
from nanoclaw.appliance.machine_files import (
    SOURCE,
    WHEELS,
    ModelSettings,
    model_settings,
    run,
    say,
    setup_script,
    write_machine_files,
)
from nanoclaw.appliance.machine_venv import fetch_wheels, install_venv, venv_stamp
from nanoclaw.appliance.quickstart import QuickstartState, prepare, write_private
from nanoclaw.broker.agent_unit import STATE_ROOT

DEFAULT_DATA = Path.home() / ".local/share/nanoclaw"
MACHINE_NAME = "nanoclaw"
RUN_FILE = "appliance.json"  # while it runs: who to signal, where the machine is
LOG_UNITS = ("-u", "nanoclaw*", "-u", "nanoclaw-tool-*")


# -- running it -------------------------------------------------------------------------


def running(data: Path) -> dict[str, int] | None:
    """The running appliance's process and machine, if one runs on `data`."""
    try:
        info = json.loads((data / RUN_FILE).read_text())
        os.kill(int(info["pid"]), 0)
        return {"pid": int(info["pid"]), "machine_pid": int(info["machine_pid"])}
    except (FileNotFoundError, ProcessLookupError, ValueError, KeyError):
        return None


class Appliance:
    def __init__(self, data: Path, port: int, model: ModelSettings) -> None:
        self.data = data
        self.port = port
        self.model = model
        self.homeserver = EmbeddedHomeserver(data / "homeserver", port=port)
        self.machine: NspawnMachine | None = None
        self.state: QuickstartState | None = None

    async def start(self) -> None:
        began = time.monotonic()
        image = rootfs()
        say(f"starting Synapse on 127.0.0.1:{self.port}")
        await self.homeserver.spawn()  # it starts while the wheels come or the machine boots
        for sub in ("etc", "state", "agents", "opt"):
            (self.data / "machine" / sub).mkdir(parents=True, exist_ok=True)
        wheels: Path | None = None
        stamp_file = self.data / "machine/opt/venv/.stamp"
        stamp = venv_stamp(_machine_python(image))
        try:
            if not stamp_file.exists() or stamp_file.read_text().strip() != stamp:
                wheels = Path(tempfile.mkdtemp(prefix="wheels-", dir=self.data / "machine"))
                os.chmod(wheels, 0o755)
                fetch_wheels(wheels)
            binds = [
                (REPO, SOURCE, False),
                (self.data / "machine/etc", "/etc/nanoclaw", True),
                (self.data / "machine/state", "/var/lib/nanoclaw", True),
                (self.data / "machine/agents", STATE_ROOT, True),
                (self.data / "machine/opt", "/opt/nanoclaw", True),
            ]
            if wheels is not None:
                binds.append((wheels, WHEELS, False))
            say(f"booting the machine (systemd-nspawn, {image.name})")
            self.machine = machine = NspawnMachine(image, MACHINE_NAME, binds)
            machine.start()
            write_private(
                self.data / RUN_FILE,
                json.dumps({"pid": os.getpid(), "machine_pid": machine.pid}) + "\n",
            )
            if wheels is not None:
                install_venv(machine, stamp)
        finally:
            if wheels is not None:
                shutil.rmtree(wheels, ignore_errors=True)
        await self.homeserver.wait_ready()
        self.state = state = await prepare(self.homeserver, self.data)
        write_machine_files(self.data, state, self.model)
        run(machine, setup_script())
        say("starting the units: broker, host")
        run(machine, "systemctl start nanoclaw-sandboxd.socket")
        status, out = machine.execute("systemctl start nanoclaw.service", timeout=330)
        if status != 0:
            journal = machine.execute("journalctl -u nanoclaw --no-pager -n 60 -o cat")[1]
            raise ApplianceError(f"nanoclaw.service did not start:\n{out}\n{journal}")
        self.started_in = time.monotonic() - began

    def report(self) -> str:
        assert self.machine is not None and self.state is not None
        state, machine = self.state, self.machine
        doctor = machine.execute(
            "systemd-run --wait --pipe --quiet -p User=nanoclaw -p Group=nanoclaw "
            "-p LoadCredential=matrix-token:/etc/nanoclaw/secrets/matrix-token "
            "-p LoadCredential=anthropic-key:/etc/nanoclaw/secrets/anthropic-key "
            "/usr/local/bin/nanoclaw doctor --config /etc/nanoclaw/config.toml",
            timeout=60,
        )[1]
        units = machine.execute(
            "systemctl list-units --all --plain --no-legend 'nanoclaw*' | "
            "awk '{printf \"%-30s %s (%s)\\n\", $1, $3, $4}'"
        )[1]
        owner = state.owner
        given = "subscription token given" if self.model.subscription else "key given"
        model = (
            f"{given}{', endpoint ' + self.model.base_url if self.model.base_url else ''}"
            if self.model.api_key
            else f"no key; endpoint {self.model.base_url}"
            if self.model.base_url
            else "NO KEY: the bot answers every message with what to configure. Stop, then "
            "run `scripts/up` again with ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN set (or "
            "--api-key-file FILE, or --base-url URL for an Anthropic-compatible endpoint)"
        )
        me = os.environ.get("NANOCLAW_UP_COMMAND", "nanoclaw")
        data_flag = "" if self.data == DEFAULT_DATA else f" --data-dir {self.data}"
        return f"""
nanoclaw is up (in {self.started_in:.0f} s).

Running:
  Synapse      {state.homeserver}  (on this machine; data in {self.data}/homeserver)
  machine      systemd-nspawn {MACHINE_NAME}, PID 1 is {machine.pid} here; its units:
{_indent(units, 4)}
Resource limits this machine cannot enforce:
{_indent(_limitations(machine), 2)}
nanoclaw doctor (in the machine, as the service's user):
{_indent(doctor, 2)}
Model: {model}

Chat:   {me} chat{data_flag}            (the main room)
        {me} chat{data_flag} example    (the example group)
        or any Matrix client: homeserver {state.homeserver}
        user {owner.user_id}  password {owner.password}
Logs:   {me} logs{data_flag} [-f] [JOURNALCTL-ARGS]   (journalctl in the machine)
Stop:   Ctrl-C, or `{me} down{data_flag}`. The data stays in {self.data}.
"""

    async def stop(self) -> None:
        if self.machine is not None:
            say("stopping the machine (the host finishes runs in progress first)")
            await asyncio.to_thread(self.machine.shutdown, 120.0)
        (self.data / RUN_FILE).unlink(missing_ok=True)
        await self.homeserver.stop()


def _machine_python(image: Path) -> str:
    """The machine's python3 (`python3.11`): its venv lasts as long as that does."""
    return os.readlink(image / "usr/bin/python3")


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.strip().splitlines())


def _limitations(machine: NspawnMachine) -> str:
    """Which resource limits systemd cannot enforce for tool units in this machine, as
    observed. (What the broker found, IP filtering and PID namespaces, `nanoclaw doctor`
    says, once.)"""
    lines = []
    probe = machine.execute(
        "systemd-run --wait --pipe --quiet -p TasksMax=16 -p MemoryMax=64M cat /proc/self/cgroup"
    )[1]
    controllers = {
        c
        for line in probe.splitlines()
        if ".service" in line
        for c in line.split(":")[1].split(",")
    }
    hybrid = machine.execute("stat -fc %T /sys/fs/cgroup")[1].strip() != "cgroup2fs"
    if hybrid or "pids" not in controllers:
        lines.append(
            "TasksMax=: no pids controller for the machine's systemd (cgroup v1 hybrid), so "
            "tool units run without a task limit"
        )
    if hybrid or "memory" not in controllers:
        lines.append(
            "MemoryMax=: no memory controller for the machine's systemd, so tool units run "
            "without a memory limit"
        )
    return "\n".join(lines) or "nothing: every limit holds here"


async def up(
    data: Path,
    port: int,
    api_key_file: Path | None = None,
    base_url: str | None = None,
) -> int:
    reason = machine_available()
    if reason is not None:
        raise ApplianceError(f"cannot boot the appliance's machine: {reason}")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(data / ".lock", "w")  # held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ApplianceError(f"already running on {data}; `scripts/up down` stops it") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    appliance = Appliance(data, port, model_settings(data, api_key_file, base_url))
    starting = asyncio.create_task(appliance.start())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            say("interrupted while starting")
            starting.cancel()
            return 130
        starting.result()
        print(appliance.report(), flush=True)
        while not stop.is_set():
            machine = appliance.machine
            assert machine is not None
            if machine.pid == 0 or not Path(f"/proc/{machine.pid}").exists():
                say("the machine stopped by itself")
                return 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
        return 0
    finally:
        stopped.cancel()
        await appliance.stop()
        say("stopped; the data stays for the next `scripts/up`")
        lock.close()


def down(data: Path, timeout: float = 150) -> int:
    info = running(data)
    if info is None:
        say(f"not running on {data}")
        return 0
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running(data) is None:
            say("stopped")
            return 0
        time.sleep(0.2)
    raise ApplianceError(f"process {info['pid']} did not stop within {timeout:.0f} s")


def enter(data: Path, argv: Sequence[str]) -> int:
    """Run a command in the running machine (journalctl, systemctl), as root, on this
    terminal."""
    info = running(data)
    if info is None:
        raise ApplianceError(f"not running on {data}: start it with `scripts/up`")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": os.environ.get("TERM", "dumb"),
    }
    command = ["nsenter", f"--target={info['machine_pid']}", "--all", "--", *argv]
    return subprocess.run(command, env=env).returncode


def logs(data: Path, args: Sequence[str]) -> int:
    extra = list(args) or ["-n", "200"]
    return enter(data, ["journalctl", "--no-pager", *LOG_UNITS, *extra])
