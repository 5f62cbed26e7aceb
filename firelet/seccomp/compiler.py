"""Compiles one thread kind's :class:`~firelet.seccomp.policy.Filter` into a classic BPF program.

The program's shape::

    load arch;  not x86_64       -> kill the process  (an i386 int 0x80 would index another table)
    load nr;    nr >= 0x40000000 -> kill the process  (x32 ABI calls: same table, other meanings)
    nr == a -> rules of a;  nr == b -> rules of b;  ...;  return default_action
    rules of a: rule 1's conditions, each failure going to rule 2, ...; all met -> return filter_action

A 64-bit argument is two 32-bit words at seccomp_data.args[i] (low word first); an ordering test
on it decides on the high words unless they are equal, and only then on the low words.
"""

from __future__ import annotations

from firelet.seccomp import bpf
from firelet.seccomp.bpf import Goto, Insn, Item, Jump, Label
from firelet.seccomp.policy import RET_KILL_PROCESS, Condition, Filter, Policy, SeccompError

#: AUDIT_ARCH_X86_64 (linux/audit.h): EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
AUDIT_ARCH_X86_64 = 0xC000003E
#: __X32_SYSCALL_BIT (asm/unistd.h): set in the numbers of x32 system calls.
X32_SYSCALL_BIT = 0x40000000

_ALLOW, _DEFAULT, _KILL = "allow", "default", "kill"


def compile_filter(flt: Filter, kind: str = "filter") -> list[Insn]:
    """The BPF program for ``flt``; refuses one longer than the kernel takes."""
    items: list[Item] = [
        Insn(bpf.LD_ABS, k=bpf.OFF_ARCH),
        Jump(bpf.JEQ_K, AUDIT_ARCH_X86_64, "arch_ok", _KILL),
        Label("arch_ok"),
        Insn(bpf.LD_ABS, k=bpf.OFF_NR),
        Jump(bpf.JGE_K, X32_SYSCALL_BIT, _KILL, "dispatch"),
        Label("dispatch"),
    ]
    by_nr: dict[int, list[tuple[Condition, ...]]] = {}
    for rule in flt.rules:
        by_nr.setdefault(rule.nr, []).append(rule.conditions)
    bodies: list[Item] = []
    for nr, alternatives in by_nr.items():
        if any(not conds for conds in alternatives):  # a rule without conditions matches every call
            target = _ALLOW
        else:
            target = f"nr{nr}"
            bodies += _rules(nr, alternatives)
        items.append(Jump(bpf.JEQ_K, nr, target, f"not{nr}"))
        items.append(Label(f"not{nr}"))
    items += [Goto(_DEFAULT), *bodies,
              Label(_DEFAULT), Insn(bpf.RET_K, k=flt.default_action),
              Label(_ALLOW), Insn(bpf.RET_K, k=flt.filter_action),
              Label(_KILL), Insn(bpf.RET_K, k=RET_KILL_PROCESS)]
    program = bpf.assemble(items)
    if len(program) > bpf.MAX_INSNS:
        raise SeccompError(f"seccomp filter for thread kind {kind!r} compiles to {len(program)} BPF instructions; "
                           f"the kernel takes at most {bpf.MAX_INSNS}: merge rules or drop argument checks")
    return program


def compile_policy(policy: Policy) -> dict[str, list[Insn]]:
    return {kind: compile_filter(flt, kind) for kind, flt in policy.items()}


def _rules(nr: int, alternatives: list[tuple[Condition, ...]]) -> list[Item]:
    """The or-ed rules of one system call, starting at label ``nr<nr>``; the last failure -> default."""
    items: list[Item] = [Label(f"nr{nr}")]
    for r, conds in enumerate(alternatives):
        fail = f"nr{nr}r{r + 1}" if r + 1 < len(alternatives) else _DEFAULT
        for c, cond in enumerate(conds):
            ok = f"nr{nr}r{r}c{c + 1}" if c + 1 < len(conds) else _ALLOW
            items += _condition(cond, ok, fail, f"nr{nr}r{r}c{c}")
            if c + 1 < len(conds):
                items.append(Label(ok))
        if r + 1 < len(alternatives):
            items.append(Label(fail))
    return items


def _condition(cond: Condition, ok: str, fail: str, tag: str) -> list[Item]:
    """Tests ``cond`` on the argument words, going to ``ok`` or ``fail``; ``tag`` names its inner labels."""
    low = [Insn(bpf.LD_ABS, k=bpf.arg_low(cond.arg))]
    if cond.bits == 32:
        return low + _word(cond.op, cond.val, cond.mask, ok, fail)
    high = [Insn(bpf.LD_ABS, k=bpf.arg_high(cond.arg))]
    hv, lv, hm, lm = cond.val >> 32, cond.val & 0xFFFFFFFF, cond.mask >> 32, cond.mask & 0xFFFFFFFF
    then_low = f"{tag}low"
    op = cond.op
    if op in ("eq", "masked_eq"):  # both halves equal (under the mask)
        return [*high, *_word(op, hv, hm, then_low, fail), Label(then_low), *low, *_word(op, lv, lm, ok, fail)]
    if op == "ne":  # either half differs
        return [*high, Jump(bpf.JEQ_K, hv, then_low, ok), Label(then_low), *low, Jump(bpf.JEQ_K, lv, fail, ok)]
    # Orderings: a strictly greater (or smaller) high word decides; equal high words defer to the low words.
    high_eq = f"{tag}heq"
    above, below = (ok, fail) if op in ("gt", "ge") else (fail, ok)
    return [*high,
            Jump(bpf.JGT_K, hv, above, f"{tag}hle"), Label(f"{tag}hle"),
            Jump(bpf.JEQ_K, hv, high_eq, below), Label(high_eq),
            *low, *_word(op, lv, 0xFFFFFFFF, ok, fail)]


def _word(op: str, val: int, mask: int, ok: str, fail: str) -> list[Item]:
    """Compares the accumulator (one 32-bit word) with ``val``."""
    if op == "eq":
        return [Jump(bpf.JEQ_K, val, ok, fail)]
    if op == "ne":
        return [Jump(bpf.JEQ_K, val, fail, ok)]
    if op == "gt":
        return [Jump(bpf.JGT_K, val, ok, fail)]
    if op == "ge":
        return [Jump(bpf.JGE_K, val, ok, fail)]
    if op == "lt":
        return [Jump(bpf.JGE_K, val, fail, ok)]
    if op == "le":
        return [Jump(bpf.JGT_K, val, fail, ok)]
    if op == "masked_eq":
        return [Insn(bpf.AND_K, k=mask), Jump(bpf.JEQ_K, val, ok, fail)]
    raise AssertionError(f"unknown comparison {op!r}")
