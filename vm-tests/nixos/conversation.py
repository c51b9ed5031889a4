# A conversation on the NixOS node (NixOS only: the Debian node has no Synapse): the owner
# asks the bot in the main room, the scripted model calls the bash tool, the broker runs
# it in a transient unit of the group, and the reply carries what it printed. Starting
# nanoclaw.service brings up Synapse, the model and the accounts first (node.nix).
import json
import time

start_all()
ensure_node()

RUN = "/run/nanoclaw-vm"
HOMESERVER = "http://127.0.0.1:8018"
BOT = "@nanoclaw:localhost"


def client(method: str, path: str, body: object = None) -> dict:
    token = machine.succeed(f"cat {RUN}/owner-token").strip()
    data = f"--data {shlex.quote(json.dumps(body))} " if body is not None else ""
    return json.loads(
        machine.succeed(
            f"curl -sS --fail -X {method} -H 'Authorization: Bearer {token}' "
            f"-H 'Content-Type: application/json' {data}{shlex.quote(HOMESERVER + path)}"
        )
    )


with subtest("nanoclaw.service starts as the module declares it"):
    # Type=notify: the start returns once the host has synced and reached the broker.
    machine.succeed("systemctl start nanoclaw.service", timeout=400)
    shown = machine.succeed("systemctl show nanoclaw.service -p Type -p User -p WatchdogUSec")
    assert "Type=notify" in shown and "User=nanoclaw" in shown, shown
    assert "WatchdogUSec=30s" in shown, shown
    # LoadCredential=: systemd's copies, which only the host's unit sees.
    credentials = machine.succeed("ls /run/credentials/nanoclaw.service").split()
    assert sorted(credentials) == ["anthropic-key", "matrix-token"], credentials

room = machine.succeed(f"cat {RUN}/room-id").strip()
quoted = room.replace("!", "%21").replace(":", "%3A")

with subtest("the bot joins the owners' room"):
    machine.wait_until_succeeds(
        f'curl -sS --fail -H "Authorization: Bearer $(cat {RUN}/owner-token)" '
        f"{HOMESERVER}/_matrix/client/v3/rooms/{quoted}/joined_members | grep -qF '{BOT}'",
        timeout=120,
    )

with subtest("asked to run it, the bot answers with the tool's output"):
    client(
        "PUT",
        f"/_matrix/client/v3/rooms/{quoted}/send/m.room.message/{time.time_ns()}",
        {"msgtype": "m.text", "body": "run it"},
    )
    reply = ""
    for _ in range(120):
        events = client("GET", f"/_matrix/client/v3/rooms/{quoted}/messages?dir=b&limit=50")
        said = [
            e["content"].get("body", "")
            for e in events["chunk"]
            if e["sender"] == BOT and e["type"] == "m.room.message"
        ]
        reply = next((text for text in said if "the tool printed" in text), "")
        if reply:
            break
        time.sleep(1)
    print("the bot's reply:", reply)
    assert "nanoclaw-tool-alpha" in reply, reply
    assert "/workspace/group" in reply, reply
    broker = machine.succeed("journalctl -u nanoclaw-sandboxd --no-pager")
    assert "started nanoclaw-tool-alpha-" in broker, "the broker started no unit for alpha"
