"""The Quickstart, as a newcomer runs it: `scripts/up`, then `nanoclaw chat`, then down and up.

The appliance is the real one: Synapse here, a systemd booted with systemd-nspawn from the
cached rootfs, and in it the broker and the host as the units of units/.
The model is the scripted server, given as an Anthropic-compatible base URL with a key that
it insists on, so every answer also proves the key went in as a credential and through the
host's credential proxy. Needs root, like tests/test_sandbox.py (NANOCLAW_ALLOW_NO_MACHINE=1
turns that into a loud skip).

The story, in one test to boot the appliance only three times:
1. Up without a key: everything runs, and the bot says what to configure.
2. Up again with the base URL and key: `nanoclaw chat` (stdin in, replies out) asks each
   group to run `id -u; pwd`; the answers show the group's own tool user and
   /workspace/group, so the command ran in a transient unit of the broker, not in the host.
3. `scripts/up down`, then up with no model settings at all (they are kept): the same
   session is resumed and the model sees the earlier conversation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw.appliance.machine_files import AGENT_UIDS
from nanoclaw.host.agent import NO_MODEL_KEY
from tests.support.machine import require_machine
from tests.support.net import free_port
from tests.support.scripted_model import ModelRequest, ScriptedModel, ToolCall

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-quickstart-0123456789"
UIDS = {"main": 61000, "example": 61001}
STARTED: list[subprocess.Popen[bytes]] = []


def script(request: ModelRequest) -> str | ToolCall:
    if request.tool_results:
        return "tool said: " + request.tool_results[-1]["content"]
    if "run it" in request.last_user_text:
        return ToolCall("mcp__nanoclaw__bash", {"command": "id -u; pwd"})
    if fetch := re.search(r"fetch (http\S+)", request.last_user_text):
        return ToolCall("mcp__nanoclaw__fetch", {"url": fetch[1]})
    if "do you remember" in request.last_user_text:
        earlier = request.all_text.replace(request.last_user_text, "")
        return "I remember: run it" if "run it" in earlier else "I remember nothing"
    return "hello from the model"


@pytest.fixture(autouse=True)
def stop_leftovers(tmp_path: Path) -> Iterator[None]:
    """A failed assertion must not leave the appliance (its machine, its Synapse) running,
    nor its venv (half a gigabyte, mostly the CLI) in pytest's kept temporary directories."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(150)
            except subprocess.TimeoutExpired:
                process.kill()  # the machine and Synapse die with it (PR_SET_PDEATHSIG)
                process.wait()
    STARTED.clear()
    shutil.rmtree(tmp_path / "data/machine/opt", ignore_errors=True)


def newcomer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NANOCLAW_UP"))}
    return {**env, **extra}


def up(data: Path, port: int, log: Path, env: dict[str, str], timeout: float = 900) -> str:
    """`scripts/up` in the background; its output once it says it is up."""
    began = time.monotonic()
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [str(REPO / "scripts/up"), "--data-dir", str(data), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    STARTED.append(process)
    while time.monotonic() - began < timeout:
        text = log.read_bytes()[offset:].decode(errors="replace")
        if "Stop:   Ctrl-C" in text:
            print(f"\nscripts/up was up in {time.monotonic() - began:.1f} s")
            return text
        if process.poll() is not None:
            raise AssertionError(f"scripts/up exited with {process.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError("scripts/up did not come up:\n" + log.read_text(errors="replace"))


def chat(data: Path, *lines: str, group: str = "main") -> str:
    """`nanoclaw chat`, driven as a pipe: the lines in, the replies out."""
    done = subprocess.run(
        [sys.executable, "-m", "nanoclaw.cli", "chat", "--data-dir", str(data), "--wait", "120"]
        + ([group] if group != "main" else []),
        input="".join(line + "\n" for line in lines).encode(),
        capture_output=True,
        timeout=180,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, f"chat: {done.returncode}\n{out}\n{done.stderr.decode()}"
    return out


def down(data: Path, log: Path) -> None:
    done = subprocess.run(
        [str(REPO / "scripts/up"), "down", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=200,
        env=newcomer_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    process = STARTED.pop()
    assert process.wait(30) == 0, log.read_text(errors="replace")


def appliance(data: Path, *args: str) -> list[str]:
    """The output lines of `scripts/up ARGS` for the running appliance."""
    done = subprocess.run(
        [str(REPO / "scripts/up"), *args[:1], "--data-dir", str(data), *args[1:]],
        capture_output=True,
        text=True,
        env=newcomer_env(),
    )
    return done.stdout.splitlines()


def broker_journal(data: Path) -> str:
    """What the broker and systemd said about it and the relays: for a failure's message."""
    units = ("-u", "nanoclaw-sandboxd.service", "-u", "nanoclaw-egress-*")
    return "\n".join(appliance(data, "shell", "journalctl", "--no-pager", "-n", "60", *units))


def session_of(data: Path, folder: str) -> str:
    database = sqlite3.connect(data / "machine/state/nanoclaw.db")
    try:
        row = database.execute("SELECT session_id FROM groups WHERE folder = ?", (folder,))
        return str(row.fetchone()[0])
    finally:
        database.close()


def test_up_chat_down_and_up_again(tmp_path: Path) -> None:
    require_machine()
    data, port, log = tmp_path / "data", free_port(), tmp_path / "up.log"
    with ScriptedModel(script) as model:
        model.api_key = KEY

        banner = up(data, port, log, newcomer_env())
        state = json.loads((data / "quickstart.json").read_text())
        assert oct((data / "quickstart.json").stat().st_mode & 0o777) == "0o600"
        owner = state["owner"]
        assert f"homeserver http://127.0.0.1:{port}" in banner
        assert f"user {owner['user_id']}  password {owner['password']}" in banner
        assert "nanoclaw.service               active (running)" in banner
        assert "nanoclaw-sandboxd.socket       active (running)" in banner
        assert "MemoryMax=" in banner and "NO KEY" in banner
        reply = chat(data, "hello")
        assert NO_MODEL_KEY.split(".")[0] in reply, reply
        assert not model.requests, "no key: the model is never asked"
        down(data, log)

        healthy = up(
            data, port, log, newcomer_env(ANTHROPIC_BASE_URL=model.url, ANTHROPIC_API_KEY=KEY)
        )
        # Nothing is reported as failed; what the machine cannot enforce is said once.
        assert "FAIL" not in healthy and " failed" not in healthy, healthy
        assert healthy.count("no cgroup BPF") <= 1 and "ip filtering" in healthy, healthy
        for group, uid in UIDS.items():
            reply = chat(data, "please run it", group=group)
            assert f"tool said: {uid}\n/workspace/group" in reply, (reply, broker_journal(data))
        # Each group's CLI runs in an agent unit of its own, as its agent user, while warm.
        listed = appliance(data, "shell", "systemctl", "list-units", "--plain", "--no-legend",
                           "--state=active", "nanoclaw-agent-*")  # fmt: skip
        agents = {line.split()[0].split("-")[2]: line.split()[0] for line in listed}
        assert sorted(agents) == ["example", "main"], listed
        for group, unit in agents.items():
            user = appliance(data, "shell", "systemctl", "show", "-P", "User", unit)
            assert user == [str(AGENT_UIDS[group])], (unit, user)
        assert f"its agent in `{agents['main']}`" in chat(data, "/status")
        # The example group's tools reach the web through its relay and the host's proxy,
        # which refuses a name outside the group's domains...
        refused = chat(data, "fetch http://github.com/", group="example")
        assert "nanoclaw egress proxy" in refused and "github.com" in refused, refused
        # ...and lets a listed one through (to the page, or to the proxy's own connection
        # error where this machine has no way to the internet).
        allowed = chat(data, "fetch http://example.com/", group="example")
        assert "Example Domain" in allowed or "nanoclaw egress proxy: cannot" in allowed, allowed
        # Without domains, no way out at all: main's fetch cannot even reach a proxy.
        assert "[exit status" in chat(data, "fetch http://example.com/"), "main has no egress"
        # The operator's way in, as the README writes it: a shell command in the machine.
        exec_id = appliance(data, "shell", "nanoclaw", "exec", "example", "--", "id", "-u")
        assert exec_id == ["61001"], exec_id
        assert all(r.headers["x-api-key"] == KEY for r in model.requests)
        journal = subprocess.run(
            [str(REPO / "scripts/up"), "logs", "--data-dir", str(data), "-o", "cat"],
            capture_output=True,
            text=True,
            env=newcomer_env(),
        ).stdout
        assert "agent run done" in journal and "nanoclaw-tool-main-" in journal, journal[-3000:]
        # The real journald got the host's native-protocol fields: one group's lines only.
        entries = [json.loads(line) for line in appliance(data, "logs", "-o", "json", "GROUP=main")]
        assert entries and {entry["GROUP"] for entry in entries} == {"main"}, entries[-3:]
        runs = [e for e in entries if "agent run done" in e["MESSAGE"]]
        assert runs and all("DURATION_MS" in e for e in runs), runs
        # Type=notify under a real systemd: READY=1 came (it is running) and STATUS= shows.
        status = "\n".join(appliance(data, "status"))
        assert 'Status: "2 groups; runs:' in status, status
        session = session_of(data, "main")
        down(data, log)

        began = time.monotonic()
        up(data, port, log, newcomer_env())  # the base URL and key are kept
        assert time.monotonic() - began < 60, "a second start reuses everything"
        reply = chat(data, "do you remember?")
        assert "I remember: run it" in reply, reply
        assert session_of(data, "main") == session
        down(data, log)
    assert "stopped; the data stays" in log.read_text()
