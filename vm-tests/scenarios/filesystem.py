# The filesystem: only the declared binds are writable or added, secrets and other groups
# invisible, read-only binds (the global memory among them) refuse writes, symlinks in a
# writable mount stay inside.
start_all()
ensure_node()

with subtest("secrets, the data directory and other groups are invisible"):
    for path in (
        "/etc/shadow",
        "/var/lib/nanoclaw/nanoclaw.db",
        "/var/lib/nanoclaw/groups/beta/secret",
        "/etc/nanoclaw/policy.json",
        "/root",
    ):
        machine.succeed(f"test -r {path}")  # control: root sees it
        tool_fails("alpha", f"if [ -d {path} ]; then ls {path}; else cat {path}; fi")
    assert "beta-secret" in tool_succeeds("beta", "cat /workspace/group/secret")
    tool_fails("alpha", "ls /var/lib/nanoclaw")

with subtest("walking / finds writable places only where the policy put them"):
    walk = (
        "find / \\( -path /proc -o -path /sys \\) -prune "
        "-o -writable -type d -print 2>/dev/null | sort"
    )
    writable = set(tool_succeeds("alpha", walk).splitlines())
    writable = {p for p in writable if p.startswith("/")}
    allowed = (
        "/workspace/group",
        "/workspace/scratch",
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/dev/mqueue",
    )
    stray = {p for p in writable if not p.startswith(allowed)}
    print("writable in a unit of alpha:", sorted(writable))
    assert not stray, f"writable outside the policy: {sorted(stray)}"
    assert {"/workspace/group", "/workspace/scratch", "/tmp"} <= writable
    listing = tool_succeeds("beta", "ls /workspace")
    assert "scratch" not in listing and "shared" not in listing, listing

for shared in ("/tmp", "/dev/shm", "/dev/mqueue"):
    with subtest(f"{shared} is the unit's own"):
        machine.succeed(f"touch {shared}/from-host")
        tool_succeeds("alpha", f"ls {shared} && touch {shared}/from-alpha")  # control
        tool_fails("alpha", f"ls {shared}/from-host")
        tool_fails("beta", f"ls {shared}/from-alpha")
        machine.fail(f"ls {shared}/from-alpha")

with subtest("read-only binds refuse writes"):
    assert "shared-file" in tool_succeeds("alpha", "cat /workspace/shared/readme")
    # Control: alpha's uid owns the files and, outside a unit, may write them.
    machine.succeed("setpriv --reuid=61001 --regid=61001 --clear-groups touch /srv/shared/x")
    machine.succeed("rm /srv/shared/x")
    tool_fails("alpha", "touch /workspace/shared/x")
    tool_fails("alpha", "echo more >> /workspace/shared/readme")
    tool_succeeds("alpha", "touch /workspace/scratch/x")

with subtest("the global memory is read-only in every unit, the main group's too"):
    memory = "/var/lib/nanoclaw/memory/global"
    # Open to all for now, so that only the read-only bind can stop a unit.
    machine.succeed(f"chmod 0777 {memory} {memory}/CLAUDE.md")
    try:
        for group in ("alpha", "beta"):  # alpha is the main group
            seen = tool_succeeds(group, "stat -c %a /workspace/global && cat /workspace/global/*")
            assert seen.startswith("777\nglobal-memory\n"), seen
            for write in ("touch /workspace/global/x", "echo more >> /workspace/global/CLAUDE.md"):
                refused = tool_fails(group, write)
                assert "Read-only file system" in refused, refused
    finally:
        machine.succeed(f"chmod 0755 {memory} && chmod 0644 {memory}/CLAUDE.md")

with subtest("symlinks in a writable mount do not reach out"):
    tool_succeeds("alpha", "ln -sf /var/lib/nanoclaw/groups/beta/secret /workspace/scratch/l")
    tool_fails("alpha", "cat /workspace/scratch/l")
    machine.succeed("cat /srv/scratch/l")  # control: the link itself works for root

with subtest("a read-only subagent writes nowhere its group can"):
    places = ("/workspace/group", "/workspace/scratch", "/tmp")
    for place in places:  # control: the group's own agent writes each of them
        tool_succeeds("alpha", f"touch {place}/by-main")
    for place in places[:2]:
        refused = tool_fails("alpha", f"touch {place}/by-reader", subagent="reader")
        assert "Read-only file system" in refused, refused
    # It reads what its group reads, and keeps its own scratch space.
    seen = tool_succeeds("alpha", "cat /workspace/shared/readme && touch /tmp/x", subagent="reader")
    assert "shared-file" in seen, seen
    refused = tool_fails("alpha", "true", subagent="stranger")
    assert "subagent 'stranger' is not declared for group 'alpha'" in refused, refused
