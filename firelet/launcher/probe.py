"""A minimal client for a VMM's API socket: is it up, and what state is its instance in."""

from __future__ import annotations

import json
import socket
from pathlib import Path

_GET_ROOT = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def instance_state(api_sock: str | Path, *, timeout_s: float = 2.0) -> str | None:
    """``GET /``'s ``state`` ("Not started", "Running", "Paused"), or None if nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(api_sock))
            sock.sendall(_GET_ROOT)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        state = json.loads(body).get("state")
    except (ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None
