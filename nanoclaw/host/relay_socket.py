"""A Unix socket the broker's relays connect to: the host's proxies listen on one each.

The relays run as dynamic users, so the socket is open to all (0666) and every request
still needs a secret of the proxy's; the directory is the host's own runtime directory, so
nothing swaps the path between bind and chmod. A socket an earlier run left is replaced;
anything else at the path is refused, and a symlink there is never followed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from contextlib import suppress


class RelaySocket:
    def __init__(self, path: str) -> None:
        self.path = path
        self._bound: tuple[int, int] | None = None  # device, inode

    async def bind(self) -> socket.socket:
        """A listening socket at the path. Raises OSError when something else is there,
        or another process listens on it."""
        await _remove_stale_socket(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)  # bind never follows a symlink: it fails on any file
            os.chmod(self.path, 0o666)
            listener.listen()
        except OSError as error:  # a missing directory: say where
            listener.close()
            raise OSError(error.errno, f"cannot listen at {self.path}: {error.strerror}") from None
        except BaseException:
            listener.close()
            raise
        bound = os.lstat(self.path)
        self._bound = (bound.st_dev, bound.st_ino)
        return listener

    def unlink(self) -> None:
        """Remove the socket, unless a successor's is there by now."""
        if self._bound is None:
            return
        device_inode, self._bound = self._bound, None
        with suppress(FileNotFoundError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == device_inode:
                os.unlink(self.path)


async def _remove_stale_socket(path: str) -> None:
    """Remove a socket left at `path` by an earlier run; refuse anything else there."""
    try:
        found = os.lstat(path)  # lstat: a symlink at the path is never followed
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise FileExistsError(
            f"{path} exists and is not a socket; remove it or choose another socket path"
        )
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nothing listens: stale
        return
    writer.close()
    raise OSError(f"{path} is in use: another process listens on it")
