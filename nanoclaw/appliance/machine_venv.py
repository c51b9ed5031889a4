"""The venv of nanoclaw's dependencies in the Quickstart's machine: wheels fetched here
with this Python's pip (its configuration and cache), installed offline in the machine,
made again only when the dependencies change."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

from nanoclaw.appliance.machine import REPO, ApplianceError, NspawnMachine
from nanoclaw.appliance.machine_files import SCRIPTS, SOURCE, VENV, WHEELS, run, say


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "pip"]


def venv_stamp(machine_python: str) -> str:
    text = "\n".join([machine_python, *requirements()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fetch_wheels(directory: Path) -> None:
    """The wheels of nanoclaw's dependencies for the machine's Python (3.11), fetched with
    this Python's pip, so its configuration (index, certificates) and cache apply."""
    (directory / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    if sys.version_info[:2] == (3, 11):
        command = ["wheel", "--wheel-dir", str(directory)]
    else:  # binary wheels for the machine's interpreter (CPython 3.11, glibc 2.36)
        legacy = ("manylinux2014", "manylinux2010", "manylinux1")
        platforms = [f"manylinux_2_{minor}" for minor in range(36, 4, -1)] + list(legacy)
        command = ["download", "--dest", str(directory), "--only-binary=:all:"]
        command += ["--python-version", "3.11", "--implementation", "cp"]
        for platform in platforms:  # pip takes each tag literally: list every one that fits
            command += ["--platform", f"{platform}_x86_64"]
    say("fetching nanoclaw's dependencies for the machine (once; about a minute)")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *command, "--quiet", "--disable-pip-version-check",
         "-r", str(directory / "requirements.txt")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # pip warns about every configured index location that does not exist: not news.
    noise = "is ignored: it is neither a file nor a directory"
    print("".join(line for line in done.stdout.splitlines(True) if noise not in line), end="")
    if done.returncode != 0:
        raise ApplianceError("pip could not fetch the dependencies (see above)")


def install_venv(machine: NspawnMachine, stamp: str) -> None:
    say("installing them into the machine's venv")
    pip = f"$(ls {WHEELS}/pip-*.whl | tail -n1)/pip"
    scripts = "".join(
        f"printf '#!{VENV}/bin/python\\nimport sys\\nfrom {module} import main\\n"
        f"sys.exit(main())\\n' > {VENV}/bin/{name}; chmod 0755 {VENV}/bin/{name}\n"
        for name, module in SCRIPTS.items()
    )
    run(
        machine,
        f"""set -e
rm -rf {VENV}
python3 -m venv --without-pip {VENV}
{VENV}/bin/python {pip} install --quiet --no-index --find-links {WHEELS} \\
  --disable-pip-version-check -r {WHEELS}/requirements.txt
echo {SOURCE} > $(echo {VENV}/lib/python3*/site-packages)/nanoclaw-src.pth
{scripts}echo {stamp} > {VENV}/.stamp
""",
        timeout=900,
    )
