"""The appliance's half of bench/latency.py: replies with the CLI confined and unconfined.

The whole Quickstart appliance (nanoclaw.appliance.up.Appliance, as `scripts/up` runs it):
the embedded Synapse here, a systemd booted with systemd-nspawn from the cached rootfs, and
in it the broker and the host as the units of units/, with the scripted model (answering
instantly) as the model endpoint. The owner, at a client with a crypto store of its own
(the Quickstart's rooms are encrypted), sends to the main room and times each message from
its send to the bot's reply arriving, in two modes of the host:

- confined (the default): each group's CLI in an agent unit the broker starts
  (nanoclaw-agent-GROUP-ID.service), reached over pipes, the model through a relay;
- unconfined: `confine_agent = false` in the host's config, the CLI a child of the host in
  nanoclaw.service, as without a broker.

The modes take turns in SEGMENTS (confined, unconfined, unconfined, confined, twice), the
host restarted with the mode's config before each, so that other work on this machine
starting or stopping during the run weighs on both alike. Each segment: the first reply
after the host's start (recorded, not counted), warm replies, then cold ones (each after
`/new`, whose own reply, which waits for the old CLI to stop, is timed apart); it ends with
`/new` in both rooms, so that no mode resumes a session of the other's.
For each cold reply of the confined mode, systemd's own start of the new agent unit
(InactiveExitTimestamp to ActiveEnterTimestamp: fork, sandbox, exec) is read in the machine.
At the end of a segment the example group is woken too, and the memory of the host's
process and of each group's CLI is read in the machine (bench/unit_memory.py): VmRSS and
Pss of every process of the unit's cgroup, and systemd's MemoryCurrent where it has one.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summary
from bench.unit_memory import MARKER
from nanoclaw.appliance.machine import NspawnMachine, machine_available
from nanoclaw.appliance.machine_files import SOURCE, ModelSettings, render_config
from nanoclaw.appliance.up import Appliance
from tests.support.matrix_human import Human
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel
from tests.support.world import echo

KEY = "sk-bench-appliance-0123456789"
CONFINED, UNCONFINED = "confined", "unconfined"
SEGMENTS = (CONFINED, UNCONFINED, UNCONFINED, CONFINED) * 2
SANDBOX_LINE = 'sandbox_socket = "/run/nanoclaw/sandbox.sock"\n'
HOST_UNIT = "nanoclaw.service"
AGENT_UNITS = "nanoclaw-agent-*"
MIB = 1024


def host_config(appliance: Appliance, mode: str) -> str:
    """The Quickstart's config.toml, with `confine_agent = false` for the unconfined mode."""
    assert appliance.state is not None
    text = render_config(appliance.state, appliance.model)
    assert SANDBOX_LINE in text, "the Quickstart's config has no sandbox_socket line"
    if mode == UNCONFINED:
        text = text.replace(SANDBOX_LINE, SANDBOX_LINE + "confine_agent = false\n")
    return text


def in_machine(machine: NspawnMachine, command: str, timeout: float = 60) -> str:
    status, out = machine.execute(command, timeout=timeout)
    if status != 0:
        raise RuntimeError(f"in the machine, `{command}` failed ({status}):\n{out}")
    return out


def unit_memory(machine: NspawnMachine) -> dict[str, Any]:
    out = in_machine(machine, f"python3 {SOURCE}/bench/unit_memory.py '{AGENT_UNITS}' {HOST_UNIT}")
    line = next(line for line in out.splitlines() if line.startswith(MARKER))
    return dict(json.loads(line[len(MARKER) :]))


def activation_seconds(machine: NspawnMachine, group: str) -> float:
    """systemd's start of the group's (one) active agent unit: from leaving inactive (the
    start job running: fork, namespaces, mounts, credentials) to active (the CLI exec'd)."""
    out = in_machine(
        machine,
        f"for unit in $(systemctl list-units --plain --no-legend --state=active "
        f"'nanoclaw-agent-{group}-*' | cut -d' ' -f1); do systemctl show $unit "
        f"-p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic; done",
    )
    props = dict(line.split("=", 1) for line in out.split() if "=" in line)
    return (
        int(props["ActiveEnterTimestampMonotonic"]) - int(props["InactiveExitTimestampMonotonic"])
    ) / 1e6


def memory_of(sample: dict[str, Any]) -> dict[str, Any]:
    """The host's process and each group's CLI, in MiB, from one unit_memory sample. A CLI
    is any other process of the host's unit (unconfined) or of an agent unit (confined);
    its working directory says its group: DATA/sessions/GROUP/cwd, or the agent unit's
    state directory /var/lib/nanoclaw-agent/GROUP."""
    host = sample[HOST_UNIT]
    host_process = next(p for p in host["processes"] if p["pid"] == host["main_pid"])
    clis: dict[str, dict[str, Any]] = {}
    for unit, info in sample.items():
        for process in info["processes"]:
            if process is host_process:
                continue
            path = Path(process["cwd"])
            group = path.parent.name if path.name == "cwd" else path.name
            cli = clis.setdefault(group, {"processes": []})
            cli["processes"].append(process)
            if unit != HOST_UNIT:
                cli.update(unit=unit, **_current(info))
    return {
        "host_rss_mib": round(host_process["rss_kib"] / MIB, 1),
        "host_pss_mib": round(host_process["pss_kib"] / MIB, 1),
        "host_unit_memory_current_mib": _current(host)["memory_current_mib"],
        "cli": {
            group: {
                "rss_mib": round(sum(p["rss_kib"] for p in cli["processes"]) / MIB, 1),
                "pss_mib": round(sum(p["pss_kib"] for p in cli["processes"]) / MIB, 1),
                "processes": [p["name"] for p in cli["processes"]],
                **{k: v for k, v in cli.items() if k != "processes"},
            }
            for group, cli in sorted(clis.items())
        },
    }


def _current(info: dict[str, Any]) -> dict[str, float | None]:
    current = info["memory_current"]
    return {"memory_current_mib": None if current is None else round(current / 2**20, 1)}


class Bench:
    def __init__(self, appliance: Appliance, owner: Human) -> None:
        self.appliance = appliance
        self.owner = owner
        assert appliance.state is not None and appliance.machine is not None
        self.machine = appliance.machine
        self.bot = appliance.state.bot.user_id
        self.rooms = appliance.state.rooms
        self.samples: dict[str, dict[str, list[float]]] = {
            mode: {
                "warm": [],
                "cold": [],
                "new_command": [],
                "first_after_host_start": [],
                "agent_unit_activation": [],
                "host_restart": [],
            }
            for mode in (CONFINED, UNCONFINED)
        }
        self.memory: dict[str, list[dict[str, Any]]] = {CONFINED: [], UNCONFINED: []}
        self.load: dict[str, float] = {}

    async def round_trip(self, room: str, text: str) -> float:
        before = len(self.owner.messages_from(self.bot, room))
        start = time.perf_counter()
        await self.owner.send(room, text)
        await self.owner.wait_for(
            lambda: len(self.owner.messages_from(self.bot, room)) > before, 120, f"reply to {text}"
        )
        return time.perf_counter() - start

    async def restart_host(self, mode: str) -> float:
        config = self.appliance.data / "machine/etc/config.toml"
        config.write_text(host_config(self.appliance, mode))
        start = time.perf_counter()
        await asyncio.to_thread(in_machine, self.machine, f"systemctl restart {HOST_UNIT}", 330)
        return time.perf_counter() - start

    async def segment(self, index: int, mode: str, warm: int, cold: int) -> None:
        samples = self.samples[mode]
        main, example = self.rooms["main"], self.rooms["example"]
        samples["host_restart"].append(await self.restart_host(mode))
        await asyncio.sleep(1)
        idle = await asyncio.to_thread(unit_memory, self.machine)
        samples["first_after_host_start"].append(await self.round_trip(main, f"s{index} first"))
        samples["warm"] += [await self.round_trip(main, f"s{index} w{i}") for i in range(warm)]
        for i in range(cold):
            samples["new_command"].append(await self.round_trip(main, "/new"))
            samples["cold"].append(await self.round_trip(main, f"s{index} c{i}"))
            if mode == CONFINED:
                samples["agent_unit_activation"].append(
                    await asyncio.to_thread(activation_seconds, self.machine, "main")
                )
        await self.round_trip(example, f"s{index} wake up")
        active = await asyncio.to_thread(unit_memory, self.machine)
        self.memory[mode].append(
            {
                "host_rss_idle_mib": memory_of(idle)["host_rss_mib"],
                **memory_of(active),
            }
        )
        # Neither mode could resume the other's sessions: their transcripts are apart.
        for room in (main, example):
            await self.round_trip(room, "/new")
        self.load[f"after_segment_{index + 1}_{mode}"] = round(os.getloadavg()[0], 2)

    def result(self) -> dict[str, Any]:
        modes: dict[str, Any] = {}
        for mode, samples in self.samples.items():
            memory = self.memory[mode]
            modes[mode] = {
                "warm": summary(samples["warm"]),
                "cold": summary(samples["cold"]),
                "new_command": summary(samples["new_command"]),
                "first_after_host_start_ms": [
                    round(s * 1000, 1) for s in samples["first_after_host_start"]
                ],
                "host_restart_s": [round(s, 2) for s in samples["host_restart"]],
                **(
                    {"agent_unit_activation": summary(samples["agent_unit_activation"])}
                    if samples["agent_unit_activation"]
                    else {}
                ),
                "host_rss_idle_mib": _mean(m["host_rss_idle_mib"] for m in memory),
                "host_rss_2_warm_groups_mib": _mean(m["host_rss_mib"] for m in memory),
                "cli_rss_each_mib": _mean(
                    cli["rss_mib"] for m in memory for cli in m["cli"].values()
                ),
                "cli_pss_each_mib": _mean(
                    cli["pss_mib"] for m in memory for cli in m["cli"].values()
                ),
                "memory_by_segment": memory,
            }
        confined, unconfined = modes[CONFINED], modes[UNCONFINED]
        cost = {
            f"{series}_{stat}": round(confined[series][stat] - unconfined[series][stat], 1)
            for series in ("warm", "cold", "new_command")
            for stat in ("p50_ms", "p95_ms")
        }
        for name in ("host_rss_2_warm_groups_mib", "cli_rss_each_mib", "cli_pss_each_mib"):
            cost[name] = round(confined[name] - unconfined[name], 1)
        return {**modes, "confinement_cost": cost}


def _mean(values: Any) -> float:
    values = list(values)
    return round(statistics.fmean(values), 1) if values else 0.0


async def measure(messages: int) -> dict[str, Any]:
    """`messages` warm and `messages` cold replies in each mode, split over its segments."""
    reason = machine_available()
    if reason is not None:
        return {"skipped": f"cannot boot the appliance's machine: {reason}"}
    per_segment = max(1, messages // SEGMENTS.count(CONFINED))
    load = {"before": round(os.getloadavg()[0], 2)}
    with (
        tempfile.TemporaryDirectory(prefix="nanoclaw-bench-") as tmp,
        ScriptedModel(echo) as model,
    ):
        model.api_key = KEY
        data = Path(tmp) / "data"
        data.mkdir(mode=0o700)
        appliance = Appliance(data, free_port(), ModelSettings(KEY, model.url))
        owner: Human | None = None
        try:
            began = time.perf_counter()
            await appliance.start()
            started = time.perf_counter() - began
            assert appliance.state is not None and appliance.machine is not None
            owner = await Human(
                appliance.state.homeserver, appliance.state.owner, data / "chat"
            ).start()
            bench = Bench(appliance, owner)
            load["after_start"] = round(os.getloadavg()[0], 2)
            for index, mode in enumerate(SEGMENTS):
                print(f"appliance: segment {index + 1}/{len(SEGMENTS)}, {mode}", flush=True)
                await bench.segment(index, mode, per_segment, per_segment)
            result = bench.result()
            undecryptable = owner.undecryptable
            boot = appliance.machine.boot_seconds
        finally:
            if owner is not None:
                await owner.close()
            await appliance.stop()
    return {
        "messages_per_mode": per_segment * SEGMENTS.count(CONFINED),
        "segments": list(SEGMENTS),
        "appliance_started_s": round(started, 1),
        "machine_boot_s": round(boot, 1),
        "undecryptable_replies": undecryptable,
        **result,
        "load_average_1min": {**load, **bench.load},
    }
