"""Classic BPF as seccomp runs it: the opcodes firelet uses and an assembler for forward jumps.

A conditional jump's two offsets are 8 bits (at most 255 instructions ahead), an unconditional
``ja`` takes 32 bits. :func:`assemble` lays a program out from its end backwards, so each jump's
distance is known when it is placed; a conditional jump whose target is too far goes through a
``ja`` placed right after it. References: linux/filter.h, linux/bpf_common.h, linux/seccomp.h,
Documentation/userspace-api/seccomp_filter.rst.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

# Opcode classes and fields (linux/bpf_common.h).
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40

LD_ABS = BPF_LD | BPF_W | BPF_ABS
AND_K = BPF_ALU | BPF_AND | BPF_K
JA = BPF_JMP | BPF_JA
JEQ_K = BPF_JMP | BPF_JEQ | BPF_K
JGT_K = BPF_JMP | BPF_JGT | BPF_K
JGE_K = BPF_JMP | BPF_JGE | BPF_K
RET_K = BPF_RET | BPF_K

#: The kernel's limit on one filter's length (BPF_MAXINSNS, linux/bpf_common.h).
MAX_INSNS = 4096
_MAX_SHORT_JUMP = 255

# struct seccomp_data (linux/seccomp.h): int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
OFF_NR = 0
OFF_ARCH = 4


def arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (x86_64 is little-endian)."""
    return 16 + 8 * index


def arg_high(index: int) -> int:
    return 16 + 8 * index + 4


class Insn(NamedTuple):
    """One struct sock_filter: ``code``, the jump offsets ``jt``/``jf`` and the constant ``k``."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0


class Label(NamedTuple):
    """Marks the position of the next instruction."""

    name: str


class Jump(NamedTuple):
    """A conditional jump ``code k`` to label ``true`` if the test holds, else to label ``false``."""

    code: int
    k: int
    true: str
    false: str


class Goto(NamedTuple):
    """An unconditional jump to a label."""

    target: str


Item = Insn | Label | Jump | Goto


def assemble(items: list[Item]) -> list[Insn]:
    """Resolve labels into offsets; all jumps must go forward (BPF has no backward jumps)."""
    out: list[Insn] = []  # built back to front
    at: dict[str, int] = {}  # label -> number of instructions from it to the end

    def distance(label: str) -> int:
        if label not in at:
            raise ValueError(f"BPF jump to {label!r}: no such label after the jump")
        return len(out) - at[label]

    for item in reversed(items):
        if isinstance(item, Label):
            at[item.name] = len(out)
        elif isinstance(item, Insn):
            out.append(item)
        elif isinstance(item, Goto):
            out.append(Insn(JA, k=distance(item.target)))
        else:
            out.extend(_far_jump(item, distance))
    out.reverse()
    return out


def _far_jump(jump: Jump, distance: Callable[[str], int]) -> list[Insn]:
    """The instructions for ``jump`` in reverse order: the test, preceded by a ``ja`` per far target."""
    jt, jf = distance(jump.true), distance(jump.false)
    if jt <= _MAX_SHORT_JUMP and jf <= _MAX_SHORT_JUMP:
        return [Insn(jump.code, jt, jf, jump.k)]
    if jt < _MAX_SHORT_JUMP:  # only the false target is far: test, then "ja false"
        return [Insn(JA, k=jf), Insn(jump.code, jt + 1, 0, jump.k)]
    if jf < _MAX_SHORT_JUMP:  # only the true target is far: test, then "ja true"
        return [Insn(JA, k=jt), Insn(jump.code, 0, jf + 1, jump.k)]
    return [Insn(JA, k=jf), Insn(JA, k=jt + 1), Insn(jump.code, 0, 1, jump.k)]  # test, "ja true", "ja false"


def encode(program: list[Insn]) -> bytes:
    """The program as an array of struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)
