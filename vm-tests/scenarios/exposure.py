# systemd's own exposure rating: a tool unit without egress below 1.0, with egress at most
# 2.0, and nanoclaw.service at most 2.0. The scores are printed.
start_all()
ensure_node()


def exposure(unit: str) -> float:
    report = machine.succeed(f"systemd-analyze security --no-pager {unit}")
    line = next(line for line in report.splitlines() if "Overall exposure level" in line)
    print(line)
    return float(line.split(":")[1].split()[0])


def running_unit(group: str) -> str:
    machine.succeed(
        f"systemd-run --unit=hold-{group} nanoclaw exec --timeout 30 {group} -- /bin/sleep 25"
    )
    listing = machine.wait_until_succeeds(
        f"systemctl list-units --plain --no-legend 'nanoclaw-tool-{group}-*' | grep running"
    )
    return listing.split()[0]


with subtest("a tool unit without egress scores below 1.0"):
    assert exposure(running_unit("alpha")) < 1.0
    machine.succeed("systemctl stop hold-alpha")

for group in ("cidr", "web"):
    with subtest(f"a tool unit with egress ({group}) scores at most 2.0"):
        assert exposure(running_unit(group)) <= 2.0
        machine.succeed(f"systemctl stop hold-{group}")

with subtest("nanoclaw.service scores at most 2.0"):
    assert exposure("nanoclaw.service") <= 2.0
