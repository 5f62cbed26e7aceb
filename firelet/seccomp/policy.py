"""Seccomp policies in the JSON format of Firecracker's seccompiler, decoded into typed filters.

A policy maps a thread kind (``vmm``, ``api``, ``vcpu``, ...) to a filter: ``default_action``,
``filter_action`` and ``filter``, a list of rules ``{"syscall": name, "args": [condition, ...]}``.
Rules are or-ed, a rule's conditions and-ed. A condition is ``{"index": 0-5, "type": "dword" |
"qword", "op": "eq" | "ne" | "lt" | "le" | "gt" | "ge" | {"masked_eq": mask}, "val": number}``.
Comparisons are unsigned, as the kernel's BPF compares; a ``dword`` condition looks at the low 32
bits of the argument only (a C ``int`` argument's upper register half is undefined); a negative
``val`` means its two's complement in the condition's width (``-100`` is AT_FDCWD).
Reference: Firecracker's docs/seccompiler.md; actions from linux/seccomp.h.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from firelet.errors import FireletError
from firelet.seccomp.syscalls_x86_64 import SYSCALLS

# Filter return values (linux/seccomp.h, SECCOMP_RET_*).
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
_MAX_ERRNO = 4095  # the kernel's MAX_ERRNO: larger values are not errors to the caller

_PLAIN_ACTIONS = {"allow": RET_ALLOW, "kill_process": RET_KILL_PROCESS, "kill": RET_KILL_PROCESS,
                  "kill_thread": RET_KILL_THREAD, "trap": RET_TRAP, "log": RET_LOG}
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "masked_eq")
_KINDS_OF_ARG = {"dword": 32, "qword": 64}
_MAX_ARGS = 6  # struct seccomp_data has args[6]


class SeccompError(FireletError):
    """A seccomp policy that cannot be read, compiled or installed."""


class Condition(NamedTuple):
    """``(args[arg] & mask) op val``, on the low 32 bits (``bits == 32``) or the whole argument."""

    arg: int
    bits: int
    op: str
    val: int
    mask: int


class Rule(NamedTuple):
    syscall: str
    nr: int
    conditions: tuple[Condition, ...]


class Filter(NamedTuple):
    default_action: int
    filter_action: int
    rules: tuple[Rule, ...]


Policy = dict[str, Filter]


def parse_action(value: Any, where: str) -> int:
    """A seccompiler action: ``"allow"``, ``"trap"``, ``{"errno": N}``, ... as SECCOMP_RET_* value."""
    if isinstance(value, str) and value in _PLAIN_ACTIONS:
        return _PLAIN_ACTIONS[value]
    if isinstance(value, dict) and len(value) == 1:
        (name, data), = value.items()
        if name == "errno" and _is_int(data) and 0 <= data <= _MAX_ERRNO:
            return RET_ERRNO | data
        if name == "trace" and _is_int(data) and 0 <= data <= 0xFFFF:
            return RET_TRACE | data
    raise SeccompError(f"{where}: unknown action {_show(value)}; use one of {', '.join(_PLAIN_ACTIONS)}, "
                       f'{{"errno": 0-{_MAX_ERRNO}}} or {{"trace": 0-65535}}')


def _show(value: Any) -> str:
    """A JSON value as it was written, for messages (repr is close enough for JSON's scalars)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, bits: int, where: str) -> int:
    if not _is_int(value) or not -(1 << (bits - 1)) <= value < (1 << bits):
        raise SeccompError(f"{where}: expected an integer that fits in {bits} bits, got {_show(value)}")
    return value & ((1 << bits) - 1)


def parse_condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, dict):
        raise SeccompError(f"{where}: a condition must be an object with index, type, op and val")
    unknown = set(raw) - {"index", "type", "op", "val", "comment"}
    if unknown:
        raise SeccompError(f"{where}: unknown condition field(s) {', '.join(sorted(unknown))}")
    index: Any = raw.get("index")
    if not _is_int(index) or not 0 <= index < _MAX_ARGS:
        raise SeccompError(f"{where}: index must be an argument number 0-5, got {_show(index)}")
    kind: Any = raw.get("type")
    bits = _KINDS_OF_ARG.get(kind) if isinstance(kind, str) else None
    if bits is None:
        raise SeccompError(f'{where}: type must be "dword" or "qword", got {_show(raw.get("type"))}')
    op: Any = raw.get("op")
    mask = (1 << bits) - 1
    if isinstance(op, dict) and set(op) == {"masked_eq"}:
        op, mask = "masked_eq", _number(op["masked_eq"], bits, f"{where}: masked_eq's mask")
    if op not in OPS or (op == "masked_eq" and not isinstance(raw.get("op"), dict)):
        raise SeccompError(f'{where}: op must be one of eq, ne, lt, le, gt, ge or {{"masked_eq": mask}}, '
                           f"got {_show(raw.get('op'))}")
    return Condition(index, bits, op, _number(raw.get("val"), bits, f"{where}: val"), mask)


def parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict) or not isinstance(raw.get("syscall"), str):
        raise SeccompError(f'{where}: a rule must be an object with "syscall": name')
    unknown = set(raw) - {"syscall", "args", "comment"}
    if unknown:
        raise SeccompError(f"{where}: unknown rule field(s) {', '.join(sorted(unknown))}")
    name = raw["syscall"]
    if name not in SYSCALLS:
        raise SeccompError(f"{where}: x86_64 has no system call named {name!r}")
    args = raw.get("args", [])
    if not isinstance(args, list):
        raise SeccompError(f"{where} ({name}): args must be a list of conditions")
    conds = tuple(parse_condition(c, f"{where} ({name}) condition {i}") for i, c in enumerate(args))
    return Rule(name, SYSCALLS[name], conds)


def parse_filter(raw: Any, kind: str) -> Filter:
    if not isinstance(raw, dict):
        raise SeccompError(f"thread kind {kind!r}: expected an object with default_action, filter_action, filter")
    unknown = set(raw) - {"default_action", "filter_action", "filter", "comment"}
    if unknown:
        raise SeccompError(f"thread kind {kind!r}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("default_action", "filter_action", "filter"):
        if key not in raw:
            raise SeccompError(f"thread kind {kind!r}: missing {key!r}")
    if not isinstance(raw["filter"], list):
        raise SeccompError(f"thread kind {kind!r}: filter must be a list of rules")
    return Filter(parse_action(raw["default_action"], f"thread kind {kind!r} default_action"),
                  parse_action(raw["filter_action"], f"thread kind {kind!r} filter_action"),
                  tuple(parse_rule(r, f"thread kind {kind!r} rule {i}") for i, r in enumerate(raw["filter"])))


def parse_policy(raw: Any) -> Policy:
    """A whole policy: an object of thread kind -> filter."""
    if not isinstance(raw, dict) or not raw:
        raise SeccompError("a seccomp policy must be a JSON object mapping thread kinds to filters")
    return {kind: parse_filter(f, kind) for kind, f in raw.items()}


def load_policy(path: str) -> Policy:
    """Read and check a policy file in seccompiler's JSON format."""
    import json  # here: the VMM's start path does not otherwise import it

    try:
        with open(path, "rb") as f:
            raw = json.load(f)
    except OSError as exc:
        raise SeccompError(f"seccomp filter {path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise SeccompError(f"seccomp filter {path}: not JSON ({exc}); give seccompiler's JSON, not compiled BPF") \
            from exc
    try:
        return parse_policy(raw)
    except SeccompError as exc:
        raise SeccompError(f"seccomp filter {path}: {exc}") from exc
