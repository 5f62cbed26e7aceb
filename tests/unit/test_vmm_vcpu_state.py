"""A stuck guest's report: each vCPU's registers, and states no guest can be in called out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.arch.x86_64.ram import guest_ram
from firelet.cli import lean
from firelet.vstate.vcpu import IMPOSSIBLE_STATE, Vcpu, VcpuGate, impossible_page_table_root

MiB = 1 << 20
PG = 1 << 31  # CR0.PG
PE = 1


#: 128 MiB of guest RAM (reserved, never touched), shared by every test here.
RAM = guest_ram(128 * MiB)


class FakeVcpuFd:
    """The four getters describe_state uses, with chosen values."""

    def __init__(self, *, cr0: int, cr3: int, rip: int = 0xFFFFFFFF81000000, fail: bool = False) -> None:
        self.cr0, self.cr3, self.rip, self.fail = cr0, cr3, rip, fail

    def get_regs(self):
        if self.fail:
            raise OSError(9, "Bad file descriptor")
        return SimpleNamespace(rip=self.rip, rsp=0x1000, rflags=0x246)

    def get_sregs(self):
        return SimpleNamespace(cr0=self.cr0, cr3=self.cr3)

    def get_vcpu_events(self):
        return SimpleNamespace(interrupt=SimpleNamespace(injected=0), nmi=SimpleNamespace(pending=0))

    def get_mp_state(self) -> int:
        return 0


def _vcpu(fd: FakeVcpuFd) -> Vcpu:
    return Vcpu(0, fd, io_bus=None, mmio_bus=None, gate=VcpuGate(), on_exit=lambda _: None)  # type: ignore[arg-type]


def test_the_state_seen_in_the_rig_is_called_out() -> None:
    # Caught twice in the nested rig: the outer kernel's rip and cr3 in a 128 MiB guest's vCPU.
    text = _vcpu(FakeVcpuFd(cr0=PG | PE, cr3=0x1028BE000, rip=0xFFFFFFFFC043E20C)).describe_state(RAM)
    assert "rip=0xffffffffc043e20c" in text and "cr3=0x1028be000" in text
    assert IMPOSSIBLE_STATE in text


def test_a_guest_paging_from_its_own_ram_is_plausible() -> None:
    text = _vcpu(FakeVcpuFd(cr0=PG | PE, cr3=0x9000)).describe_state(RAM)
    assert "cr3=0x9000" in text and IMPOSSIBLE_STATE not in text


def test_without_memory_or_registers_the_report_still_comes() -> None:
    assert IMPOSSIBLE_STATE not in _vcpu(FakeVcpuFd(cr0=PG, cr3=1 << 40)).describe_state()
    assert _vcpu(FakeVcpuFd(cr0=PG, cr3=0, fail=True)).describe_state(RAM).startswith("state unavailable")


@given(page=st.integers(0, 128 * MiB // 4096 - 1), flags=st.integers(0, 0xFFF))
def test_any_root_inside_ram_is_possible_whatever_its_flag_bits(page: int, flags: int) -> None:
    assert not impossible_page_table_root(PG | PE, page * 4096 | flags, RAM)


@given(cr3=st.integers(128 * MiB, (1 << 64) - 1))
def test_any_root_past_ram_is_impossible_with_paging_and_fine_without(cr3: int) -> None:
    # (a root that wraps to below 2^52 can land back in RAM: the CPU ignores the high bits too)
    if (cr3 & ~0xFFF & ((1 << 52) - 1)) >= 128 * MiB:
        assert impossible_page_table_root(PG | PE, cr3, RAM)
    assert not impossible_page_table_root(PE, cr3, RAM)  # real or protected mode: cr3 unused


def test_sigusr2_runs_the_dump_hooks_after_the_stacks_and_a_failing_hook_is_contained(
        capfd: pytest.CaptureFixture[str]) -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    seen: list[str] = []
    lean.dump_stacks_on_signal()
    remove_bad = lean.on_dump_signal(lambda: 1 / 0)
    remove = lean.on_dump_signal(lambda: seen.append("hook"))
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == ["hook"]  # Python runs the handler before the next bytecode
        remove()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == ["hook"]
    finally:
        remove_bad()
        signal.signal(signal.SIGUSR2, previous)
    err = capfd.readouterr().err
    assert "most recent call first" in err  # faulthandler's stacks
    assert "state dump failed: division by zero" in err


#: A process like a VMM under SIGUSR2: threads that keep entering and leaving
#: GIL-free system calls at some stack depth, as vCPU threads do around KVM_RUN.
_BUSY_THREADS = """
import os, select, sys, threading
from firelet.cli import lean

def dive(n):
    if n:
        return dive(n - 1)
    os.stat("/")

def spin():
    while True:
        for depth in range(1, 400, 3):  # past the 16 KiB chunks of the frame stack
            dive(depth)

lean.dump_stacks_on_signal()
lean.on_dump_signal(lambda: print("dumped", file=sys.stderr, flush=True))
for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:  # wakes like firelet run's main thread
    pass
"""


def test_sigusr2_stacks_of_threads_busy_in_system_calls_never_crash_the_process() -> None:
    # faulthandler's C-level dump read such threads' frames without the GIL and
    # crashed a running VMM with SIGSEGV (3 of 14 dumps in the rig)
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_THREADS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dumps = 0
    try:
        assert proc.stdout.readline() == b"ready\n"
        while dumps < 100:  # one at a time: signals sent faster would merge
            dumps += 1
            proc.send_signal(signal.SIGUSR2)
            while (line := proc.stderr.readline()) not in (b"dumped\n", b""):
                assert not line.startswith(b"Fatal Python error"), line
            if not line:
                break
        _out, err = proc.communicate(b"", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"died with {proc.returncode} in dump {dumps}: {err[-2000:]!r}"
    assert dumps == 100
