"""A small classic-BPF interpreter (the subset seccomp filters use) and a direct evaluator of
seccompiler JSON rules, both written from the kernel's documents, independent of the compiler."""

from __future__ import annotations

import struct
from typing import Any

from firelet.seccomp.syscalls_x86_64 import SYSCALLS

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
_U32 = 0xFFFFFFFF
ACTIONS = {"allow": 0x7FFF0000, "kill_process": 0x80000000, "kill": 0x80000000, "kill_thread": 0,
           "trap": 0x00030000, "log": 0x7FFC0000}


def seccomp_data(nr: int, arch: int, args: tuple[int, ...], ip: int = 0) -> bytes:
    """struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]."""
    return struct.pack("<iIQ6Q", nr, arch, ip, *args)


def run_bpf(code: bytes, data: bytes) -> int:
    """Runs an encoded program as the kernel would, checking what the kernel's verifier checks."""
    assert len(code) % 8 == 0 and 0 < len(code) // 8 <= 4096
    prog = [struct.unpack("=HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    a, pc = 0, 0
    for _ in range(len(prog)):  # forward jumps only: at most one visit per instruction
        assert 0 <= pc < len(prog), f"fell off the program at {pc}"
        op, jt, jf, k = prog[pc]
        if op == 0x20:  # ld [k] (32-bit word, absolute)
            assert k % 4 == 0 and k + 4 <= len(data), f"bad load offset {k}"
            a = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif op == 0x54:  # and #k
            a &= k
            pc += 1
        elif op == 0x05:  # ja +k
            pc += 1 + k
        elif op in (0x15, 0x25, 0x35):  # jeq, jgt, jge #k
            hit = a == k if op == 0x15 else a > k if op == 0x25 else a >= k
            pc += 1 + (jt if hit else jf)
        elif op == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"opcode {op:#x} is not one seccomp filters should use")
    raise AssertionError("no ret reached")


def action(raw: Any) -> int:
    if isinstance(raw, str):
        return ACTIONS[raw]
    if "errno" in raw:
        return 0x00050000 | raw["errno"]
    return 0x7FF00000 | raw["trace"]


def condition_holds(cond: dict[str, Any], args: tuple[int, ...]) -> bool:
    width = 32 if cond["type"] == "dword" else 64
    full = (1 << width) - 1
    value, val = args[cond["index"]] & full, cond["val"] & full
    op = cond["op"]
    if isinstance(op, dict):
        return value & (op["masked_eq"] & full) == val
    return {"eq": value == val, "ne": value != val, "lt": value < val, "le": value <= val,
            "gt": value > val, "ge": value >= val}[op]


def evaluate(flt: dict[str, Any], nr: int, arch: int, args: tuple[int, ...]) -> int:
    """What a seccompiler filter means for one call: the reference the compiled program must agree with."""
    if arch != AUDIT_ARCH_X86_64 or nr & _U32 >= 0x40000000:
        return ACTIONS["kill_process"]
    for rule in flt["filter"]:
        if SYSCALLS[rule["syscall"]] == nr and all(condition_holds(c, args) for c in rule.get("args", [])):
            return action(flt["filter_action"])
    return action(flt["default_action"])
