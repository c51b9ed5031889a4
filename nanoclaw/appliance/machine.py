"""A real systemd in a systemd-nspawn container, booted from the cached Debian rootfs.

The Quickstart appliance (nanoclaw/appliance/up.py) runs in one, and so do the sandbox tests
(tests/support/machine.py adds the NixOS test driver's API on top). The machine boots in
about a second from the rootfs that `scripts/rootfs` builds once and caches.

How a machine runs:

* The cached rootfs is never written to: the container boots with `--volatile=overlay` (every
  write lands in a tmpfs overlay thrown away at shutdown), or with `--ephemeral` (a throwaway
  copy, slower) where the kernel has no overlayfs or the overlay mount fails.
  NANOCLAW_MACHINE_MODE=overlay|ephemeral forces one. What must outlive a boot (the
  appliance's state) is bound in from the host.
* It shares the host's network namespace (no `--private-network`), so a service in the
  container and a process on the host reach each other over 127.0.0.1. The consequences: a
  port bound inside is bound on the host (and two machines cannot both bind it); units in the
  container must never configure the network (`scripts/rootfs` masks systemd-networkd and the
  like); and `IPAddressDeny=` does nothing here (no cgroup BPF in this nesting), so tests
  must prove network isolation with `PrivateNetwork=` instead.
* The container keeps CAP_NET_ADMIN, which nspawn drops by default: without it the
  container's systemd cannot bring up the loopback of a unit's private network namespace,
  and the egress relay of a group with domains (nanoclaw.broker.egress_relay) listens
  there. Its services keep their own bounding sets (the broker's and the host's leave it
  out), and tool units have no capabilities at all.
* `execute` enters every namespace of the container's PID 1 with nsenter, with a clean
  environment. Such a command runs as the host's root, outside the container's cgroups and
  without nspawn's capability bounding set and seccomp filter: to test confinement, start
  what is under test as a unit (`systemd-run --wait --pipe -p ...`), as systemd would.
* `--register=no` (no machined needed) and, on a host whose PID 1 is not systemd,
  `--keep-unit` with a cgroup of the machine's own (nspawn puts its `payload` and
  `supervisor` cgroups beside itself, which two machines in one cgroup would share). So two
  machines with distinct names can run at once.
* Nothing outlives the process that started it: nspawn runs as PID 1 of a PID namespace of
  its own (`unshare --pid --fork --kill-child`) whose `unshare` dies with that process
  (PR_SET_PDEATHSIG). Killing nspawn alone would leave the container's systemd running; the
  end of its PID namespace takes the container's nested one with it.
"""

from __future__ import annotations

import atexit
import io
import itertools
import os
import re
import signal
import subprocess
import tarfile
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from nanoclaw.appliance.child_process import dies_with_parent
from nanoclaw.appliance.machine_cgroups import (
    clean_leftovers,
    find_init,
    kill,
    make_cgroups,
    remove_cgroup,
)

REPO = Path(__file__).resolve().parents[2]
# The environment of every command run in a machine: nothing of the host's leaks in.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_counter = itertools.count()
_running: weakref.WeakSet[NspawnMachine] = weakref.WeakSet()


def rootfs() -> Path:
    """The cached rootfs, built first (about a minute) if the cache has none for this version."""
    result = subprocess.run(
        [str(REPO / "scripts" / "rootfs"), "--print-path"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def machine_available() -> str | None:
    """Why this host cannot boot machines, or None when it can."""
    if os.geteuid() != 0:
        return "booting a systemd-nspawn machine needs root"
    if not (_which("systemd-nspawn") and _which("mmdebstrap")) and not _which("apt-get"):
        return "no systemd-nspawn/mmdebstrap and no apt-get to install them"
    for tool in ("nsenter", "unshare"):
        if not _which(tool):
            return f"no {tool} (util-linux) on this host"
    cap_sys_admin = 21
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:") and not int(line.split()[1], 16) >> cap_sys_admin & 1:
            return "this process lacks CAP_SYS_ADMIN, which systemd-nspawn needs"
    return None


class ApplianceError(RuntimeError):
    """The appliance cannot start, or is not running; the message says what to do."""


class NspawnMachine:
    """One systemd-nspawn container booted from the cached rootfs."""

    command_timeout = 60.0  # seconds, for execute

    def __init__(
        self, rootfs: Path, name: str, binds: Sequence[tuple[Path, str, bool]] = ()
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"machine name {name!r}: use lowercase letters, digits and '-'")
        for host, inside, _ in binds:
            if not Path(host).is_absolute() or not inside.startswith("/"):
                raise ValueError(f"bind {host} -> {inside}: both paths must be absolute")
        self.rootfs = Path(rootfs)
        self.name = name
        self.binds = list(binds)
        self.pid = 0
        self.mode = ""  # "overlay" or "ephemeral", once started
        self.boot_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._cgroups: list[Path] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Boot and wait until systemd reports the system running (or degraded).

        Call it from a thread that lives as long as the machine (the main thread, say):
        PR_SET_PDEATHSIG fires when the *thread* that started the machine ends."""
        if self._process is not None:
            raise RuntimeError(f"machine {self.name} is already started")
        if not (self.rootfs / "usr/lib/systemd/systemd").exists():
            raise FileNotFoundError(f"{self.rootfs} is no rootfs with systemd (scripts/rootfs)")
        forced = os.environ.get("NANOCLAW_MACHINE_MODE", "")
        if forced not in ("", "overlay", "ephemeral"):
            raise ValueError(f"NANOCLAW_MACHINE_MODE={forced!r}: overlay or ephemeral")
        overlayfs = "\toverlay\n" in Path("/proc/filesystems").read_text()
        mode = forced or ("overlay" if overlayfs else "ephemeral")
        began = time.monotonic()
        try:
            try:
                self._boot(mode, timeout)
            except _OverlayFailed:
                if forced:
                    raise
                print(f"\nmachine {self.name}: --volatile=overlay failed, trying --ephemeral")
                self._stop_processes()
                self._boot("ephemeral", timeout - (time.monotonic() - began))
        except BaseException:
            self._stop_processes()
            _running.discard(self)
            raise
        self.boot_seconds = time.monotonic() - began

    def _boot(self, mode: str, timeout: float) -> None:
        self.mode = mode
        clean_leftovers()
        self._workdir = Path(
            tempfile.mkdtemp(prefix=f"nanoclaw-machine-{self.name}-{os.getpid()}-")
        )
        console = self._workdir / "console.log"
        systemd_host = Path("/run/systemd/system").is_dir()
        if not systemd_host:
            self._cgroups = make_cgroups(f"nanoclaw-{self.name}-{os.getpid()}-{next(_counter)}")
        command = [
            "unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--",
            "systemd-nspawn",
            f"--directory={self.rootfs}",
            f"--machine={self.name}",
            "--volatile=overlay" if mode == "overlay" else "--ephemeral",
            "--register=no",
            *([] if systemd_host else ["--keep-unit"]),
            "--boot",
            "--console=read-only",
            "--setenv=SYSTEMD_COLORS=0",
            "--capability=CAP_NET_ADMIN",
        ]  # fmt: skip
        for host, inside, writable in self.binds:
            option = "--bind" if writable else "--bind-ro"
            command.append(f"{option}={_escape(str(host))}:{_escape(inside)}")
        procs = [str(cgroup / "cgroup.procs") for cgroup in self._cgroups]

        def join_cgroups() -> None:  # in the child: system calls only (child_process.py)
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"%d" % os.getpid())
                os.close(fd)

        with open(console, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with_parent(join_cgroups),
                start_new_session=True,
                cwd="/",
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_text = self.console_log()
                if mode == "overlay" and "overlay" in log_text.lower() and not self.pid:
                    raise _OverlayFailed(log_text)
                self._fail_boot(f"systemd-nspawn exited with {self._process.returncode}")
            if not self.pid:
                self.pid = find_init(self._process.pid)
                if not self.pid:
                    time.sleep(0.05)
                    continue
            remaining = max(1.0, deadline - time.monotonic())
            try:
                _, out = self.execute("systemctl is-system-running --wait", timeout=remaining)
            except TimeoutError:
                break
            state = out.strip().splitlines()[-1] if out.strip() else ""
            if state == "running":
                return
            if state == "degraded":
                failed = self.execute("systemctl --failed --no-legend --plain")[1]
                print(f"\nmachine {self.name} booted degraded; failed units:\n{failed}")
                return
            if state in ("maintenance", "stopping"):
                self._fail_boot(f"systemd says {state!r}")
            time.sleep(0.1)  # "offline" or no answer: the manager is not listening yet
        self._fail_boot(f"not running after {timeout:.0f} s (last state {state!r})")

    def _fail_boot(self, why: str) -> None:
        failed = ""
        if self.pid and self._process is not None and self._process.poll() is None:
            try:
                failed = self.execute("systemctl --failed --no-legend --plain", timeout=5)[1]
            except TimeoutError:
                pass
        log = self.console_log()
        self.shutdown()
        raise RuntimeError(
            f"machine {self.name} did not boot: {why}\n"
            + (f"failed units:\n{failed}\n" if failed else "")
            + "console log (last 80 lines):\n"
            + "\n".join(log.splitlines()[-80:])
        )

    def console_log(self) -> str:
        """What the container printed on its console so far (nspawn's and systemd's messages)."""
        if self._workdir is None or not (self._workdir / "console.log").exists():
            return ""
        raw = (self._workdir / "console.log").read_bytes().decode(errors="replace")
        return raw.replace("\r\n", "\n").replace("\r", "")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Power off and wait; kill the container if it does not stop. Leaves nothing running."""
        process = self._process
        if process is not None and process.poll() is None and self.pid:
            try:
                os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: poweroff
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"\nmachine {self.name} did not power off in {timeout:.0f} s; killing it")
        self._stop_processes()
        _running.discard(self)

    def _stop_processes(self) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                if self.pid:  # the end of its PID namespace kills everything in the container
                    kill(self.pid)
                kill(process.pid)
                process.wait()
        for cgroup in reversed(self._cgroups):
            remove_cgroup(cgroup)
        if self._workdir is not None:
            for child in self._workdir.iterdir():
                child.unlink()
            self._workdir.rmdir()
        self._process = None
        self._workdir = None
        self._cgroups = []
        self.pid = 0

    # -- commands -----------------------------------------------------------------------

    def execute(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Run `sh -c command` in the container; return its status and stdout+stderr."""
        limit = self.command_timeout if timeout is None else timeout
        status, out = self._enter(["/bin/sh", "-c", command], None, limit, command)
        return status, out.decode(errors="replace")

    def copy_into(self, source: Path, target: str) -> None:
        """Copy a host file or directory to `target` in the container, owned by root.

        Goes through tar in the container rather than /proc/PID/root, where an absolute
        symlink in the container would resolve on the host."""
        if not target.startswith("/"):
            raise ValueError(f"{target}: give an absolute path in the machine")

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source), arcname=target.lstrip("/"), filter=as_root)
        status, out = self._enter(
            ["tar", "-x", "-f", "-", "-C", "/"], buffer.getvalue(), 60, f"copy {source}"
        )
        if status != 0:
            raise RuntimeError(f"[{self.name}] copying {source} to {target} failed:\n{out!r}")

    def _enter(
        self, argv: list[str], stdin: bytes | None, timeout: float, what: str
    ) -> tuple[int, bytes]:
        if not self.pid or self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"machine {self.name} is not running")
        process = subprocess.Popen(
            ["nsenter", f"--target={self.pid}", "--all", "--", *argv],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=CLEAN_ENV,
            start_new_session=True,  # a process group to kill on timeout, in the machine too
            cwd="/",
        )
        try:
            out, _ = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            raise TimeoutError(
                f"[{self.name}] `{what}` timed out after {timeout} s; output so far:\n"
                + out.decode(errors="replace")
            ) from None
        return process.returncode, out


class _OverlayFailed(RuntimeError):
    pass


def _which(tool: str) -> bool:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin"
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in path.split(":") if d)


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


@atexit.register
def _shutdown_all() -> None:
    for machine in list(_running):
        machine._stop_processes()
