# Syscalls and privileges against a bare kernel (no nspawn filter underneath): the filtered
# sets fail with EPERM where root without the filter gets past; setuid does not elevate;
# no capabilities; /proc shows only the unit's own processes.
start_all()
ensure_node()

probes = {
    "ptrace": errno_of(101, 0, 0, 0, 0),
    "bpf": errno_of(321, 0, 0, 0),
    "keyctl": errno_of(250, 0, 0, 0, 0, 0),
    "mount": errno_of(165, 0, 0, 0, 0, 0),
    "unshare": errno_of(272, 0x20000),
}
for name, probe in probes.items():
    with subtest(f"{name} fails with EPERM in a tool unit"):
        output = tool_succeeds("alpha", probe)
        assert output.splitlines()[0] == "1", f"{name}: {output}"
        control = machine.succeed(f"systemd-run --wait --pipe -q {probe}").strip()
        assert control != "1", f"{name}: root without the filter also got EPERM"

with subtest("setuid does not elevate and there are no capabilities"):
    machine.succeed("cp /bin/sh /usr/local/bin/rootsh && chmod 4755 /usr/local/bin/rootsh")
    assert tool_succeeds("alpha", "/usr/local/bin/rootsh -p -c 'id -u'").startswith("61001\n")
    caps = tool_succeeds("alpha", "grep CapEff /proc/self/status").split()
    assert caps[1] == "0000000000000000", caps
    machine.succeed("rm /usr/local/bin/rootsh")

with subtest("/proc shows only the unit's own processes"):
    count = int(tool_succeeds("alpha", "ls /proc | grep -c '^[0-9]'").splitlines()[0])
    assert count < 5, count
    assert int(machine.succeed("ls /proc | grep -c '^[0-9]'")) > 5
