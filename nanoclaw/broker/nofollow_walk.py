"""Walking a directory tree that tool units write, as bounded data and without following links.

The broker reads such trees (a group's workspace, a writable mount) only this way: each
directory is opened relative to its parent with O_NOFOLLOW, so a symlink a tool planted
leads nowhere, and the number of entries is bounded, so a tool cannot make the walk as
long as it likes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Since the listing: removed, replaced by a file, replaced by a symlink (O_NOFOLLOW).
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

# Called for each entry with the path of its directory relative to the root ("" at the top)
# and its depth (1 at the top); a directory is entered only when it returns True.
Visit = Callable[[os.DirEntry[str], str, int], bool]


def walk(root: str, visit: Visit, max_entries: int) -> bool:
    """Visit the tree under `root`; False if it stopped at `max_entries`.

    A root that is missing is an empty tree, and so is a directory below it that went
    away or became a link or a file since it was listed. Anything else that stops the
    walk (EACCES, say) raises OSError: what could not be seen cannot be judged."""
    try:
        fd = os.open(root, _DIRECTORY)
    except FileNotFoundError:
        return True
    budget = [max_entries]
    try:
        _walk(fd, "", 1, visit, budget)
    finally:
        os.close(fd)
    return budget[0] >= 0


def _walk(directory: int, relative: str, depth: int, visit: Visit, budget: list[int]) -> None:
    # A directory's own entries before anything below them: a budget that runs out in a
    # large subtree has still seen every entry above it (a mount's own .git, say).
    below: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                return
            if visit(entry, relative, depth) and entry.is_dir(follow_symlinks=False):
                below.append(entry.name)
    for name in below:
        try:
            child = os.open(name, _DIRECTORY, dir_fd=directory)
        except OSError as error:
            if error.errno in _GONE:
                continue
            raise
        try:
            _walk(child, os.path.join(relative, name), depth + 1, visit, budget)
        finally:
            os.close(child)
        if budget[0] < 0:
            return
