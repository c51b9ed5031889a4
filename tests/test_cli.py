"""The `nanoclaw` command refuses bad configuration before doing anything, with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nanoclaw.host.records import TaskSpec
from nanoclaw.host.store import Store

GOOD = """\
data_dir = "{data}"
[matrix]
homeserver = "http://127.0.0.1:1"
user_id = "@bot:localhost"
access_token_file = "{token}"
owners = ["@me:localhost"]
[groups.main]
room_id = "!main:localhost"
main = true
"""


def nanoclaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanoclaw.cli", *args], capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, text: str, token: bool = True) -> Path:
    token_file = tmp_path / "token"
    if token:
        token_file.write_text("syt_secret")
    path = tmp_path / "config.toml"
    path.write_text(text.format(data=tmp_path / "data", token=token_file))
    return path


def test_a_good_file_passes(tmp_path: Path) -> None:
    result = nanoclaw("check-config", "--config", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    assert "groups: main (main)" in result.stdout


def test_bad_key_is_named_and_run_does_nothing(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("[groups.main]", "[groups.Main]"))
    for command in ("check-config", "run"):
        result = nanoclaw(command, "--config", str(bad))
        assert result.returncode == 2
        assert "groups.Main: folder name must match" in result.stderr
    assert not (tmp_path / "data").exists(), "run stopped before touching the data directory"


def test_missing_secret_is_named(tmp_path: Path) -> None:
    result = nanoclaw("run", "--config", str(write(tmp_path, GOOD, token=False)))
    assert result.returncode == 2
    assert "matrix.access_token_file" in result.stderr
    assert "syt_secret" not in result.stderr


def test_unparseable_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "/x"\n[matrix\n')
    result = nanoclaw("check-config", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "line 2" in result.stderr


def test_policy_explain_prints_the_units_properties() -> None:
    example = str(Path(__file__).resolve().parent.parent / "policies" / "example.json")
    family = nanoclaw("policy", "explain", "family", "--policy", example)
    assert family.returncode == 0, family.stderr
    tool_unit = family.stdout.split("\n\n")[0]  # the agent unit follows
    assert "PrivateNetwork=yes" in tool_unit and "ProtectSystem=strict" in tool_unit
    assert "JoinsNamespaceOf" not in tool_unit, "no domains: a network of its own"
    online = nanoclaw("policy", "explain", "main", "--policy", example)
    assert "JoinsNamespaceOf=nanoclaw-egress-main.socket" in online.stdout
    assert "IPAddressDeny=" not in online.stdout
    assert '"https_proxy=http://***@127.0.0.1:3128"' in online.stdout
    assert "proxy" not in tool_unit.lower(), "no domains, no proxy variables"
    missing = nanoclaw("policy", "explain", "nope", "--policy", example)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_tasks_for_the_operator(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD)
    missing = nanoclaw("tasks", "list", "--config", str(config))
    assert missing.returncode == 1 and "the host has not run here yet" in missing.stderr
    (tmp_path / "data").mkdir()
    Store(tmp_path / "data" / "nanoclaw.db").close()
    listed = nanoclaw("tasks", "list", "--config", str(config))
    assert listed.returncode == 0 and listed.stdout.strip() == "no scheduled tasks"
    store = Store(tmp_path / "data" / "nanoclaw.db")
    store.declare_tasks([("plants", TaskSpec("main", "water", "interval", "1d", "isolated"), 1)])
    store.close()
    for action, expected in (
        ("pause", "paused task plants"),
        ("resume", "resumed task plants [main] active, every 1d"),
        ("run", "task plants will run now"),
    ):
        done = nanoclaw("tasks", action, "plants", "--config", str(config))
        assert done.returncode == 0 and done.stdout.startswith(expected), done.stderr
        assert "the host is not running: it sees this when it starts" in done.stdout
    refused = nanoclaw("tasks", "cancel", "plants", "--config", str(config))
    assert refused.returncode == 1 and "declared in the config file" in refused.stderr
    assert nanoclaw("tasks", "pause", "--config", str(config)).returncode == 2
