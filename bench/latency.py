"""Benchmark: message-to-reply latency (cold and warm groups) and the host's memory, with
the CLI as the host's child and confined in an agent unit.

One command: `.venv/bin/python -m bench.latency [--messages 100] [--appliance-messages 60]`
(as root for the second part). First it starts a real Synapse, the scripted model
(answering instantly) and the real host, with no broker (the CLI is the host's child), and
measures from a human's send to the bot's reply arriving at the human's client:
- baseline: the same round trip with a trivial nio echo bot instead of nanoclaw, which is
  Synapse's own cost (two events persisted, two syncs);
- warm: a group whose CLI process is already running;
- cold: each message after `/new`, so the CLI is spawned and a fresh session started;
- the bare SDK's own cold cost (`query()` spawning a CLI, no Matrix, no host), as the
  floor that a cold group cannot go below.
It also records the host's RSS idle and with 10 groups active (their CLI processes
counted separately).

Then, under "appliance", the same replies in the whole Quickstart appliance (Synapse, and
the broker and host as systemd units in the nspawn machine, encrypted rooms), with the CLI
confined (each group's in an agent unit of its own, the default) and unconfined
(`confine_agent = false`), the modes taking turns: warm and cold replies, `/new`, the agent
unit's start in systemd, and the memory of the host's process and of each CLI, read in the
machine (bench/appliance_latency.py says how). Without root it records why it was skipped.
The 1-min load average is recorded along the way. Results go to bench/results/latency.json
and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, query
from nio import AsyncClient, RoomMessageText

from bench import appliance_latency
from bench.stats import summary
from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from tests.support.matrix_human import Human
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel
from tests.support.world import World, echo

RESULTS = Path(__file__).parent / "results" / "latency.json"


async def round_trip(human: Human, room: str, sender: str, text: str) -> float:
    before = len(human.messages_from(sender, room))
    start = time.perf_counter()
    await human.send(room, text)
    await human.wait_for(lambda: len(human.messages_from(sender, room)) > before, 60, "reply")
    return time.perf_counter() - start


async def baseline(world: World, count: int) -> list[float]:
    """Synapse's own round trip: a nio bot that echoes as fast as it can."""
    echo_account = await world.account("echo")
    room = await world.alice.create_room([echo_account.user_id], name="baseline")
    bot = AsyncClient(world.homeserver.url, echo_account.user_id, device_id=echo_account.device_id)
    bot.restore_login(echo_account.user_id, echo_account.device_id, echo_account.access_token)
    await bot.join(room)
    await bot.sync(timeout=0)

    async def answer(room_obj: Any, event: RoomMessageText) -> None:
        if event.sender != echo_account.user_id:
            await bot.room_send(
                room_obj.room_id, "m.room.message", {"msgtype": "m.text", "body": "echo"}
            )

    bot.add_event_callback(answer, RoomMessageText)  # type: ignore[arg-type]
    task = asyncio.create_task(bot.sync_forever(timeout=30_000))
    await world.alice.wait_joined(room, echo_account.user_id)
    try:
        return [
            await round_trip(world.alice, room, echo_account.user_id, f"b{i}") for i in range(count)
        ]
    finally:
        task.cancel()
        await bot.close()


async def sdk_floor(model: ScriptedModel, root: Path, count: int) -> list[float]:
    """The bare SDK: one fresh CLI process per query, no Matrix, no host. The cold floor."""
    root.mkdir(parents=True, exist_ok=True)
    options = ClaudeAgentOptions(
        tools=[],
        setting_sources=[],
        cwd=str(root),
        env={
            "ANTHROPIC_BASE_URL": model.url,
            "ANTHROPIC_API_KEY": "sk-bench",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CONFIG_DIR": str(root / "claude"),
            "HOME": str(root / "home"),
        },
    )
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        async for _message in query(
            prompt="<messages><message>hi</message></messages>", options=options
        ):
            pass
        samples.append(time.perf_counter() - start)
    return samples


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mib(pid: int) -> float:
    total = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    return total


async def main(count: int, appliance_count: int) -> dict[str, Any]:
    load = {"before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, ScriptedModel(echo) as model:
        root = Path(tmp)
        async with EmbeddedHomeserver(root / "hs", port=free_port()) as homeserver:
            floor = await sdk_floor(model, root / "sdk", max(10, count // 5))
            world = World(homeserver, model, root / "world")
            await world.setup()
            try:
                base = await baseline(world, count)
                rooms = [
                    await world.alice.create_room([world.bot.user_id], name=f"g{i}")
                    for i in range(10)
                ]
                for i, room in enumerate(rooms):
                    world.groups[f"g{i}"] = {"room_id": room, "requires_trigger": False}
                host = await world.start_host()
                assert host.process is not None
                pid = host.process.pid
                for room in rooms:
                    await world.alice.wait_joined(room, world.bot.user_id)
                await asyncio.sleep(1)
                idle_rss = rss_mib(pid)
                bot = world.bot.user_id
                await round_trip(world.alice, world.main_room, bot, "warm-up")
                warm = [
                    await round_trip(world.alice, world.main_room, bot, f"w{i}")
                    for i in range(count)
                ]
                cold = []
                for i in range(count):
                    await round_trip(world.alice, world.main_room, bot, "/new")
                    cold.append(await round_trip(world.alice, world.main_room, bot, f"c{i}"))
                for room in rooms:
                    await round_trip(world.alice, room, bot, "wake up")
                active_rss, cli_rss = rss_mib(pid), children_rss_mib(pid)
            finally:
                await world.close()
    load["after_host_alone"] = round(os.getloadavg()[0], 2)
    appliance = (
        await appliance_latency.measure(appliance_count) if appliance_count else {"skipped": "0"}
    )
    load["after"] = round(os.getloadavg()[0], 2)
    base_s, warm_s, cold_s = summary(base), summary(warm), summary(cold)
    return {
        "messages": count,
        "synapse_round_trip": base_s,
        "warm": warm_s,
        "cold": cold_s,
        "bare_sdk_query_cold_floor": summary(floor),
        "warm_overhead_p50_ms": round(warm_s["p50_ms"] - base_s["p50_ms"], 1),
        "host_rss_idle_mib": round(idle_rss, 1),
        "host_rss_10_active_groups_mib": round(active_rss, 1),
        "cli_processes_rss_10_active_groups_mib": round(cli_rss, 1),
        "appliance": appliance,
        "load_average_1min": load,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument(
        "--appliance-messages",
        type=int,
        default=60,
        help="warm and cold replies in each mode in the appliance (0: leave it out)",
    )
    args = parser.parse_args()
    result = asyncio.run(main(args.messages, args.appliance_messages))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
