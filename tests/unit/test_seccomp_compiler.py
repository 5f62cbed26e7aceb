"""The compiled BPF programs mean what their JSON rules say, for any call (property tests), and
respect the kernel's limits (8-bit conditional jumps, 4096 instructions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.seccomp import SeccompError
from firelet.seccomp.bpf import JA, encode
from firelet.seccomp.compiler import compile_filter
from firelet.seccomp.policy import parse_filter, parse_policy
from firelet.seccomp.syscalls_x86_64 import SYSCALLS

from seccomp_utils import AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, evaluate, run_bpf, seccomp_data

# A policy in the shape Firecracker's own filter files use: masked_eq as {"masked_eq": mask}, comments on
# rules and conditions, a trap default.
FIRECRACKER_SHAPED = {
    "vmm": {"default_action": "trap", "filter_action": "allow", "filter": [
        {"syscall": "epoll_pwait"}, {"syscall": "read", "comment": "eventfds"},
        {"syscall": "mmap", "comment": "no executable mappings", "args": [
            {"index": 3, "type": "dword", "op": "eq", "val": 34, "comment": "MAP_ANONYMOUS|MAP_PRIVATE"},
            {"index": 2, "type": "dword", "op": {"masked_eq": 4}, "val": 0, "comment": "PROT_EXEC clear"}]},
        {"syscall": "fcntl", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 2, "comment": "F_SETFD"},
                                      {"index": 2, "type": "dword", "op": "eq", "val": 1, "comment": "FD_CLOEXEC"}]}]},
    "api": {"default_action": {"errno": 1}, "filter_action": "allow", "filter": [
        {"syscall": "accept4"}, {"syscall": "socket", "args": [
            {"index": 0, "type": "dword", "op": "eq", "val": 1, "comment": "AF_UNIX"}]}]},
    "vcpu": {"default_action": "kill_process", "filter_action": "allow", "filter": [
        {"syscall": "ioctl", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 0xAE80, "comment": "KVM_RUN"}]},
        {"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "ge", "val": (1 << 32) - 1}]}]},
}
POLICY = Path(__file__).resolve().parents[2] / "firelet" / "seccomp" / "policy.json"

# A few system calls, so that generated calls often hit a rule.
NAMES = ["read", "write", "ioctl", "mmap", "fcntl", "socket"]
# Values around the edges where a 64-bit comparison built from two 32-bit halves could go wrong.
EDGES = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, (2 << 32) - 1,
         2 << 32, (2 << 32) + 1, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, (1 << 64) - 2, (1 << 64) - 1]
u64 = st.one_of(st.sampled_from(EDGES), st.integers(0, (1 << 64) - 1),
                st.builds(lambda h, lo: h << 32 | lo, st.sampled_from([0, 1, 2, 0xFFFFFFFF]), st.sampled_from(EDGES[:7])))
actions = st.one_of(st.sampled_from(["allow", "kill_process", "kill_thread", "trap", "log"]),
                    st.builds(lambda n: {"errno": n}, st.integers(0, 4095)))


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["dword", "qword"]))
    full = (1 << (32 if kind == "dword" else 64)) - 1
    op: Any = draw(st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"]))
    if op == "masked_eq":
        op = {"masked_eq": draw(u64) & full}
    return {"index": draw(st.integers(0, 5)), "type": kind, "op": op, "val": draw(u64) & full}


rules = st.fixed_dictionaries({"syscall": st.sampled_from(NAMES)},
                              optional={"args": st.lists(conditions(), max_size=3)})
filters = st.fixed_dictionaries({"default_action": actions, "filter_action": actions,
                                 "filter": st.lists(rules, max_size=12)})


def calls_for(flt: dict[str, Any]) -> st.SearchStrategy[tuple[int, int, tuple[int, ...]]]:
    """Calls aimed at the filter's own values (equal, one off, the other half) and anything else."""
    vals = [c["val"] for r in flt["filter"] for c in r.get("args", [])] or [0]
    near = st.sampled_from(vals).flatmap(
        lambda v: st.sampled_from([v, v + 1, v - 1, v ^ (1 << 32), v & 0xFFFFFFFF, v | 0xFFFFFFFF << 32])
    ).map(lambda v: v % (1 << 64))
    arg = st.one_of(near, near, u64)
    own = [SYSCALLS[r["syscall"]] for r in flt["filter"]] or [0]
    nr = st.one_of(st.sampled_from(own), st.sampled_from(own), st.integers(-5, 600),
                   st.sampled_from([0x40000000, 0x40000001, 0x7FFFFFFF, -1]))
    arch = st.sampled_from([AUDIT_ARCH_X86_64] * 8 + [AUDIT_ARCH_I386, 0])
    return st.tuples(nr, arch, st.tuples(*[arg] * 6))


def check_agrees(raw: dict[str, Any], calls: list[tuple[int, int, tuple[int, ...]]]) -> None:
    code = encode(compile_filter(parse_filter(raw, "t")))
    for nr, arch, args in calls:
        assert run_bpf(code, seccomp_data(nr, arch, args)) == evaluate(raw, nr, arch, args), (nr, arch, args)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_compiled_program_agrees_with_the_rules_for_any_call(data: st.DataObject) -> None:
    raw = data.draw(filters)
    check_agrees(raw, data.draw(st.lists(calls_for(raw), min_size=1, max_size=40)))


@settings(max_examples=300, deadline=None)
@given(conditions(), st.lists(u64, min_size=1, max_size=8), st.data())
def test_one_condition_agrees_at_its_edges(cond: dict[str, Any], extra: list[int], data: st.DataObject) -> None:
    # One condition alone, tried on values at and around its own constant in both halves.
    raw = {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "ioctl", "args": [cond]}]}
    v, m = cond["val"], cond["op"]["masked_eq"] if isinstance(cond["op"], dict) else 0
    values = {v, v + 1, v - 1, v ^ 1 << 32, v + (1 << 32), v - (1 << 32), v & 0xFFFFFFFF, v | 0xFFFFFFFF << 32,
              v & ~0xFFFFFFFF, (v & ~0xFFFFFFFF) + 0xFFFFFFFF, m, v | ~m, *extra}
    calls = [(SYSCALLS["ioctl"], AUDIT_ARCH_X86_64, tuple([x % (1 << 64)] * 6)) for x in values]
    check_agrees(raw, calls)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_long_programs_reach_far_targets_through_ja(data: st.DataObject) -> None:
    # 40-120 rules of up to 3 qword conditions: hundreds of instructions between a test and its target.
    raw = data.draw(st.fixed_dictionaries({
        "default_action": actions, "filter_action": actions,
        "filter": st.lists(st.fixed_dictionaries({"syscall": st.sampled_from(NAMES),
                                                  "args": st.lists(conditions(), min_size=1, max_size=3)}),
                           min_size=40, max_size=120)}))
    program = compile_filter(parse_filter(raw, "t"))
    assert all(i.jt <= 255 and i.jf <= 255 for i in program)
    check_agrees(raw, data.draw(st.lists(calls_for(raw), min_size=20, max_size=60)))


def test_far_jumps_in_both_directions_of_one_test() -> None:
    # One syscall, 200 two-condition rules: early failures jump far to later rules or the default.
    rules = [{"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "eq", "val": n << 32 | n},
                                           {"index": 0, "type": "dword", "op": "lt", "val": 10}]} for n in range(200)]
    rules += [{"syscall": name} for name in list(SYSCALLS)[:250] if name != "ioctl"]  # a long dispatch chain after it
    raw = {"default_action": {"errno": 38}, "filter_action": "allow", "filter": rules}
    program = compile_filter(parse_filter(raw, "t"))
    assert any(i.code == JA and i.k > 255 for i in program)
    calls = [(SYSCALLS["ioctl"], AUDIT_ARCH_X86_64, (fd, n << 32 | n, 0, 0, 0, 0)) for n in (0, 1, 150, 199, 200)
             for fd in (9, 10)]
    calls += [(SYSCALLS[name], AUDIT_ARCH_X86_64, (0,) * 6) for name in list(SYSCALLS)[:260]]
    check_agrees(raw, calls)


def test_qword_order_decides_on_high_words_first() -> None:
    raw = {"default_action": "trap", "filter_action": "allow",
           "filter": [{"syscall": "mmap", "args": [{"index": 1, "type": "qword", "op": "lt", "val": (1 << 32) + 5}]}]}
    code = encode(compile_filter(parse_filter(raw, "t")))
    nr = SYSCALLS["mmap"]
    for length, allowed in [(6, True), (0xFFFFFFFF, True), ((1 << 32) + 4, True), ((1 << 32) + 5, False),
                            ((2 << 32) + 1, False), (1 << 63, False)]:
        got = run_bpf(code, seccomp_data(nr, AUDIT_ARCH_X86_64, (0, length, 0, 0, 0, 0)))
        assert (got == 0x7FFF0000) is allowed, hex(length)


def test_other_architectures_and_x32_calls_kill_the_process() -> None:
    raw = {"default_action": "allow", "filter_action": "allow", "filter": []}
    code = encode(compile_filter(parse_filter(raw, "t")))
    assert run_bpf(code, seccomp_data(0, AUDIT_ARCH_I386, (0,) * 6)) == 0x80000000
    assert run_bpf(code, seccomp_data(0x40000000 | 1, AUDIT_ARCH_X86_64, (0,) * 6)) == 0x80000000
    assert run_bpf(code, seccomp_data(1, AUDIT_ARCH_X86_64, (0,) * 6)) == 0x7FFF0000


def test_a_filter_over_the_kernels_length_limit_is_refused_in_one_line() -> None:
    rules = [{"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "ge", "val": n}]} for n in range(900)]
    with pytest.raises(SeccompError, match=r"thread kind 'big' compiles to \d+ BPF instructions; the kernel takes at most 4096"):
        compile_filter(parse_filter({"default_action": "trap", "filter_action": "allow", "filter": rules}, "big"), "big")


@pytest.mark.parametrize("name", ["firecracker-shaped", "firelet"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_real_policies_compile_and_agree(name: str, data: st.DataObject) -> None:
    raw_policy = FIRECRACKER_SHAPED if name == "firecracker-shaped" else json.loads(POLICY.read_text())
    for raw in raw_policy.values():
        names = sorted({r["syscall"] for r in raw["filter"]})
        nr = st.one_of(st.sampled_from([SYSCALLS[n] for n in names]), st.integers(0, 460))
        calls = st.tuples(nr, st.just(AUDIT_ARCH_X86_64), st.tuples(*[u64] * 6))
        check_agrees(raw, data.draw(st.lists(calls, min_size=5, max_size=20)))
    assert set(parse_policy(raw_policy)) >= {"vmm", "api", "vcpu"}
