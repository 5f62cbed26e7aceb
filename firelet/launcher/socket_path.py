"""The launcher's socket path: its length limit, and claiming it from a launcher that died.

Shared by the server (which binds it), the client and the fleet (which check it first).
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from firelet.errors import FireletError

#: Unix socket paths (sun_path) hold at most 107 bytes and a NUL (unix(7)).
MAX_SOCKET_PATH = 107


class LauncherError(FireletError):
    """The launcher cannot start or was refused something: one line."""


def claim_socket_path(path: str) -> None:
    """Make ``path`` free for a new launcher: refuse a live one, remove a stale socket."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise LauncherError(f"--socket {path}: longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LauncherError(f"--socket {path}: exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise LauncherError(f"--socket {path}: cannot tell whether it is in use: {exc.strerror}") from None
        else:
            raise LauncherError(f"--socket {path}: a launcher is already listening there; stop it "
                                "(firelet fleet stop --all) or choose another path")
    os.unlink(path)  # nobody listens: left by a launcher that was killed
