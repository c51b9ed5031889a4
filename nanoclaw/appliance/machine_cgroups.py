"""The processes and cgroups of the Quickstart's machines, as seen from this host: the
machine's systemd among the descendants of `unshare`, a cgroup of the machine's own
below ours (so that systemd inside finds a tree delegated to it), and the cleanup of what
a killed test process left behind."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def find_init(root: int) -> int:
    """The container's systemd among the descendants of `unshare`, once it has exec'd."""
    pending = children(root)
    while pending:
        pid = pending.pop(0)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid"))
        # Two PID namespaces below ours: unshare's (nspawn is its PID 1), then the container's.
        if comm in ("systemd", "init") and len(nspid) >= own_depth() + 2 and nspid[-1] == "1":
            return pid
        pending.extend(children(pid))
    return 0


def clean_leftovers() -> None:
    """Remove the console-log directories and cgroups of machines whose test process was
    killed (its machines died with it, but these stay behind)."""
    candidates = list(Path(tempfile.gettempdir()).glob("nanoclaw-machine-*"))
    for parent in cgroup_parents():
        candidates += parent.glob("nanoclaw-*")
    for path in candidates:
        owner = path.name.split("-")[-2]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists() or not path.is_dir():
            continue
        if path.name.startswith("nanoclaw-machine-"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            remove_cgroup(path, attempts=1)


def own_depth() -> int:
    status = Path("/proc/self/status").read_text()
    return len(next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid")))


def cgroup_parents() -> list[Path]:
    """This process's cgroups in the named systemd hierarchy and the unified one, if mounted:
    where nspawn --keep-unit would put its payload and supervisor cgroups."""
    mine: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            mine["systemd"] = path
        elif hierarchy == "0" and controllers == "":
            mine["unified"] = path
    parents = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3]
        if fstype == "cgroup" and "name=systemd" in options.split(","):
            kind = "systemd"
        elif fstype == "cgroup2":
            kind = "unified"
        else:
            continue
        if kind in mine:
            parents.append(Path(fields[4]) / mine.pop(kind).lstrip("/"))
    return parents


def make_cgroups(leaf: str) -> list[Path]:
    """A cgroup of the machine's own in each of `cgroup_parents()`."""
    made = []
    for parent in cgroup_parents():
        (parent / leaf).mkdir()
        made.append(parent / leaf)
    return made


def remove_cgroup(cgroup: Path, attempts: int = 50) -> None:
    for _ in range(attempts):
        try:
            for below in sorted(
                (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                below.rmdir()
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # still busy for a moment after its last process died
            time.sleep(0.1)
