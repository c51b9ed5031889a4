# Mounts: no bind source nests in another or lies below a directory a tool user can write,
# checked when the policy loads and again at every unit start; inside a writable mount the
# owner's tool files (.git and the like) are out of a unit's reach, and secrets in every
# mount, unless the mount opts out with "protect": false.
import json

start_all()
ensure_node()

node_policy = json.loads(machine.succeed("cat /etc/nanoclaw/policy.json"))
machine.succeed("mkdir -p /run/policies /srv/proj/sub /srv/box/proj")


def policy_with(name: str, **mounts: list[dict]) -> str:
    """A copy of the node's policy in which each named group has only `mounts`."""
    policy = json.loads(json.dumps(node_policy))
    for group, listed in mounts.items():
        policy["groups"][group]["mounts"] = listed
    path = f"/run/policies/{name}.json"
    machine.succeed(f"printf %s {shlex.quote(json.dumps(policy))} > {path}")
    return path


def load(path: str) -> tuple[int, str]:
    """Load and check a policy as the broker does, through `nanoclaw policy explain`."""
    return machine.execute(f"nanoclaw policy explain alpha --policy {path} 2>&1")


def mount(host: str, writable: bool = False) -> dict:
    return {"host": host, "sandbox": "/workspace/" + host.rsplit("/", 1)[1], "writable": writable}


with subtest("nested mounts are refused at load, and the broker does not start with them"):
    shared = policy_with("shared", alpha=[mount("/srv/proj", True)], beta=[mount("/srv/proj")])
    status, output = load(shared)  # control: two groups may share one directory
    assert status == 0, output
    machine.succeed(
        "systemd-run --unit=hand-broker nanoclaw-sandboxd "
        f"--policy {shared} --socket /run/hand-broker.sock"
    )
    machine.wait_until_succeeds("journalctl -u hand-broker -o cat | grep 'serving 4 groups'")
    machine.succeed("systemctl stop hand-broker")
    for nested, key, outer in (
        # The race: a read-only mount inside a writable one, in one group.
        (
            policy_with("nested", alpha=[mount("/srv/proj", True), mount("/srv/proj/sub")]),
            "groups.alpha.mounts[1].host: /srv/proj/sub is inside",
            "groups.alpha.mounts[0].host /srv/proj",
        ),
        # And across groups, either way round.
        (
            policy_with("across", alpha=[mount("/srv/proj/sub", True)], beta=[mount("/srv/proj")]),
            "groups.beta.mounts[0].host: /srv/proj contains",
            "groups.alpha.mounts[0].host /srv/proj/sub",
        ),
    ):
        status, output = load(nested)
        assert status == 2 and key in output and outer in output, output
        assert "may not nest" in output, output
        status, output = machine.execute(
            f"nanoclaw-sandboxd --policy {nested} --socket /run/hand-broker.sock 2>&1"
        )
        assert status == 2 and "invalid policy: " + key in output, output

with subtest("a source below a directory a tool user can write is refused at load"):
    boxed = policy_with("boxed", alpha=[mount("/srv/box/proj", True)])
    sticky = policy_with("sticky", alpha=[mount("/srv/sticky/proj", True)])
    machine.succeed("mkdir -p /srv/sticky/proj && chmod 1777 /srv/sticky")
    for path in (boxed, sticky):  # control: root's directories, and root's entry in a sticky one
        status, output = load(path)
        assert status == 0, output
    for policy, change, undo, says in (
        (boxed, "chown 61002 /srv/box", "chown root /srv/box", "(uid 61002) owns /srv/box"),
        (boxed, "chmod 0777 /srv/box", "chmod 0755 /srv/box", "(uid 61001) may write to /srv/box"),
        # In a sticky directory only an entry's owner may rename it: refused once a tool
        # user owns it.
        (sticky, "chown 61002 /srv/sticky/proj", "true", "(uid 61002) may write to /srv/sticky,"),
    ):
        machine.succeed(change)
        try:
            status, output = load(policy)
        finally:
            machine.succeed(undo)
        assert status == 2 and "groups.alpha.mounts[0].host: " in output, output
        assert says in output and "a unit could swap a path component" in output, output
    machine.succeed("rm -r /srv/sticky")
    # /tmp itself is no source at all: each unit has its own, and so has the broker.
    machine.succeed("mkdir -p /tmp/proj")
    status, output = load(policy_with("in-tmp", alpha=[mount("/tmp/proj", True)]))
    machine.succeed("rm -r /tmp/proj")
    assert status == 2 and "is inside /tmp, a scratch place" in output, output

with subtest("the broker checks the sources again at every unit start"):
    tool_succeeds("alpha", "cat /workspace/shared/readme")  # control: the node's policy holds
    machine.succeed("chown 61002 /srv")  # the owner hands a tool user an ancestor of a mount
    try:
        refused = tool_fails("alpha", "cat /workspace/shared/readme")
    finally:
        machine.succeed("chown root /srv")
    assert "groups.alpha.mounts[0].host: /srv/shared: group beta's tool user" in refused, refused
    assert "owns /srv," in refused and "refusing the mount" in refused, refused
    tool_succeeds("alpha", "cat /workspace/shared/readme")

# beta's two writable mounts hold root's git repositories that beta's group may write;
# /srv/repo is protected (the default), /srv/open-repo sets "protect": false.
for repo in ("repo", "open-repo"):
    machine.succeed(
        f"git init -q /srv/{repo} 2>&1",
        f"echo not-for-tools > /srv/{repo}/.env",
        f"chgrp -R 61002 /srv/{repo} && chmod -R g+w /srv/{repo}",
    )
    tool_succeeds("beta", f"echo notes > /workspace/{repo}/notes")  # control: it is writable
plant = (
    "mkdir -p {0}/.git/hooks && printf '#!/bin/sh\\ntouch /run/hook-ran\\n' "
    "> {0}/.git/hooks/post-commit && chmod +x {0}/.git/hooks/post-commit"
)
commit = "git -C /srv/{} -c user.name=owner -c user.email=owner@nanoclaw.test commit -q -m notes"

with subtest("the owner's tool files in a writable mount are out of a unit's reach"):
    # Control: without protection, a unit reads, plants and moves them.
    assert "[core]" in tool_succeeds("beta", "cat /workspace/open-repo/.git/config")
    tool_succeeds("beta", "cd /workspace/open-repo && mv .git aside && mv aside .git")
    for probe, error in (
        ("cat /workspace/repo/.git/config", "Permission denied"),
        (plant.format("/workspace/repo"), "Permission denied"),
        ("cd /workspace/repo && mv .git aside", "Device or resource busy"),
    ):
        refused = tool_fails("beta", probe)
        assert error in refused, (probe, refused)
    machine.succeed("git -C /srv/repo add notes", commit.format("repo"))
    machine.fail("test -e /run/hook-ran")

with subtest("a hook a unit planted runs at the owner's commit where the mount opts out"):
    tool_succeeds("beta", plant.format("/workspace/open-repo"))
    machine.succeed("git -C /srv/open-repo add notes", commit.format("open-repo"))
    machine.succeed("test -e /run/hook-ran && rm /run/hook-ran")

with subtest("secrets in every protected mount are hidden, read-only ones too"):
    machine.succeed("echo not-for-tools > /srv/shared/.env")
    try:
        assert "shared-file" in tool_succeeds("alpha", "cat /workspace/shared/readme")
        tool_fails("alpha", "cat /workspace/shared/.env")
    finally:
        machine.succeed("rm /srv/shared/.env")
    tool_fails("beta", "cat /workspace/repo/.env")
    assert "not-for-tools" in tool_succeeds("beta", "cat /workspace/open-repo/.env")
