# cgroup limits, which a VM with cgroup v2 enforces: MemoryMax, TasksMax, RuntimeMaxSec;
# and each unit's own bounded scratch places (beta's hold 8 MiB, the others' the default).
start_all()
ensure_node()

with subtest("MemoryMax OOM-kills only the tool unit"):
    tool_succeeds("alpha", "python3 -c 'b = bytearray(16 << 20); print(len(b))'")
    killed = tool_fails("alpha", "python3 -c 'b = bytearray(256 << 20); print(len(b))'")
    assert "oom-kill" in killed, killed
    machine.succeed("systemctl is-active nanoclaw-sandboxd.socket")
    tool_succeeds("alpha", "echo still-serving")

with subtest("a fork bomb stops at TasksMax and the machine keeps answering"):
    bomb = (
        "python3 -c 'import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 500:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        '    print("stopped at", n, e.errno)\''
    )
    output = tool_succeeds("alpha", bomb, timeout=25)
    stopped = output.split("stopped at ")[1].split()
    assert 16 <= int(stopped[0]) < 32 and stopped[1] == "11", output  # EAGAIN below TasksMax
    machine.succeed("true")
    tool_succeeds("alpha", "echo alive")

with subtest("RuntimeMaxSec ends a sleeper and its children"):
    ended = tool_fails("alpha", "sleep 300 & sleep 301 & wait", timeout=3)
    assert "timeout" in ended, ended
    machine.fail("pgrep -f 'sleep 30[01]'")
    tool_succeeds("alpha", "sleep 1", timeout=3)  # control

SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
fill = "head -c 9M /dev/zero > {}/fill"

for place in SCRATCH:
    with subtest(f"{place} holds at most the group's tmp_bytes"):
        full = tool_fails("beta", fill.format(place))
        assert "No space left on device" in full, full
        tool_succeeds("alpha", fill.format(place))  # control: the default bound is larger
        machine.succeed(fill.format(place), f"rm {place}/fill")  # and the host's own takes it

with subtest("one group's full /tmp leaves another group's /tmp writable"):
    machine.succeed(
        "systemd-run --unit=hold-beta-tmp nanoclaw exec --timeout 30 beta -- /bin/sh -c "
        f"'{fill.format('/tmp')} 2> /workspace/group/filled; sleep 25'"
    )
    machine.wait_until_succeeds(
        "grep 'No space left' /var/lib/nanoclaw/groups/beta/filled", timeout=60
    )
    # (A second `nanoclaw exec` warns that the first holds the proxy's address: no matter.)
    wrote = tool_succeeds("alpha", "head -c 4M /dev/zero > /tmp/x && echo wrote")
    assert "wrote" in wrote.splitlines(), wrote
    machine.succeed("head -c 4M /dev/zero > /tmp/x && rm /tmp/x")
    machine.require_unit_state("hold-beta-tmp.service", "active")  # beta's was full all along
    machine.succeed("systemctl stop hold-beta-tmp", "rm /var/lib/nanoclaw/groups/beta/filled")
