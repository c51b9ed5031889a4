"""What inside a mount a unit must not see or change: the owner's tool files, and secrets.

A writable mount is shared with its owner, whose own tools load files from it without
asking: git runs .git/hooks and whatever .git/config (or a .git/commondir it points to)
names as core.fsmonitor or core.hooksPath; Claude Code loads .claude/settings.json hooks
and .mcp.json; editors run .vscode and .idea tasks; shells source their rc files. A tool
that wrote one would run code as the owner later (tried: a unit wrote .git/hooks/
post-commit, and the owner's next commit ran it). So at each unit start the broker walks
every protected mount (nanoclaw.broker.nofollow_walk: no link followed, a bounded number of
entries, a few levels deep), and each such entry it finds is made inaccessible in the
unit: systemd mounts an empty node without permissions over it. A mount point cannot be
renamed, replaced or removed from inside the unit, so the unit can neither change the
entry nor move it aside to put its own in its place.

Why inaccessible rather than read-only: a read-only view would bind the entry's own host
path, which lies in a directory tools write, so a concurrent unit could swap it for a
symlink between this walk and systemd's bind and have any host path bound. The node
systemd mounts instead comes from systemd itself: whatever a race does to the target, it
can only hide something more, never show anything. The cost is that a unit cannot use git
in a protected writable mount; a mount opts out with `"protect": false`.

Entries created after the walk are not covered, and nothing can cover a name that does
not exist without creating it in the owner's tree. For .git, git itself refuses a
repository directory a tool user created (its safe.directory ownership check).

Names matching the blocked patterns (credentials, .ssh, .env, id_rsa, ...) are hidden the
same way in read-only and writable mounts alike: the policy checks only the mount's own
path against them, and secrets inside it are no less secret.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from nanoclaw.broker.config_reader import CONTROL_CHARACTERS
from nanoclaw.broker.nofollow_walk import walk
from nanoclaw.broker.policy import Mount, blocked_component, is_text

# Files and directories the owner's tools read and act on when they work in a directory.
OWNER_TOOL_NAMES = frozenset(
    {
        ".git",  # hooks, config (core.fsmonitor, core.hooksPath), commondir, modules/
        ".gitmodules",
        ".hg",  # Mercurial's hgrc hooks
        ".claude",  # Claude Code's project settings, hooks, commands, agents, skills
        ".mcp.json",
        ".vscode",  # tasks.json runs on folder open, settings name programs
        ".idea",
        ".envrc",  # direnv
        ".bashrc",
        ".bash_profile",
        ".bash_login",
        ".bash_logout",
        ".profile",
        ".zshrc",
        ".zshenv",
        ".zprofile",
        ".zlogin",
        ".gitconfig",
        ".config",  # in a home directory: git, fish, systemd --user units, autostart
    }
)
SCAN_DEPTH = 3  # the mount's own entries are depth 1, as sandbox-runtime's search
SCAN_ENTRIES = 20_000  # per mount; a unit could otherwise make the walk as long as it likes
MAX_COVERS = 256  # each is a mount in every unit's namespace, paid at every start
SKIPPED_DIRECTORIES = frozenset({"node_modules"})  # large, and never holds the above


class TooManyCovers(Exception):
    """A mount holds more entries to hide than a unit can take."""


@dataclass(frozen=True)
class Scan:
    covers: tuple[str, ...]  # sandbox paths to make inaccessible
    complete: bool  # False when the walk stopped at SCAN_ENTRIES


def scan_mount(mount: Mount, blocked_patterns: Sequence[str]) -> Scan:
    """The entries of `mount` its units must not see, as sandbox paths. OSError when a
    directory cannot be looked into: the caller must then refuse, not guess.

    Symlinks are not covered: systemd refuses to mount over one, and inside the unit it
    resolves in the unit's own view. The walk follows none (nanoclaw.broker.nofollow_walk).
    """
    if not mount.protect:
        return Scan((), True)
    names = OWNER_TOOL_NAMES if mount.writable else frozenset()
    found: list[str] = []

    def visit(entry: os.DirEntry[str], relative: str, depth: int) -> bool:
        if entry.is_symlink() or not _nameable(entry.name):
            return False
        if entry.name in names or blocked_component(entry.name, blocked_patterns):
            found.append(posixpath.join(mount.sandbox, relative, entry.name))
            return False
        return depth < SCAN_DEPTH and entry.name not in SKIPPED_DIRECTORIES

    complete = walk(mount.host, visit, SCAN_ENTRIES)
    if len(found) > MAX_COVERS:
        raise TooManyCovers(
            f"{mount.host} holds more than {MAX_COVERS} entries to hide from tools "
            f"(e.g. {found[0]}); mount a narrower directory, or set protect = false for it"
        )
    return Scan(tuple(found), complete)


def _nameable(name: str) -> bool:
    # A name systemd cannot be given (not UTF-8, or with control characters) cannot be
    # covered; such a name is no protected name, and no secret the owner named by hand.
    return is_text(name) and not CONTROL_CHARACTERS.search(name)
