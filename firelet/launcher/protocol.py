"""The launcher's wire protocol: one JSON object per line, each way (docs/launcher.md).

A client sends requests on the launcher's Unix socket, one per line, and reads one
reply line per request, in order. Every request has an ``op``; every reply has
``ok`` (and, when false, ``error``: one line for people). The requests:

``launch``  ``{"op": "launch", "id": "vm-1", "argv": ["--api-sock", "/run/vm-1.sock", ...],
             "stdout": "PATH" | "inherit" | "null", "stderr": same, "name": "firelet-vmm", "cwd": null}``
            forks a child that runs firelet-vmm's ``main(argv)``; replies ``{"ok": true, "id", "pid"}``.
``list``    ``{"op": "list"}``: ``{"ok": true, "vms": [{"id", "pid", "state", "uptime_s", "cpu_s",
            "rss_kib", "uss_kib", "exit_code", "exit_signal", "argv"}, ...]}``; state is
            ``running`` or ``exited`` (exit_code) or ``killed`` (exit_signal).
``stop``    ``{"op": "stop", "id": "vm-1" | null, "all": false, "signal": "SIGTERM", "grace_s": 5.0}``
            signals one child (or all); a SIGTERM is followed by SIGKILL after ``grace_s``
            if the child still runs. Replies ``{"ok": true, "stopping": [ids]}`` at once.
``wait``    ``{"op": "wait", "id": "vm-1" | null, "timeout_s": 10.0}``: replies when that child
            (or, with no id, every child) has ended: ``{"ok": true, "vms": [...]}``, or an error
            on timeout.
``reap``    ``{"op": "reap"}``: the ended children's records, then forgets them (their ids are free).
``ping``    ``{"op": "ping"}``: ``{"ok": true, "pid", "children"}``.
``shutdown`` ``{"op": "shutdown", "leave_running": false, "grace_s": 5.0}``: stops the children
            (SIGTERM, then SIGKILL after the grace period) or leaves them running, says which in the
            reply, removes the socket and exits.
"""

from __future__ import annotations

import re
import signal

import msgspec

#: A VM's id: what firelet-vmm's ``--id`` accepts (letters, digits, '-'; at most 64).
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
#: A request line longer than this is refused and the connection closed.
MAX_LINE = 1 << 20
#: ``stdout``/``stderr`` values that are not paths.
INHERIT, NULL = "inherit", "null"


class _Request(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    pass


class Launch(_Request, tag="launch"):
    id: str
    argv: list[str]
    stdout: str = INHERIT
    stderr: str = INHERIT
    name: str = "firelet-vmm"
    cwd: str | None = None


class List(_Request, tag="list"):
    pass


class Stop(_Request, tag="stop"):
    id: str | None = None
    all: bool = False
    signal: str = "SIGTERM"
    grace_s: float = 5.0


class Wait(_Request, tag="wait"):
    id: str | None = None
    timeout_s: float = 30.0


class Reap(_Request, tag="reap"):
    pass


class Ping(_Request, tag="ping"):
    pass


class Shutdown(_Request, tag="shutdown"):
    leave_running: bool = False
    grace_s: float = 5.0


Request = Launch | List | Stop | Wait | Reap | Ping | Shutdown
OPS = ("launch", "list", "stop", "wait", "reap", "ping", "shutdown")


class ProtocolError(Exception):
    """A request the launcher refuses; the message is the reply's one-line ``error``."""


def decode_request(line: bytes) -> Request:
    """One request line into its typed request, or :class:`ProtocolError` saying what is wrong."""
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}; send one JSON object per line") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a request is a JSON object with an \"op\"")
    op = raw.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    try:
        request: Request = msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"{op}: {exc}") from None
    _check(request)
    return request


def _check(request: Request) -> None:
    if isinstance(request, Launch):
        if not ID_RE.match(request.id):
            raise ProtocolError(f"launch: id {request.id!r}: use 1 to 64 letters, digits or '-'")
        for stream in (request.stdout, request.stderr):
            if stream not in (INHERIT, NULL) and not stream.startswith("/"):
                raise ProtocolError(f"launch {request.id}: stdout/stderr {stream!r}: give an absolute path, "
                                    f"{INHERIT!r} or {NULL!r}")
        if not request.name or len(request.name.encode()) > 15 or "\0" in request.name:
            raise ProtocolError(f"launch {request.id}: name {request.name!r}: 1 to 15 bytes (the kernel's limit)")
    elif isinstance(request, Stop):
        if (request.id is None) == (not request.all):
            raise ProtocolError("stop: give an id or all: true (one of them)")
        signal_number(request.signal)
        if request.grace_s < 0:
            raise ProtocolError("stop: grace_s must not be negative")
    elif isinstance(request, Shutdown) and request.grace_s < 0:
        raise ProtocolError("shutdown: grace_s must not be negative")
    elif isinstance(request, Wait) and request.timeout_s < 0:
        raise ProtocolError("wait: timeout_s must not be negative")


def signal_number(name: str) -> int:
    """``"SIGTERM"``/``"TERM"``/``"15"`` -> 15, or :class:`ProtocolError`."""
    if name.isdigit():
        number = int(name)
        if number in set(signal.valid_signals()) and number > 0:
            return number
    else:
        full = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        member = getattr(signal.Signals, full, None)
        if member is not None:
            return int(member)
    raise ProtocolError(f"unknown signal {name!r}: use a name such as SIGTERM or SIGKILL")


def encode(message: dict[str, object]) -> bytes:
    """One reply or request line."""
    return msgspec.json.encode(message) + b"\n"


def error(message: str, op: str | None = None) -> dict[str, object]:
    """The reply to a refused request: ``error`` is one line."""
    reply: dict[str, object] = {"ok": False, "error": " ".join(message.split())}
    if op is not None:
        reply["op"] = op
    return reply
