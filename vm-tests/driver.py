"""A NixOS-test-driver-alike for QEMU VMs booted from the image that `vm-tests/image` builds.

Why VMs at all: the nspawn machines of tests/support/machine.py share the host's hybrid
cgroup hierarchy, where `IPAddressDeny=` silently does nothing. A VM has its own kernel,
booted with the unified cgroup hierarchy, so cgroup-BPF egress filtering and `MemoryMax=`
really hold there and can be proven.

How a VM runs:

* Disks (virtio-blk): vda is the cached root image, opened with snapshot=on (every write
  goes to a throwaway overlay, the image itself is never written); vdb is an ext4 image made
  at start from the current nanoclaw tree (nanoclaw/, units/, policies/, pyproject.toml),
  mounted read-only at /opt/nanoclaw-src, where the image's venv finds it through a .pth
  file; vdc is an ext4 image of the `files=` fixtures, mounted read-only at
  /opt/nanoclaw-fixtures. Making both takes well under a second, so a change to the source
  never rebuilds the image.
* Commands go over a virtio console (/dev/hvc0 in the guest), where the image's
  `backdoor.service` keeps a root bash reading, as in NixOS's test instrumentation. Each
  command runs as NixOS's driver runs it (bash, `set -euo pipefail` first, stdin from
  /dev/null) with stdout and stderr into a file that comes back base64-encoded between two
  markers unique to the command, then its exit status. Unlike NixOS's driver, no process is
  started for the plumbing (under TCG each exec costs ~70 ms): the command runs in a forked
  subshell in a process group of its own, and a forked watchdog kills that group when the
  timeout runs out (see `_wrap`). A round trip of `true` takes ~20 ms under TCG. (A file
  rather than NixOS's pipe also means that a background process left running by a command
  cannot hold the reply up.)
* Network: QEMU user networking with restrict=on, on a "public" 11.0.0.0/24: the guest is
  11.0.0.15, QEMU's virtual host 11.0.0.2 is its gateway. No packet leaves QEMU except TCP
  connections to the `forwards=` targets: (guest_ip, guest_port, host_port) makes
  guest_ip:guest_port in the guest reach 127.0.0.1:host_port on the host (a guestfwd, one
  socat per connection). Anything else (DNS included) is dropped by QEMU.
* Acceleration: KVM if a short probe boot shows that it works (nested KVM may exist and
  hang), else TCG; the result is cached per host boot. NANOCLAW_VM_ACCEL=kvm|tcg forces one.
* Nothing outlives the driver: QEMU gets PR_SET_PDEATHSIG=SIGKILL, every started VM is
  killed at exit (atexit) and by `shutdown`/`crash`/the context manager, and its working
  directory (disk images, sockets, QEMU's overlay) is removed.

Also here: `start_all`, `subtest`, `retry` and `run_scenario` (a scenario file is run like a
NixOS testScript), and `main`, the runner behind `vm-tests/run`.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import compileall
import contextlib
import http.server
import io
import itertools
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from nanoclaw.appliance.child_process import dies_with_parent
from tests.support.driver_api import DriverApi  # the checkout is on PYTHONPATH (vm-tests/run)

REPO = Path(__file__).resolve().parents[1]

SCENARIOS = REPO / "vm-tests" / "scenarios"
FIXTURES = REPO / "vm-tests" / "fixtures"
PRELUDE = REPO / "vm-tests" / "prelude.py"
# What of the repository the guest sees at /opt/nanoclaw-src.
SOURCE_ENTRIES = ("nanoclaw", "units", "policies", "pyproject.toml", "vm-tests")
SOURCE_MOUNT = "/opt/nanoclaw-src"
FIXTURES_MOUNT = "/opt/nanoclaw-fixtures"
VENV = "/opt/nanoclaw/venv"
GUEST_IP = "11.0.0.15"
GATEWAY_IP = "11.0.0.2"
NETWORK = "11.0.0.0/24"

COMMAND_TIMEOUT = 120.0  # seconds, for execute/succeed/fail
WAIT_TIMEOUT = 120.0  # seconds, for the wait_* methods (a failing wait costs CI this much)
BOOT_TIMEOUT = 300.0  # seconds, for start
READY_LINE = b"nanoclaw-backdoor-ready"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_GUEST_PATH = re.compile(r"^/[^\0\n]*$")

_machines: list[VirtualMachine] = []  # every VM created, for start_all and run_scenario
_running: weakref.WeakSet[VirtualMachine] = weakref.WeakSet()
_counter = itertools.count(1)


def log(message: str) -> None:
    print(message, flush=True)


# -- image and acceleration --------------------------------------------------------------------


def build_image() -> Path:
    """The cached image directory (root.img, vmlinuz, initrd.img), built first if needed
    (about two minutes) by vm-tests/image."""
    result = subprocess.run(
        [str(REPO / "vm-tests" / "image"), "--print-path"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def detect_accel(kernel: Path, probe_timeout: float = 10.0) -> str:
    """Return "kvm" if KVM really runs a guest here, else "tcg".

    /dev/kvm may exist and still hang (nested virtualisation), so the probe boots `kernel`
    with no root under KVM, expecting a kernel panic and QEMU's exit within `probe_timeout`
    (well under a second when KVM works). The answer is cached for this host boot in
    ~/.cache/nanoclaw/vm-accel. NANOCLAW_VM_ACCEL=kvm|tcg skips the probe."""
    forced = os.environ.get("NANOCLAW_VM_ACCEL", "")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ValueError(f"NANOCLAW_VM_ACCEL={forced!r}: kvm or tcg")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = Path(os.environ.get("NANOCLAW_CACHE", Path.home() / ".cache" / "nanoclaw"))
    cached = cache / "vm-accel"
    with contextlib.suppress(OSError, ValueError):
        seen_boot, seen_accel = cached.read_text().split()
        if seen_boot == boot_id and seen_accel in ("kvm", "tcg"):
            return seen_accel
    accel = "kvm" if _kvm_probe(kernel, probe_timeout) else "tcg"
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(f"{boot_id} {accel}\n")
    return accel


def _kvm_probe(kernel: Path, timeout: float) -> bool:
    with tempfile.TemporaryDirectory(prefix="nanoclaw-kvm-probe-") as workdir:
        serial = Path(workdir) / "serial.log"
        command = [
            _qemu(), "-accel", "kvm", "-cpu", "host", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-m", "256",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
            "-serial", f"file:{serial}",
        ]  # fmt: skip
        began = time.monotonic()
        process = _spawn(command, Path(workdir) / "qemu.log", Path(workdir))
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"KVM probe: no answer in {timeout:.0f} s (nested KVM?); using TCG")
            return False
        finally:
            _kill_wait(process)
        works = process.returncode == 0 and b"Kernel panic" in serial.read_bytes()
        log(f"KVM probe: {'works' if works else 'fails'} ({time.monotonic() - began:.1f} s)")
        return works


# -- the machine ---------------------------------------------------------------------------


class VirtualMachine(DriverApi):
    """One QEMU VM booted from the image of vm-tests/image, with the NixOS test driver's API."""

    command_timeout = COMMAND_TIMEOUT
    wait_timeout = WAIT_TIMEOUT
    poll_seconds = 0.25

    def __init__(
        self,
        image: Path | str,
        *,
        name: str = "machine",
        source: Path | str | None = REPO,
        files: Mapping[str, Path | str] | None = None,
        memory: int = 1024,
        cpus: int = 2,
        forwards: Sequence[tuple[str, int, int]] = (),
        accel: str | None = None,
        kernel_args: str = "",
        console_log: Path | str | None = None,
    ) -> None:
        """`image`: the directory vm-tests/image printed. `source`: the repository whose
        SOURCE_ENTRIES appear at /opt/nanoclaw-src (None: no source disk). `files`: fixtures,
        a relative path under /opt/nanoclaw-fixtures -> a host file or directory. `memory` in
        MiB. `forwards`: (guest_ip, guest_port, host_port), see the module docstring. `accel`:
        "kvm" or "tcg", detected at start when None. `console_log`: where the serial console
        (kernel and systemd messages) is written, by default
        $TMPDIR/nanoclaw-vm-NAME.console.log, overwritten at every start."""
        if not _NAME.match(name):
            raise ValueError(f"VM name {name!r}: use lowercase letters, digits and '-'")
        self.image = Path(image)
        for part in ("root.img", "vmlinuz", "initrd.img"):
            if not (self.image / part).is_file():
                raise FileNotFoundError(f"{self.image / part} is missing (run vm-tests/image)")
        self.name = name
        self.source = Path(source) if source is not None else None
        self.files = {key: Path(value) for key, value in (files or {}).items()}
        for key, value in self.files.items():
            relative = Path(key)
            if relative.is_absolute() or ".." in relative.parts or key in ("", "."):
                raise ValueError(f"fixture {key!r}: give a relative path without '..'")
            if not value.exists():
                raise FileNotFoundError(f"fixture {key!r}: {value} does not exist")
        self.memory = memory
        self.cpus = cpus
        self.forwards = [(ip, int(gport), int(hport)) for ip, gport, hport in forwards]
        for ip, gport, hport in self.forwards:
            if not re.fullmatch(r"11\.0\.0\.\d{1,3}", ip) or ip in (GUEST_IP, GATEWAY_IP):
                raise ValueError(
                    f"forward {ip}:{gport}: use an address of {NETWORK} "
                    f"other than {GUEST_IP} and {GATEWAY_IP}"
                )
            if not (0 < gport < 65536 and 0 < hport < 65536):
                raise ValueError(f"forward {ip}:{gport} -> {hport}: ports are 1..65535")
        self.accel = accel
        self.kernel_args = kernel_args
        self.console_log_path = Path(
            console_log
            if console_log is not None
            else Path(tempfile.gettempdir()) / f"nanoclaw-vm-{name}.console.log"
        )
        self.guest_ip = GUEST_IP
        self.boot_seconds = 0.0  # QEMU started -> the backdoor shell answered
        self.launched_at = 0.0  # time.monotonic() when QEMU was started
        self.booted = False  # QEMU runs
        self.connected = False  # the backdoor shell answered
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._listener: socket.socket | None = None
        self._shell: socket.socket | None = None
        self._buffer = bytearray()
        self._commands = itertools.count(1)
        _machines.append(self)

    def __repr__(self) -> str:
        return f"<VirtualMachine {self.name!r}>"

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot and wait until the backdoor shell answers (long before multi-user.target:
        use wait_for_unit for that). Does nothing when the VM is already up.

        Call it from a thread that lives as long as the VM (the main thread, say):
        PR_SET_PDEATHSIG fires when the *thread* that started QEMU ends."""
        self._launch()
        self._connect(timeout)

    def _launch(self) -> None:
        if self.booted:
            return
        try:
            if self.accel is None:
                self.accel = detect_accel(self.image / "vmlinuz")
            self._workdir = Path(tempfile.mkdtemp(prefix=f"nanoclaw-vm-{self.name}-{os.getpid()}-"))
            clean_leftovers()
            disks = []
            if self.source is not None:
                disks.append(self._make_source_disk(self._workdir / "source.img"))
            disks.append(self._make_fixtures_disk(self._workdir / "fixtures.img"))
            shell_path = self._workdir / "shell.sock"
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(shell_path))
            self._listener.listen(1)
            self.console_log_path.parent.mkdir(parents=True, exist_ok=True)
            self.console_log_path.write_bytes(b"")
            command = self._qemu_command(shell_path, disks)
            (self._workdir / "qemu-command").write_text(shlex.join(command) + "\n")
            log(
                f"[{self.name}] starting QEMU ({self.accel}, {self.cpus} CPUs, "
                f"{self.memory} MiB); console: {self.console_log_path}"
            )
            self.launched_at = time.monotonic()
            self._process = _spawn(command, self._workdir / "qemu.log", self._workdir)
            _running.add(self)
            self.booted = True
        except BaseException:
            self._stop_processes()
            raise

    def _connect(self, timeout: float) -> None:
        if self.connected:
            return
        deadline = time.monotonic() + timeout
        try:
            assert self._listener is not None
            while self._shell is None:
                self._check_alive()
                if time.monotonic() > deadline:
                    self._fail_boot(f"QEMU did not connect its console in {timeout:.0f} s")
                readable, _, _ = select.select([self._listener], [], [], 0.5)
                if readable:
                    self._shell, _ = self._listener.accept()
            while READY_LINE not in self._buffer:
                if not self._receive(deadline):
                    self._fail_boot(f"the backdoor shell did not answer in {timeout:.0f} s")
            del self._buffer[: self._buffer.index(READY_LINE) + len(READY_LINE)]
        except BaseException:
            self._stop_processes()
            raise
        self.boot_seconds = time.monotonic() - self.launched_at
        self.connected = True
        status, out = self._roundtrip(
            "enable -f /usr/lib/bash/setpgid setpgid 2>$__o; __s=$?;", None, 60
        )
        if status != 0:
            self._stop_processes()
            raise RuntimeError(f"VM {self.name}: the backdoor shell cannot load setpgid: {out!r}")
        self.log(f"backdoor shell up {self.boot_seconds:.1f} s after QEMU started")

    def _qemu_command(self, shell_path: Path, disks: list[Path]) -> list[str]:
        assert self._workdir is not None
        kvm = self.accel == "kvm"
        append = " ".join(
            [
                "root=/dev/vda rw console=ttyS0 panic=-1 oops=panic net.ifnames=0",
                "systemd.unified_cgroup_hierarchy=1 mitigations=off",
                "random.trust_cpu=on 8250.nr_uarts=1 fsck.mode=skip",
                self.kernel_args,
            ]
        ).strip()
        netdev = (
            f"user,id=n0,net={NETWORK},host={GATEWAY_IP},dns=11.0.0.3,"
            f"dhcpstart={GUEST_IP},restrict=on,ipv6=off"
        )
        for ip, gport, hport in self.forwards:
            netdev += f",guestfwd=tcp:{ip}:{gport}-cmd:socat - TCP:127.0.0.1:{hport}"
        command = [
            _qemu(), "-name", self.name,
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-accel", "kvm" if kvm else "tcg", "-cpu", "host" if kvm else "max",
            "-smp", str(self.cpus), "-m", str(self.memory),
            "-kernel", str(self.image / "vmlinuz"),
            "-initrd", str(self.image / "initrd.img"),
            "-append", append,
            "-drive", f"file={self.image / 'root.img'},if=virtio,format=raw,snapshot=on,"
            "cache=unsafe",
        ]  # fmt: skip
        for disk in disks:
            command += ["-drive", f"file={disk},if=virtio,format=raw,readonly=on"]
        command += [
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=shell,path={shell_path}",
            "-device", "virtconsole,chardev=shell",
            "-device", "virtio-rng-pci",
            "-chardev", f"file,id=console,path={self.console_log_path}",
            "-serial", "chardev:console",
        ]  # fmt: skip
        return command

    def _make_source_disk(self, path: Path) -> Path:
        assert self.source is not None and self._workdir is not None
        stage = self._workdir / "source"
        stage.mkdir(mode=0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")
        for entry in SOURCE_ENTRIES:
            here = self.source / entry
            if here.is_dir():
                shutil.copytree(here, stage / entry, ignore=ignore, symlinks=True)
            elif here.exists():
                shutil.copy2(here, stage / entry)
        if not (stage / "nanoclaw").is_dir():
            raise FileNotFoundError(f"{self.source} has no nanoclaw/ to attach")
        if sys.version_info[:2] == (3, 11):  # the guest's Python: compile its bytecode here,
            # as the guest cannot write it on the read-only disk (and is slow at it)
            compileall.compile_dir(stage / "nanoclaw", quiet=2, workers=0)
        _make_ext4(stage, path, "nanoclaw-src")
        shutil.rmtree(stage)
        return path

    def _make_fixtures_disk(self, path: Path) -> Path:
        assert self._workdir is not None
        stage = self._workdir / "fixtures"
        stage.mkdir(mode=0o755)
        for key, host in self.files.items():
            inside = stage / key
            inside.parent.mkdir(parents=True, exist_ok=True)
            if host.is_dir():
                shutil.copytree(host, inside, symlinks=True)
            else:
                shutil.copy2(host, inside)
        _make_ext4(stage, path, "nanoclaw-fix")
        shutil.rmtree(stage)
        return path

    def _fail_boot(self, why: str) -> None:
        qemu_log = ""
        if self._workdir is not None and (self._workdir / "qemu.log").exists():
            qemu_log = (self._workdir / "qemu.log").read_text(errors="replace").strip()
        console = self.console_log()
        self._stop_processes()
        raise RuntimeError(
            f"VM {self.name} did not boot: {why}\n"
            + (f"QEMU said:\n{qemu_log}\n" if qemu_log else "")
            + f"console ({self.console_log_path}), last 60 lines:\n"
            + "\n".join(console.splitlines()[-60:])
        )

    def _check_alive(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            qemu_log = ""
            if self._workdir is not None and (self._workdir / "qemu.log").exists():
                qemu_log = (self._workdir / "qemu.log").read_text(errors="replace").strip()
            code = process.returncode if process is not None else None
            console = "\n".join(self.console_log().splitlines()[-40:])
            self._stop_processes()
            raise RuntimeError(
                f"VM {self.name} is not running (QEMU exit status {code})"
                + (f"\nQEMU said:\n{qemu_log}" if qemu_log else "")
                + f"\nconsole, last 40 lines:\n{console}"
            )

    def is_up(self) -> bool:
        return self.booted and self.connected

    def seconds_since_start(self) -> float:
        """Seconds since QEMU was started (boot time so far, when called after a wait)."""
        return time.monotonic() - self.launched_at if self.launched_at else 0.0

    def console_log(self) -> str:
        """The serial console so far: kernel and systemd messages."""
        try:
            raw = self.console_log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return raw.replace("\r\n", "\n").replace("\r", "")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Power off cleanly and wait for QEMU to exit; kill it if it does not in time."""
        if not self.booted:
            return
        process = self._process
        if self.connected and process is not None and process.poll() is None:
            self.log("powering off")
            with contextlib.suppress(OSError):
                # No reply to wait for: the shell is stopped early in the shutdown.
                assert self._shell is not None
                self._shell.sendall(b"systemctl --no-block poweroff\n")
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log(f"did not power off in {timeout:.0f} s; killing QEMU")
        self._stop_processes()

    def crash(self) -> None:
        """Kill QEMU at once, as a power cut would."""
        if not self.booted:
            return
        self.log("crash: killing QEMU")
        self._stop_processes()

    def wait_for_shutdown(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait for the guest to power itself off (QEMU exits, -no-reboot)."""
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"[{self.name}] still running after {timeout} s") from None
        self._stop_processes()

    def _stop_processes(self) -> None:
        if self._process is not None:
            _kill_wait(self._process)
        for sock in (self._shell, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._process = None
        self._shell = None
        self._listener = None
        self._workdir = None
        self._buffer.clear()
        self.booted = False
        self.connected = False
        _running.discard(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.shutdown()
        else:
            self._stop_processes()  # no clean poweroff after a failure: just be gone

    # -- the console protocol -------------------------------------------------------------

    def _receive(self, deadline: float) -> bool:
        """Read what the shell sent into the buffer; False once `deadline` has passed."""
        assert self._shell is not None
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self._shell], [], [], min(remaining, 0.5))
            if readable:
                chunk = self._shell.recv(1 << 16)
                if not chunk:
                    self._check_alive()
                    raise RuntimeError(f"[{self.name}] the backdoor shell closed its console")
                self._buffer += chunk
                return True

    def _roundtrip(self, run: str, payload: bytes | None, timeout: float) -> tuple[int, bytes]:
        """Send one line to the backdoor shell and wait for its reply: (status, output).

        `run` is bash that leaves the output in the file $__o and the status in $__s (see
        `_wrap`); the output comes back base64-encoded between two markers that carry a
        fresh number, so that whatever an earlier command left on the console (one the host
        gave up on, say) is never taken for this reply. `payload` is sent right after the
        line, for a `head -c` in `run` to read. Only builtins and forks run here besides the
        command itself, and base64 when there is output: under TCG every exec costs ~70 ms."""
        if not self.connected or self._shell is None:
            raise RuntimeError(f"VM {self.name} is not running (call start() first)")
        n = next(self._commands)
        line = (
            f"__o=/run/backdoor/out.{n}; {run} "
            f"printf '\\n%s-%d< ' NANOCLAW {n}; [ ! -s $__o ] || base64 -w0 $__o; : >$__o; "
            f"printf ' %s-%d> %d\\n' NANOCLAW {n} $__s\n"
        )
        start, end = b"\nNANOCLAW-%d< " % n, b" NANOCLAW-%d> " % n
        self._shell.sendall(line.encode())
        if payload is not None:
            self._shell.sendall(payload)
        deadline = time.monotonic() + timeout
        scanned = 0  # the end marker is not in self._buffer[:scanned]: look at new data only
        while True:
            found = self._buffer.find(end, max(0, scanned - len(end)))
            if found >= 0:
                newline = self._buffer.find(b"\n", found + len(end))
                began = self._buffer.rfind(start, 0, found)
                if newline >= 0 and began >= 0:
                    status = int(self._buffer[found + len(end) : newline])
                    output = base64.b64decode(self._buffer[began + len(start) : found])
                    del self._buffer[: newline + 1]
                    return status, output
            else:
                scanned = len(self._buffer)
            if not self._receive(deadline):
                raise TimeoutError(
                    f"[{self.name}] no answer from the backdoor shell in {timeout:.0f} s"
                )

    @staticmethod
    def _wrap(command: str, timeout: float | None) -> str:
        """Bash for the backdoor shell that runs `command` as NixOS's driver does (bash,
        `set -euo pipefail`, stdin from /dev/null, stdout and stderr captured), but in a
        subshell in the background, in a process group of its own (bash-builtins' loadable
        `setpgid`), which a watchdog subshell kills whole with SIGKILL when `timeout` runs
        out (its sleep is `read -t` on a FIFO that nobody writes). Forks, no execs."""
        run = (
            "( setpgid $BASHPID $BASHPID; exec 9<&-; set -euo pipefail; "
            f"eval {shlex.quote(command)} ) >$__o 2>&1 </dev/null & __p=$!; "
        )
        if timeout is None:
            return run + "wait $__p; __s=$?;"
        return run + (
            f"( read -t {timeout:.3f} -u 9; kill -KILL -- -$__p || kill -KILL $__p ) "
            "2>/dev/null & __w=$!; wait $__p; __s=$?; kill $__w 2>/dev/null;"
        )

    # -- commands -------------------------------------------------------------------------

    def execute(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Run `command` with bash (`set -euo pipefail` first, as NixOS does) as root in the
        guest; return its exit status and stdout+stderr. Raises TimeoutError when `timeout`
        (seconds; None: COMMAND_TIMEOUT) ran out and the command was killed."""
        timeout = self.command_timeout if timeout is None else timeout
        host_timeout = timeout + 30
        began = time.monotonic()
        status, raw = self._roundtrip(self._wrap(command, timeout), None, host_timeout)
        output = raw.decode(errors="replace")
        if status == 137 and time.monotonic() - began >= timeout:
            raise TimeoutError(
                f"[{self.name}] `{command}` timed out after {timeout:.0f} s "
                f"and was killed; output:\n{output}"
            )
        return status, output

    # -- files ----------------------------------------------------------------------------

    def copy_from_host(self, source: Path | str, target: str, timeout: float = 300) -> None:
        """Copy a host file or directory to `target` in the guest (created or overwritten,
        a directory merged into), owned by root. Goes over the console as a base64 gzipped
        tar: fine for a few MB; for more, put it into `files=` at construction."""
        if not _GUEST_PATH.match(target):
            raise ValueError(f"{target!r}: give an absolute path in the guest")
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(source)

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
            tar.add(str(source), arcname="payload", filter=as_root)
        payload = base64.b64encode(buffer.getvalue())
        n = next(_counter)
        staging = f"/run/copy-from-host.{n}"
        quoted = shlex.quote(target)
        self.log(f"copying {source} to {target} ({len(payload)} bytes of base64)")
        status, out = self._roundtrip(
            f"mkdir -p {staging} && head -c {len(payload)} >{staging}/b64 2>$__o; __s=$?;",
            payload,
            timeout,
        )
        if status != 0:
            raise RuntimeError(f"[{self.name}] receiving {source} failed ({status}):\n{out!r}")
        self.succeed_quietly(
            f"trap 'rm -rf {staging}' EXIT; base64 -d {staging}/b64 | tar -xzf - -C {staging}; "
            f'mkdir -p "$(dirname {quoted})"; cp -a -T {staging}/payload {quoted}',
            timeout,
        )

    def copy_from_vm(self, source: str, target: Path | str, timeout: float = 300) -> None:
        """Copy a guest file or directory to the host path `target` (created or
        overwritten), over the console like copy_from_host."""
        status, out = self.execute(
            f"src=$(realpath -e {shlex.quote(source)}); "
            'tar -czf - -C "$(dirname "$src")" "$(basename "$src")" | base64 -w0',
            timeout,
        )
        if status != 0:
            raise RuntimeError(f"[{self.name}] reading {source} failed ({status}):\n{out}")
        target = Path(target)
        with (
            tempfile.TemporaryDirectory(
                dir=target.parent if target.parent.exists() else None
            ) as staging,
            tarfile.open(fileobj=io.BytesIO(base64.b64decode(out))) as tar,
        ):
            tar.extractall(staging, filter="tar")
            (extracted,) = Path(staging).iterdir()
            if target.is_dir() and extracted.is_dir():
                shutil.copytree(extracted, target, dirs_exist_ok=True)
            else:
                shutil.move(extracted, target)


# -- helpers for scenarios -------------------------------------------------------------------


def start_all() -> None:
    """Start every VM created so far (their QEMUs at once, then wait for each)."""
    for machine in _machines:
        machine._launch()
    for machine in _machines:
        machine._connect(BOOT_TIMEOUT)


@contextlib.contextmanager
def subtest(name: str) -> Iterator[None]:
    """Log the start, end and duration of a named part of a scenario."""
    log(f"subtest: {name}")
    began = time.monotonic()
    try:
        yield
    except BaseException:
        log(f"subtest FAILED: {name} ({time.monotonic() - began:.1f} s)")
        raise
    log(f"subtest ok: {name} ({time.monotonic() - began:.1f} s)")


def retry(fn: Callable[[bool], bool], timeout: float = 900) -> None:
    """Call fn(last_try) once a second until it returns True (as NixOS's `retry`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise AssertionError(f"action timed out after {timeout} seconds")


def run_scenario(
    path: Path | str,
    machines: Sequence[VirtualMachine],
    extra: Mapping[str, Any] | None = None,
    prelude: Path | str | None = None,
) -> None:
    """Run a scenario file as a NixOS testScript: its globals hold `machine` (the first
    VM), each VM under its name (with "_" for "-"), `machines`, `start_all`, `subtest`,
    `retry`, `log`, `VirtualMachine`, `os` and `shlex`, plus `extra`. While it runs, its
    directory and vm-tests/ are on sys.path (for helper modules and `import driver`).
    `prelude`, a file of shared helpers, runs first in the same globals (as if the two were
    one testScript). Raises whatever the scenario raises."""
    path = Path(path)
    if not machines:
        raise ValueError("run_scenario needs at least one machine")
    namespace: dict[str, Any] = {
        "__name__": "__scenario__",
        "__file__": str(path),
        "machine": machines[0],
        "machines": list(machines),
        "start_all": start_all,
        "subtest": subtest,
        "retry": retry,
        "log": log,
        "VirtualMachine": VirtualMachine,
        "os": os,
        "shlex": shlex,
    }
    for machine in machines:
        namespace[machine.name.replace("-", "_")] = machine
    namespace.update(extra or {})
    codes = [compile(Path(prelude).read_text(), str(prelude), "exec")] if prelude else []
    codes.append(compile(path.read_text(), str(path), "exec"))
    # Helper modules beside the scenario (vm-tests/scenarios/_*.py) and `import driver`.
    added = [str(directory) for directory in (path.parent, REPO / "vm-tests")]
    sys.path[:0] = added
    try:
        for code in codes:
            exec(code, namespace)
    finally:
        for directory in added:
            sys.path.remove(directory)


# -- the runner (vm-tests/run) ---------------------------------------------------------------

# "Public" web servers for the scenarios: port 80 of each guest address reaches a tiny HTTP
# server of its own on the host, which answers every GET with "egress-ok <address>\n".
# Nothing else outside the VM is reachable from it.
WEB_SERVERS = ("11.0.0.100", "11.0.0.101")


@dataclass
class ScenarioResult:
    path: Path
    seconds: float
    error: str = ""


def serve_http(body: bytes) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A tiny HTTP server on the host's 127.0.0.1 (a free port) answering every GET with
    `body`; its thread is a daemon. Returns the server (call shutdown()) and its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _after_failure(machine: VirtualMachine) -> None:
    """Show what nanoclaw's units logged (the console has none of it), then power off, so
    that the next scenario boots afresh instead of inheriting whatever broke this one."""
    if not machine.is_up():
        return
    try:
        _, journal = machine.execute(
            "journalctl --no-pager -o short-monotonic -n 60 -u 'nanoclaw*'", timeout=60
        )
        log(f"=== nanoclaw's journal, last 60 lines:\n{journal}")
    except Exception as error:  # the report must not hide the failure it reports on
        log(f"=== nanoclaw's journal unavailable: {error}")
    machine.shutdown()


def discover_scenarios() -> list[Path]:
    """vm-tests/scenarios/*.py in name order, without helpers (names starting with "_")."""
    return sorted(path for path in SCENARIOS.glob("*.py") if not path.name.startswith("_"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vm-tests/run", description="Boot one VM and run the scenarios in it, in order."
    )
    parser.add_argument(
        "scenarios", nargs="*", type=Path, help="scenario files (default: vm-tests/scenarios/*.py)"
    )
    parser.add_argument("--memory", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    parser.add_argument("--accel", choices=("kvm", "tcg"), help="default: detected")
    parser.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failed scenario"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the tree attached at /opt/nanoclaw-src (default: this repository)",
    )
    parser.add_argument(
        "--prelude",
        type=Path,
        default=PRELUDE if PRELUDE.is_file() else None,
        help="helpers run before each scenario in its globals (default: vm-tests/prelude.py)",
    )
    args = parser.parse_args(argv)

    scenarios = [path.resolve() for path in args.scenarios] or discover_scenarios()
    if not scenarios:
        log(f"no scenarios in {SCENARIOS}")
        return 1
    for path in scenarios:
        if not path.is_file():
            log(f"no such scenario: {path}")
            return 2

    _exit_on_sigterm()
    began = time.monotonic()
    image = build_image()
    build_seconds = time.monotonic() - began
    log(f"image {image} ready in {build_seconds:.1f} s")

    servers = []
    forwards = []
    for ip in WEB_SERVERS:
        server, port = serve_http(f"egress-ok {ip}\n".encode())
        servers.append(server)
        forwards.append((ip, 80, port))
    files = {entry.name: entry for entry in sorted(FIXTURES.iterdir())} if FIXTURES.is_dir() else {}
    machine = VirtualMachine(
        image,
        name="machine",
        source=args.source,
        memory=args.memory,
        cpus=args.cpus,
        forwards=forwards,
        accel=args.accel,
        files=files,
    )
    results: list[ScenarioResult] = []
    boots: list[tuple[float, float]] = []  # (to backdoor, to multi-user), per boot
    interrupted = False
    try:
        for path in scenarios:
            if not machine.is_up():  # the first, or a scenario left it down
                machine.start()
                machine.wait_for_unit("multi-user.target")
                boots.append((machine.boot_seconds, machine.seconds_since_start()))
                log(
                    f"[{machine.name}] multi-user.target reached {boots[-1][1]:.1f} s after "
                    "QEMU started"
                )
            log(f"=== scenario {path.name}")
            started = time.monotonic()
            try:
                run_scenario(
                    path, [machine], {"web_servers": list(WEB_SERVERS)}, prelude=args.prelude
                )
            except Exception:
                results.append(
                    ScenarioResult(path, time.monotonic() - started, traceback.format_exc())
                )
                log(f"=== scenario {path.name} FAILED\n{results[-1].error}")
                if args.fail_fast:
                    break
                _after_failure(machine)
            else:
                results.append(ScenarioResult(path, time.monotonic() - started))
                log(f"=== scenario {path.name} passed ({results[-1].seconds:.1f} s)")
        machine.shutdown()
    except KeyboardInterrupt as error:
        interrupted = True
        log(f"\ninterrupted ({error or 'Ctrl-C'}): stopping the VM")
    finally:
        machine._stop_processes()
        for server in servers:
            server.shutdown()

    failed = [result for result in results if result.error]
    not_run = scenarios[len(results) :]
    log("")
    log(f"image build/reuse   {build_seconds:7.1f} s")
    for backdoor, multi_user in boots:
        log(f"boot to backdoor    {backdoor:7.1f} s  ({machine.accel})")
        log(f"boot to multi-user  {multi_user:7.1f} s")
    for result in results:
        log(f"{'FAIL' if result.error else 'pass'}  {result.path.name:<24} {result.seconds:7.1f} s")
    for path in not_run:
        log(f"skip  {path.name:<24}          (not run)")
    log(f"total               {time.monotonic() - began:7.1f} s")
    log(f"{len(results) - len(failed)} passed, {len(failed) + len(not_run)} failed")
    if failed or not_run:
        log(f"console log: {machine.console_log_path}")
    if interrupted:
        return 130
    return 1 if failed or not_run else 0


def _exit_on_sigterm() -> None:
    """SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so that the VMs are powered off."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# -- processes and disks ---------------------------------------------------------------------


def _qemu() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise FileNotFoundError("qemu-system-x86_64 is missing: run scripts/host-deps")
    return found


def _make_ext4(directory: Path, image: Path, label: str) -> None:
    """An ext4 image of `directory`, big enough for it, made without mounting anything."""
    used = sum(p.lstat().st_size for p in directory.rglob("*"))
    megabytes = max(32, used * 2 // (1 << 20) + 16)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0",
         "-d", str(directory), str(image), f"{megabytes}M"],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _spawn(command: list[str], log_path: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """Start QEMU in a session of its own, killed when this thread dies."""
    env = dict(os.environ, TMPDIR=str(workdir))  # where snapshot=on puts its overlay
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=dies_with_parent(),
            start_new_session=True,
            cwd=workdir,
            env=env,
        )


def _kill_wait(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # QEMU and its guestfwd socats
        process.wait()


def clean_leftovers() -> None:
    """Remove the working directories of VMs whose driver was killed (their QEMUs died with
    it, PR_SET_PDEATHSIG, but the directories stay behind)."""
    for path in Path(tempfile.gettempdir()).glob("nanoclaw-vm-*-*-*"):
        owner = path.name.split("-")[-2]
        if path.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _stop_all() -> None:
    for machine in list(_running):
        machine._stop_processes()


if __name__ == "__main__":
    # One module, whatever its name: `import driver` in a scenario or helper must see the
    # VMs that this run created, not a fresh copy of the module.
    sys.modules.setdefault("driver", sys.modules[__name__])
    sys.exit(main())
