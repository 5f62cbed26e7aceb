"""The launcher's wire protocol: one JSON object per line, each way (docs/launcher.md).

A client sends requests on the launcher's Unix socket, one per line, and reads one
reply line per request, in order. Every request has an ``op``; every reply has
``ok`` (and, when false, ``error``: one line for people). The requests:

``launch``  ``{"op": "launch", "id": "vm-1", "argv": ["--api-sock", "/run/vm-1.sock", ...],
             "stdout": "PATH" | "inherit" | "null", "stderr": same, "name": "firelet-vmm", "cwd": null}``
            forks a child that runs firelet-vmm's ``main(argv)``; replies ``{"ok": true, "id", "pid"}``.
            With ``"jail": {"uid", "gid", "id", "chroot_base_dir", "netns", "new_pid_ns",
            "cgroup_version", "cgroups": {file: value}, "parent_cgroup", "resource_limits"}`` the
            child is confined first, by firelet-jailer's code path (``"jail"`` then in the reply).
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

from firelet.jailer.flags import CGROUP_FILE_RE, DEFAULT_CHROOT_BASE, RESOURCES

#: A VM's id: what firelet-vmm's ``--id`` accepts (letters, digits, '-'; at most 64).
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
#: A request line longer than this is refused and the connection closed.
MAX_LINE = 1 << 20
#: The largest uid or gid a jail takes ((uid_t)-1 means "unchanged" to the kernel).
MAX_ID = 0xFFFF_FFFE
#: ``stdout``/``stderr`` values that are not paths.
INHERIT, NULL = "inherit", "null"


class _Request(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    pass


class Jail(msgspec.Struct, forbid_unknown_fields=True):
    """A launch's jail: firelet-jailer's options, by their flag names (docs/jailer.md, docs/launcher.md)."""

    uid: int
    gid: int
    id: str | None = None  # the launch's id by default
    chroot_base_dir: str = DEFAULT_CHROOT_BASE
    netns: str | None = None
    new_pid_ns: bool = False
    cgroup_version: int = 1
    cgroups: dict[str, str] = msgspec.field(default_factory=dict)  # file -> value, e.g. {"memory.max": "256M"}
    parent_cgroup: str | None = None
    resource_limits: dict[str, int] = msgspec.field(default_factory=dict)  # fsize, no-file


class Launch(_Request, tag="launch"):
    id: str
    argv: list[str]
    stdout: str = INHERIT
    stderr: str = INHERIT
    name: str = "firelet-vmm"
    cwd: str | None = None
    jail: Jail | None = None


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
        if request.jail is not None:
            _check_jail(request.id, request.jail)
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


def _check_jail(vm_id: str, jail: Jail) -> None:
    """The jail's options, for form (the host is asked when the launch prepares the jail)."""
    where = f"launch {vm_id}: jail"
    if jail.id is not None and not ID_RE.match(jail.id):
        raise ProtocolError(f"{where} id {jail.id!r}: use 1 to 64 letters, digits or '-'")
    for name, number in (("uid", jail.uid), ("gid", jail.gid)):
        if not 0 <= number <= MAX_ID:
            raise ProtocolError(f"{where} {name} {number}: expected a number from 0 to {MAX_ID}")
    for name, path in (("chroot_base_dir", jail.chroot_base_dir), ("netns", jail.netns)):
        if path is not None and (not path.startswith("/") or "\0" in path):
            raise ProtocolError(f"{where} {name} {path!r}: give an absolute path")
    if jail.cgroup_version not in (1, 2):
        raise ProtocolError(f"{where} cgroup_version {jail.cgroup_version}: expected 1 or 2")
    for file, value in jail.cgroups.items():
        if not CGROUP_FILE_RE.fullmatch(file) or not value or "\n" in value or "\0" in value:
            raise ProtocolError(f"{where} cgroups {file!r}: {value!r}: expected \"<controller>.<file>\": "
                                "\"<value>\", e.g. \"memory.max\": \"256M\"")
    parent = jail.parent_cgroup
    parts = (parent or "").strip("/").split("/")
    if parent is not None and any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(f"{where} parent_cgroup {parent!r}: expected a relative path without '.' or '..' parts")
    for name, limit in jail.resource_limits.items():
        if name not in RESOURCES or limit < 0:
            raise ProtocolError(f"{where} resource_limits {name!r}: {limit}: expected fsize or no-file, "
                                "a non-negative integer")


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
