"""Whether a tool could change what a bind source resolves to before systemd binds it.

The broker checks a mount's host path, then systemd resolves it again when it builds the
unit, following symlinks on the host. If any directory on the way were writable by a
tool's user, a tool running at that moment could swap a component for a symlink in
between and have another host path bound into its unit (tried: 48 of 150 calls got /etc).
So a bind source is admitted only where no ancestor is writable by any tool user. Then no
unit can change what the path resolves to, the path the broker checked is the path
systemd binds, and the broker's re-check at each start is race-free: what can still change
it (root, the owner of those directories) is trusted, and the re-check catches it.

"Writable" is judged as the kernel would for the tool user: its uid owns the directory
(an owner can always chmod), or the mode or POSIX ACL grants write to the uid, one of its
groups (systemd gives a unit its user's supplementary groups), or everyone. In a sticky
directory (like /tmp) only the owner of an entry may rename it, so there the next
component counts only if a tool user owns it.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass

# <linux/posix_acl_xattr.h>: a version header, then (tag, permissions, id) entries.
_ACL_XATTR = "system.posix_acl_access"
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x02, 0x04, 0x08, 0x10, 0x20
ACL_WRITE = 0x02
_NO_ACL = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(frozen=True)
class ToolUser:
    uid: int
    gids: frozenset[int]  # its own group (uid = gid) and its supplementary groups


def tool_user(uid: int) -> ToolUser:
    """The user a group's units run as, with the groups systemd would give it. Where the
    user database does not know it (a Nix build), its own group is all it can have."""
    gids = {uid}
    try:
        name = pwd.getpwuid(uid).pw_name
        gids.update(os.getgrouplist(name, uid))
    except KeyError:
        pass
    return ToolUser(uid, frozenset(gids))


def writable_ancestor(path: str, users: Mapping[str, ToolUser]) -> str | None:
    """Why a tool user could change what the absolute, resolved `path` leads to, or None.

    `users` are the untrusted users by who they are ("group a's tool user"). Every existing
    directory from / down to the parent of `path` is judged; the walk ends at the first
    missing one (nothing to swap there yet, and a missing source keeps the unit from
    starting).
    """
    parts = [part for part in path.split("/") if part]
    directory = "/"
    for child in parts:
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            return None
        writers = [name for name, user in users.items() if _may_write(directory, info, user)]
        if writers and info.st_mode & stat.S_ISVTX:
            entry = os.path.join(directory, child)
            writers = [name for name in writers if _owns(entry, users[name])]
        if writers:
            user = users[writers[0]]
            how = "owns" if info.st_uid == user.uid else "may write to"
            return (
                f"{writers[0]} (uid {user.uid}) {how} {directory}, so a unit could swap "
                "a path component between the broker's check and the bind"
            )
        directory = os.path.join(directory, child)
    return None


def _owns(path: str, user: ToolUser) -> bool:
    try:
        return os.lstat(path).st_uid == user.uid
    except FileNotFoundError:
        return True  # a tool may create it: as good as owning it


def _may_write(path: str, info: os.stat_result, user: ToolUser) -> bool:
    if info.st_uid == user.uid:
        return True
    acl = _acl(path)
    if acl is None:
        if info.st_gid in user.gids:
            return bool(info.st_mode & stat.S_IWGRP)
        return bool(info.st_mode & stat.S_IWOTH)
    # The ACL check algorithm (acl(5)): named user, then groups, then other; the mask
    # bounds every entry of the group class.
    mask = next((perm for tag, perm, _ in acl if tag == ACL_MASK), 0o7)
    named = [perm for tag, perm, who in acl if tag == ACL_USER and who == user.uid]
    if named:
        return bool(named[0] & mask & ACL_WRITE)
    groups = [
        perm
        for tag, perm, who in acl
        if (tag == ACL_GROUP and who in user.gids)
        or (tag == ACL_GROUP_OBJ and info.st_gid in user.gids)
    ]
    if groups:
        return any(perm & mask & ACL_WRITE for perm in groups)
    return any(tag == ACL_OTHER and perm & ACL_WRITE for tag, perm, _ in acl)


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    try:
        raw = os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError as error:
        if error.errno in _NO_ACL:
            return None
        raise
    body = raw[_ACL_HEADER.size :]
    count = len(body) // _ACL_ENTRY.size
    return [_ACL_ENTRY.unpack_from(body, index * _ACL_ENTRY.size) for index in range(count)]
