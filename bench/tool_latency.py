"""Benchmark: the latency of one tool call, `true`, through the broker, next to plain
systemd-run and next to `docker run`.

One command: `.venv/bin/python -m bench.tool_latency [--calls 200]`. It measures, each
with --calls samples (after a few warm-up calls that are not counted):
- broker: `run_in_sandbox(socket, "alpha", ["/bin/true"], timeout=10)`, the real client
  against the real socket-activated broker and its transient tool unit, in a machine booted
  from the test rootfs (tests/support/machine.py) and set up exactly as tests/test_sandbox.py
  sets it up (its SETUP and POLICY, and the broker's drop-in, are imported, not copied).
  Timed from INSIDE the machine, by bench/unit_loop.py run there with the machine's
  python3, so no nsenter cost is counted and the broker and systemd-run are timed the same
  way;
- broker, domain group: the same call for group "web" (egress domains, so its unit runs
  in the group's relay namespace: PrivateNetwork= with JoinsNamespaceOf=), with a proxy
  secret; the relay's start, on the first such call, is recorded apart;
- the duration the broker itself reports for each of those calls (`duration_ms`: from just
  before StartTransientUnit until the unit is gone and released), which splits the round
  trip into systemd's share and the broker's own (client, socket, policy, JSON);
- systemd-run: plain `systemd-run --wait --pipe --quiet true` in the same machine, started
  with subprocess from the same loop, call by call in turn with the broker's (and with the
  next series), the order rotating each round so that none gets the quieter moments;
- systemd-run with the broker unit's settings: the same, with a `-p` for every setting of
  the unit the broker starts for this call (compile_unit on the machine's policy, as
  `nanoclaw policy explain` shows it), i.e. what the sandbox itself costs systemd, with no
  broker in the way; the broker's round trip minus this is the broker's own overhead;
- docker: `docker run --rm --network none nanoclaw-bench:latest true` on the real host,
  against a dockerd this script starts by hand (installing docker.io with apt-get if there
  is no dockerd) on a socket, data root and exec root of its own, with an image imported
  from the same rootfs. It is stopped and its files removed at the end, even on failure. If
  docker cannot run here, the results say so and why instead of a number.
The machine and dockerd are both up for the whole run (idle, each costs next to nothing)
and the calls are made in BLOCKS turns: a block of each machine series, then a block of
docker runs, and so on, so that other work on the host, starting or stopping during the
run, weighs on every series alike. The 1-min load average is recorded along the way.
Results go to bench/results/tool_latency.json and stdout, with two targets computed from
them: broker p50 within 1.5x of systemd-run p50, and broker p50 at least 5x below docker's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.stats import summary
from bench.unit_loop import MARKER
from tests.support.machine import (
    BROKER_OVERRIDE,
    REPO,
    SOURCE,
    Machine,
    machine_available,
    rootfs,
)
from tests.test_sandbox import POLICY, SETUP

RESULTS = Path(__file__).parent / "results" / "tool_latency.json"
WARMUP = 5
# The machine's series and docker take turns in this many blocks of calls, so that other
# work starting or stopping on the host during the run weighs on both sides alike.
BLOCKS = 4
IMAGE = "nanoclaw-bench:latest"
DOCKER_RUN = ("run", "--rm", "--network", "none", IMAGE, "true")
DOCKER_SOCKET = "/run/nanoclaw-bench-docker.sock"
DOCKER_HOST = f"unix://{DOCKER_SOCKET}"
# Tried in order until one runs a container: the defaults, then the cgroupfs driver (a host
# without systemd as PID 1), then also the vfs storage driver (no usable overlayfs).
DOCKERD_VARIANTS = [
    [],
    ["--exec-opt", "native.cgroupdriver=cgroupfs"],
    ["--exec-opt", "native.cgroupdriver=cgroupfs", "--storage-driver=vfs"],
]
# Left behind by dockerd outside its data and exec roots; removed if this run made them.
DOCKERD_DROPPINGS = [
    Path("/etc/docker/key.json"),
    Path("/etc/docker"),
    Path("/run/docker/plugins"),
    Path("/run/docker"),
]
BROKER_TARGET = 1.5  # broker p50 <= this x systemd-run p50
DOCKER_TARGET = 5.0  # docker p50 >= this x broker p50
PR_SET_PDEATHSIG = 1


def run(argv: list[str], timeout: float = 120, **kwargs: Any) -> str:
    """Run argv, return its stdout; raise with its output when it fails."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` failed with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return str(done.stdout)


def host_facts() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        cgroups = "v2 (unified)"
    elif Path("/sys/fs/cgroup/unified").is_dir():
        cgroups = "v1 (hybrid, with a v2 hierarchy at /sys/fs/cgroup/unified)"
    else:
        cgroups = "v1"
    return {
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2, 1),
        "cgroups": cgroups,
        "pid1": Path("/proc/1/comm").read_text().strip(),
        "python": platform.python_version(),
        "source": source_state(),
    }


def source_state() -> dict[str, Any]:
    """The commit measured, and which files it runs differ from it (work in progress)."""
    git = ["git", "-C", str(REPO)]
    changed = run([*git, "status", "--porcelain", "--", "nanoclaw", "units", "tests"])
    return {
        "commit": run([*git, "rev-parse", "--short", "HEAD"]).strip(),
        "uncommitted_changes": sorted(line[3:] for line in changed.splitlines()),
    }


# -- broker and systemd-run, inside a machine -------------------------------------------


@contextmanager
def broker_machine() -> Iterator[Machine]:
    """A machine with the broker installed as tests/test_sandbox.py installs it."""
    reason = machine_available()
    if reason is not None:
        raise SystemExit(f"cannot boot a machine here: {reason}")
    with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-units-") as tmp:
        units = Path(tmp)
        for unit in (REPO / "units").iterdir():  # all of them: SETUP picks what it needs
            if unit.is_file():
                shutil.copy(unit, units / unit.name)
        (units / "override.conf").write_text(BROKER_OVERRIDE)
        (units / "policy.json").write_text(json.dumps(POLICY))
        binds = [(REPO, SOURCE, False), (units, "/tmp/units", False)]
        with Machine(rootfs(), "bench-tools", binds=binds) as machine:
            machine.succeed(SETUP)
            machine.succeed("install -m 0644 /tmp/units/policy.json /etc/nanoclaw/policy.json")
            yield machine


def machine_facts(machine: Machine) -> dict[str, Any]:
    return {
        "mode": machine.mode,
        "boot_seconds": round(machine.boot_seconds, 2),
        "systemd": machine.succeed("systemctl --version").splitlines()[0],
        "python3": machine.succeed("python3 --version").strip(),
    }


def machine_block(machine: Machine, calls: int, warmup: int) -> dict[str, Any]:
    """One run of bench/unit_loop.py in the machine: `calls` rounds of its three series."""
    out = machine.succeed(
        f"PYTHONPATH={SOURCE} python3 -m bench.unit_loop "
        f"--calls {calls} --warmup {warmup} --group alpha",
        timeout=120 + 5 * calls,
    )
    line = next(line for line in reversed(out.splitlines()) if line.startswith(MARKER))
    raw: dict[str, Any] = json.loads(line[len(MARKER) :])
    check = raw["sandbox_check"].splitlines()
    if check[:2] != ["61001", "/workspace/group"] or "ls:" not in raw["sandbox_check"]:
        raise RuntimeError(f"the sandboxed systemd-run is not the broker's sandbox: {check}")
    return raw


def machine_results(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    def joined(name: str) -> list[Any]:
        return [sample for block in blocks for sample in block[name]]

    broker: list[float] = joined("broker_s")
    reported = [ms / 1000 for ms in joined("broker_reported_duration_ms")]
    return {
        "broker_run_in_sandbox_true": summary(broker),
        "broker_reported_duration": summary(reported),
        "broker_outside_the_unit": summary(
            [total - unit for total, unit in zip(broker, reported, strict=True)]
        ),
        # Only the first block's first call starts the broker; later ones find it running.
        "broker_first_call_socket_activation_ms": round(blocks[0]["broker_first_call_s"] * 1000, 1),
        "broker_domain_group_true": summary(joined("broker_domain_s")),
        # The first domain call of the first block starts the group's relay.
        "broker_domain_first_call_with_relay_start_ms": round(
            blocks[0]["broker_domain_first_call_s"] * 1000, 1
        ),
        "systemd_run_true": summary(joined("systemd_run_s")),
        "systemd_run_with_the_broker_units_settings_true": summary(
            joined("sandboxed_systemd_run_s")
        ),
        "the_broker_units_settings": blocks[0]["sandbox_properties"],
    }


# -- docker run, on the host ------------------------------------------------------------


def ensure_docker() -> str:
    """The docker CLI, after installing docker.io if this host has no dockerd."""
    if shutil.which("dockerd") is None:
        print("no dockerd here: apt-get install -y docker.io ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], timeout=300, env=env)
        run(["apt-get", "install", "-y", "-qq", "docker.io"], timeout=600, env=env)
    for tool in ("dockerd", "docker"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"no {tool} on PATH even after installing docker.io")
    return str(shutil.which("docker"))


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_and_wait(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _state(pid) == "Z":
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def _pids_using(root: Path) -> list[int]:
    """Processes whose command line names our private docker directory (containerd and its
    shims), found by that unique path and ended by pid."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(root).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def _unmount_below(root: Path) -> None:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextmanager
def dockerd(docker: str, variant: list[str]) -> Iterator[dict[str, Any]]:
    """A private dockerd, answering on DOCKER_SOCKET; everything of it gone on exit."""
    root = Path(tempfile.mkdtemp(prefix="nanoclaw-bench-docker-"))
    (root / "daemon.json").write_text("{}\n")
    command = [
        "dockerd",
        "--iptables=false",
        "--bridge=none",
        "--host",
        DOCKER_HOST,
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "--config-file",
        str(root / "daemon.json"),
        *variant,
    ]
    log_path = root / "dockerd.log"
    process: subprocess.Popen[bytes] | None = None
    env = {**os.environ, "DOCKER_CONFIG": str(root / "cli")}  # no ~/.docker touched
    info: dict[str, Any] = {"flags": command[1:], "env": env, "root": root}
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                cwd="/",
            )
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {process.returncode}")
            probe = subprocess.run(
                [docker, "-H", DOCKER_HOST, "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                text=True,
                check=False,
                env=env,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within 60 s: {probe.stderr}")
            time.sleep(0.2)
        yield info
    except Exception as error:
        error.add_note(_log_tail(root))
        raise
    finally:
        if process is not None:
            if process.poll() is None:
                _kill_and_wait(process.pid, 30)
            process.wait()
        for pid in _pids_using(root):
            _kill_and_wait(pid, 10)
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        Path(DOCKER_SOCKET).unlink(missing_ok=True)


def _log_tail(root: Path) -> str:
    log = root / "dockerd.log"
    lines = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    return "dockerd log (last lines):\n" + "\n".join(lines)


def start_docker(stack: ExitStack) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A private dockerd that has run the image once, kept open on `stack`, and what was
    tried; (None, why) when docker cannot run a container here."""
    try:
        docker = ensure_docker()
    except Exception as error:  # recorded, loudly, in the results
        return None, {"available": False, "reason": f"cannot install docker: {error}"}
    existed = {path: path.exists() for path in DOCKERD_DROPPINGS}
    stack.callback(_remove_droppings, existed)
    attempts: list[dict[str, str]] = []
    for variant in DOCKERD_VARIANTS:
        flags = " ".join(variant) or "(defaults)"
        print(f"starting a private dockerd {flags} ...")
        attempt = ExitStack()
        try:
            daemon = attempt.enter_context(dockerd(docker, variant))
            daemon["docker"] = docker
            try:
                daemon["image_import_seconds"] = prepare_image(daemon)
            except Exception as error:
                error.add_note(_log_tail(daemon["root"]))
                raise
        except Exception as error:  # the next variant may work
            attempt.close()
            notes = "\n".join(getattr(error, "__notes__", []))
            attempts.append({"flags": flags, "error": f"{error}\n{notes}".strip()})
            print(f"dockerd {flags} did not run a container: {error}")
            continue
        stack.enter_context(attempt)
        return daemon, {"available": True, "failed_variants_before": attempts}
    return None, {
        "available": False,
        "reason": "no dockerd variant could run a container here; see attempts",
        "attempts": attempts,
    }


def _remove_droppings(existed: dict[Path, bool]) -> None:
    for path in DOCKERD_DROPPINGS:  # in order: files before their directories
        if not existed[path] and path.exists():
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:
                    pass
            else:
                path.unlink()


def _docker(daemon: dict[str, Any], *args: str, **kwargs: Any) -> str:
    return run([daemon["docker"], "-H", DOCKER_HOST, *args], env=daemon["env"], **kwargs)


def prepare_image(daemon: dict[str, Any]) -> float:
    """Import the rootfs as IMAGE and run it WARMUP times; the import's seconds."""
    began = time.perf_counter()
    tar = subprocess.Popen(["tar", "-C", str(rootfs()), "-c", "."], stdout=subprocess.PIPE)
    try:
        _docker(daemon, "import", "-", IMAGE, timeout=600, stdin=tar.stdout)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    imported = time.perf_counter() - began
    for _ in range(WARMUP):
        _docker(daemon, *DOCKER_RUN)
    return round(imported, 1)


def docker_block(daemon: dict[str, Any], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        _docker(daemon, *DOCKER_RUN)
        samples.append(time.perf_counter() - start)
    return samples


def docker_facts(daemon: dict[str, Any]) -> dict[str, Any]:
    info = json.loads(_docker(daemon, "info", "--format", "{{json .}}"))
    versions = _docker(daemon, "version", "--format", "{{.Client.Version}} / {{.Server.Version}}")
    return {
        "client_server_versions": versions.strip(),
        "storage_driver": info.get("Driver"),
        "cgroup_driver": info.get("CgroupDriver"),
        "cgroup_version": info.get("CgroupVersion"),
        "dockerd_flags": daemon["flags"],
        "image_import_seconds": daemon["image_import_seconds"],
    }


# -- the whole run ----------------------------------------------------------------------


def main(calls: int) -> dict[str, Any]:
    began = time.monotonic()
    result: dict[str, Any] = {
        "calls": calls,
        "warmup_calls": WARMUP,
        "blocks": BLOCKS,
        "host": host_facts(),
    }
    # Other work on the host inflates every number. The load before the run is others'
    # alone; the later ones add this run's own.
    load = {"before": os.getloadavg()[0]}
    machine_blocks: list[dict[str, Any]] = []
    docker_samples: list[float] = []
    with ExitStack() as stack:
        daemon, docker = start_docker(stack)
        machine = stack.enter_context(broker_machine())
        result["machine"] = machine_facts(machine)
        print(f"machine up ({result['machine']['systemd']}); timing {calls} calls of each...")
        sizes = [calls // BLOCKS + (index < calls % BLOCKS) for index in range(BLOCKS)]
        for index, size in enumerate(sizes):
            if not size:
                continue
            machine_blocks.append(machine_block(machine, size, WARMUP if index == 0 else 0))
            load[f"after_machine_block_{index + 1}"] = os.getloadavg()[0]
            if daemon is not None:
                docker_samples += docker_block(daemon, size)
                load[f"after_docker_block_{index + 1}"] = os.getloadavg()[0]
            print(f"block {index + 1}/{BLOCKS} done")
        if daemon is not None:
            docker.update(docker_facts(daemon))
            docker["docker_run_true"] = summary(docker_samples)
    result.update(machine_results(machine_blocks))
    result["docker"] = docker
    result["host"]["load_average_1min"] = {name: round(value, 2) for name, value in load.items()}
    result["targets"] = targets(result)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    broker = result["broker_run_in_sandbox_true"]["p50_ms"]
    plain = result["systemd_run_true"]["p50_ms"]
    ratio = broker / plain
    verdict: dict[str, Any] = {
        "broker_p50_within_1.5x_systemd_run_p50": {
            "ratio": round(ratio, 2),
            "pass": ratio <= BROKER_TARGET,
        }
    }
    docker = result["docker"]
    if docker.get("available"):
        speedup = docker["docker_run_true"]["p50_ms"] / broker
        verdict["broker_p50_at_least_5x_faster_than_docker_run_p50"] = {
            "ratio": round(speedup, 2),
            "pass": speedup >= DOCKER_TARGET,
        }
    else:
        verdict["broker_p50_at_least_5x_faster_than_docker_run_p50"] = {
            "ratio": None,
            "pass": None,
            "why": "docker run was not measured: " + docker["reason"],
        }
    return verdict


def report(result: dict[str, Any]) -> str:
    def row(label: str, stats: dict[str, float]) -> str:
        return (
            f"  {label:<44} p50 {stats['p50_ms']:7.1f}  p95 {stats['p95_ms']:7.1f}  "
            f"max {stats['max_ms']:7.1f} ms  (n={stats['n']})"
        )

    host = result["host"]
    lines = [
        f"tool-call latency of `true` on {host['kernel']}, {host['cpu_count']} CPUs "
        f"({host['cpu_model']})",
        row("broker: run_in_sandbox(alpha, /bin/true)", result["broker_run_in_sandbox_true"]),
        row("  of which the broker's duration_ms", result["broker_reported_duration"]),
        row("  of which outside the unit", result["broker_outside_the_unit"]),
        row("broker: the same, web (domains, its relay)", result["broker_domain_group_true"]),
        row("systemd-run --wait --pipe --quiet true", result["systemd_run_true"]),
        row(
            "  the same with the broker unit's settings",
            result["systemd_run_with_the_broker_units_settings_true"],
        ),
    ]
    docker = result["docker"]
    if docker.get("available"):
        lines.append(row("docker run --rm --network none IMAGE true", docker["docker_run_true"]))
    else:
        lines.append(f"  *** DOCKER RUN NOT MEASURED: {docker['reason']} ***")
        for attempt in docker.get("attempts", []):
            lines.append(f"  ***   dockerd {attempt['flags']}: {attempt['error'].splitlines()[0]}")
    lines.append(
        f"  first broker call (socket activation): "
        f"{result['broker_first_call_socket_activation_ms']} ms; first call for web "
        f"(starting its relay): {result['broker_domain_first_call_with_relay_start_ms']} ms"
    )
    load = host["load_average_1min"]
    lines.append(
        f"  host 1-min load: {load['before']} before the run, up to {max(load.values())} "
        "during it (this run's own work included)"
    )
    if load["before"] > 0.5:
        lines.append("  *** the host was busy before the run: the numbers are likely inflated ***")
    for name, verdict in result["targets"].items():
        status = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[verdict["pass"]]
        ratio = "n/a" if verdict["ratio"] is None else f"{verdict['ratio']}x"
        lines.append(f"target {name}: {ratio} -> {status}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    outcome = main(args.calls)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(outcome, indent=2) + "\n")
    print(json.dumps(outcome, indent=2))
    print(report(outcome))
