"""`nanoclaw up`: the whole appliance on this machine, with one command.

What runs where:

* On this machine, as this process's children: the embedded Synapse (loopback only, data
  in `DATA/homeserver`) and a systemd booted with systemd-nspawn from the cached Debian
  rootfs (`scripts/rootfs`; nanoclaw/appliance/machine.py). The machine shares this
  machine's network, so each side reaches the other on 127.0.0.1.
* In the machine, as systemd units from `units/` exactly as shipped: the port filter, the
  broker's socket and service, and the host (`nanoclaw.service`, Type=notify, with the bot's
  token and the model key as credentials). Every tool call is a transient unit there.

The machine's root is thrown away at every stop; what must last is bound in from `DATA`
(default `~/.local/share/nanoclaw`):

| in DATA         | in the machine      | what                                             |
|-----------------|---------------------|--------------------------------------------------|
| `machine/etc`   | `/etc/nanoclaw`     | config.toml, policy.json, secrets/ (each `up`)   |
| `machine/state` | `/var/lib/nanoclaw` | the host's data: database, crypto, groups, ...   |
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
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from nanoclaw.appliance.machine import (
    REPO,
    ApplianceError,
    NspawnMachine,
    machine_available,
    rootfs,
)
from nanoclaw.appliance.quickstart import QuickstartState, prepare, write_private

DEFAULT_DATA = Path.home() / ".local/share/nanoclaw"
MACHINE_NAME = "nanoclaw"
SOURCE = "/opt/nanoclaw-src"
VENV = "/opt/nanoclaw/venv"
WHEELS = "/opt/nanoclaw-wheels"
RUN_FILE = "appliance.json"  # while it runs: who to signal, where the machine is
# Each group's tool units run as a user of their own.
GROUP_UIDS = {"main": 61000, "example": 61001}
UNITS = (
    "nanoclaw-port-filter.service",
    "nanoclaw-sandboxd.socket",
    "nanoclaw-sandboxd.service",
    "nanoclaw.service",
)
SCRIPTS = {
    "nanoclaw": "nanoclaw.cli",
    "nanoclaw-sandboxd": "nanoclaw.broker.sandboxd",
    "nanoclaw-port-filter": "nanoclaw.broker.port_filter",
}
LOG_UNITS = ("-u", "nanoclaw*", "-u", "nanoclaw-tool-*")


@dataclass(frozen=True)
class ModelSettings:
    api_key: str | None
    base_url: str | None


# -- the files the machine gets ---------------------------------------------------------


def render_config(state: QuickstartState, model: ModelSettings) -> str:
    model_lines = []
    if model.api_key:
        model_lines.append('api_key_credential = "anthropic-key"')
    if model.base_url:
        model_lines.append(f"base_url = {json.dumps(model.base_url)}")
    return f"""\
# Written by `nanoclaw up` at every start (change the model with its options or
# environment: ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, --api-key-file, --base-url).
data_dir = "/var/lib/nanoclaw"
assistant_name = "Andy"
sandbox_socket = "/run/nanoclaw/sandbox.sock"

[matrix]
homeserver = {json.dumps(state.homeserver)}
user_id = {json.dumps(state.bot.user_id)}
access_token_credential = "matrix-token"
owners = [{json.dumps(state.owner.user_id)}]

[model]
{chr(10).join(model_lines)}

[groups.main]
room_id = {json.dumps(state.rooms["main"])}
main = true

# An ordinary group: its own memory, workspace and tool user, no network. Only the owner
# is in its room, so every message there is for the agent.
[groups.example]
room_id = {json.dumps(state.rooms["example"])}
requires_trigger = false
"""


def render_policy() -> str:
    groups: dict[str, dict[str, object]] = {
        folder: {"uid": uid, **({"main": True} if folder == "main" else {})}
        for folder, uid in GROUP_UIDS.items()
    }
    policy = {
        "version": 1,
        "data_dir": "/var/lib/nanoclaw",
        "protected_paths": ["/etc/nanoclaw"],
        "groups": groups,
    }
    return json.dumps(policy, indent=2) + "\n"


def setup_script() -> str:
    """Run as root in the machine at every boot (its root is fresh each time): users,
    directories and commands as the NixOS module would make them, then the units."""
    tool_users = "".join(f"u nanoclaw-tool-{g} {uid} - -\n" for g, uid in GROUP_UIDS.items())
    # Each group's workspace is its tool user's alone: the host never reads or writes it.
    folders = "d /var/lib/nanoclaw/groups 0750 nanoclaw nanoclaw -\n"
    folders += "".join(
        f"d /var/lib/nanoclaw/groups/{g} 0700 nanoclaw-tool-{g} nanoclaw-tool-{g} -\n"
        for g in GROUP_UIDS
    )
    links = "".join(f"ln -sfn {VENV}/bin/{name} /usr/local/bin/{name}\n" for name in SCRIPTS)
    units = " ".join(f"{SOURCE}/units/{unit}" for unit in UNITS)
    return f"""set -e
mkdir -p /etc/sysusers.d /etc/tmpfiles.d
install -m 0644 {SOURCE}/units/nanoclaw.sysusers /etc/sysusers.d/nanoclaw.conf
install -m 0644 {SOURCE}/units/nanoclaw.tmpfiles /etc/tmpfiles.d/nanoclaw.conf
printf %s {shlex.quote(tool_users)} > /etc/sysusers.d/nanoclaw-tools.conf
printf %s {shlex.quote(folders)} > /etc/tmpfiles.d/nanoclaw-groups.conf
systemd-sysusers
systemd-tmpfiles --create
{links}install -m 0644 {units} /etc/systemd/system/
systemctl daemon-reload
"""


# -- the venv in the machine ------------------------------------------------------------


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "pip"]


def venv_stamp(machine_python: str) -> str:
    text = "\n".join([machine_python, *requirements()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fetch_wheels(directory: Path) -> None:
    """The wheels of nanoclaw's dependencies for the machine's Python (3.11), fetched with
    this Python's pip, so its configuration (index, certificates) and cache apply."""
    (directory / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    if sys.version_info[:2] == (3, 11):
        command = ["wheel", "--wheel-dir", str(directory)]
    else:  # binary wheels for the machine's interpreter (CPython 3.11, glibc 2.36)
        legacy = ("manylinux2014", "manylinux2010", "manylinux1")
        platforms = [f"manylinux_2_{minor}" for minor in range(36, 4, -1)] + list(legacy)
        command = ["download", "--dest", str(directory), "--only-binary=:all:"]
        command += ["--python-version", "3.11", "--implementation", "cp"]
        for platform in platforms:  # pip takes each tag literally: list every one that fits
            command += ["--platform", f"{platform}_x86_64"]
    say("fetching nanoclaw's dependencies for the machine (once; about a minute)")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *command, "--quiet", "--disable-pip-version-check",
         "-r", str(directory / "requirements.txt")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # pip warns about every configured index location that does not exist: not news.
    noise = "is ignored: it is neither a file nor a directory"
    print("".join(line for line in done.stdout.splitlines(True) if noise not in line), end="")
    if done.returncode != 0:
        raise ApplianceError("pip could not fetch the dependencies (see above)")


def install_venv(machine: NspawnMachine, stamp: str) -> None:
    say("installing them into the machine's venv")
    pip = f"$(ls {WHEELS}/pip-*.whl | tail -n1)/pip"
    scripts = "".join(
        f"printf '#!{VENV}/bin/python\\nimport sys\\nfrom {module} import main\\n"
        f"sys.exit(main())\\n' > {VENV}/bin/{name}; chmod 0755 {VENV}/bin/{name}\n"
        for name, module in SCRIPTS.items()
    )
    run(
        machine,
        f"""set -e
rm -rf {VENV}
python3 -m venv --without-pip {VENV}
{VENV}/bin/python {pip} install --quiet --no-index --find-links {WHEELS} \\
  --disable-pip-version-check -r {WHEELS}/requirements.txt
echo {SOURCE} > $(echo {VENV}/lib/python3*/site-packages)/nanoclaw-src.pth
{scripts}echo {stamp} > {VENV}/.stamp
""",
        timeout=900,
    )


# -- running it -------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"nanoclaw: {text}", flush=True)


def run(machine: NspawnMachine, command: str, timeout: float = 120) -> str:
    status, out = machine.execute(command, timeout=timeout)
    if status != 0:
        raise ApplianceError(f"in the machine, `{command.strip()[:200]}` failed ({status}):\n{out}")
    return out


def model_settings(data: Path, api_key_file: Path | None, base_url: str | None) -> ModelSettings:
    """The key: --api-key-file, else $ANTHROPIC_API_KEY, else the one kept from a run before.
    The base URL likewise: --base-url, $ANTHROPIC_BASE_URL, the kept one."""
    secrets = data / "machine/etc/secrets"
    key = api_key_file.read_text().strip() if api_key_file else os.environ.get("ANTHROPIC_API_KEY")
    if not key and (secrets / "anthropic-key").exists():
        key = (secrets / "anthropic-key").read_text().strip()
    kept = data / "model-base-url"
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL")
    if url:
        kept.write_text(url + "\n")
    elif kept.exists():
        url = kept.read_text().strip()
    return ModelSettings(key or None, url or None)


def write_machine_files(data: Path, state: QuickstartState, model: ModelSettings) -> None:
    etc = data / "machine/etc"
    os.chmod(etc, 0o755)
    (etc / "config.toml").write_text(render_config(state, model))
    (etc / "policy.json").write_text(render_policy())
    for name in ("config.toml", "policy.json"):
        os.chmod(etc / name, 0o644)
    # Both files must exist for the unit's LoadCredential=; an empty key is no key.
    write_private(etc / "secrets/matrix-token", state.bot.access_token)
    write_private(etc / "secrets/anthropic-key", model.api_key or "")


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
        for sub in ("etc", "state", "opt"):
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
        say("starting the units: port filter, broker, host")
        # The port filter cannot load nftables here (see limitations): report, go on.
        machine.execute("systemctl start nanoclaw-port-filter.service")
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
        model = (
            f"key given{', endpoint ' + self.model.base_url if self.model.base_url else ''}"
            if self.model.api_key
            else f"no key; endpoint {self.model.base_url}"
            if self.model.base_url
            else "NO KEY: the bot answers every message with what to configure. Stop, then "
            "run `scripts/up` again with ANTHROPIC_API_KEY set (or --api-key-file FILE, or "
            "--base-url URL for an Anthropic-compatible endpoint)"
        )
        me = os.environ.get("NANOCLAW_UP_COMMAND", "nanoclaw")
        data_flag = "" if self.data == DEFAULT_DATA else f" --data-dir {self.data}"
        return f"""
nanoclaw is up (in {self.started_in:.0f} s).

Running:
  Synapse      {state.homeserver}  (on this machine; data in {self.data}/homeserver)
  machine      systemd-nspawn {MACHINE_NAME}, PID 1 is {machine.pid} here; its units:
{_indent(units, 4)}
Not enforced in this machine (groups that would need it are refused, not weakened):
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
    """What systemd cannot enforce for tool units in this machine, as observed."""
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
    unified = any(line.startswith("0::") and ".service" in line for line in probe.splitlines())
    hybrid = machine.execute("stat -fc %T /sys/fs/cgroup")[1].strip() != "cgroup2fs"
    if hybrid or "pids" not in controllers:
        lines.append("TasksMax=: no pids controller for the machine's systemd (cgroup v1 hybrid)")
    if hybrid or "memory" not in controllers:
        lines.append("MemoryMax=: no memory controller for the machine's systemd")
    if hybrid or not unified:
        lines.append(
            "IPAddressDeny=/IPAddressAllow=: no cgroup BPF here, so groups with egress are "
            "refused by the broker (these groups have none)"
        )
    if machine.execute("systemctl is-failed --quiet nanoclaw-port-filter.service")[0] == 0:
        lines.append(
            "the port filter: nftables cannot be loaded from a machine that shares this "
            "machine's network, so groups with domains are refused (these groups have none)"
        )
    return "\n".join(lines) or "nothing: every protection holds here"


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
