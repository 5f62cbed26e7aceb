"""The ctypes KVM structures have the kernel's layout.

Two checks: sizes and offsets hard-coded from a C program compiled against
``/usr/include/linux/kvm.h`` (Linux 6.1 UAPI, x86-64), and a field-by-field
comparison of every structure with gcc's ``sizeof``/``offsetof``, generated
from the ctypes definitions so a new field cannot escape the check.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.kvm import structs as s

# From gcc: printf("%zu", sizeof(struct ...)) against /usr/include/linux/kvm.h.
KERNEL_SIZES = {
    "kvm_regs": 144,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_sregs": 312,
    "kvm_fpu": 416,
    "kvm_msr_entry": 16,
    "kvm_msrs": 8,
    "kvm_msr_list": 4,
    "kvm_cpuid_entry2": 40,
    "kvm_cpuid2": 8,
    "kvm_lapic_state": 1024,
    "kvm_xcr": 16,
    "kvm_xcrs": 392,
    "kvm_xsave": 4096,
    "kvm_vcpu_events": 64,
    "kvm_debugregs": 128,
    "kvm_mp_state": 4,
    "kvm_userspace_memory_region": 32,
    "kvm_irqfd": 32,
    "kvm_ioeventfd": 64,
    "kvm_irq_level": 8,
    "kvm_pit_config": 64,
    "kvm_pit_channel_state": 24,
    "kvm_pit_state2": 112,
    "kvm_pic_state": 16,
    "kvm_ioapic_state": 216,
    "kvm_irqchip": 520,
    "kvm_clock_data": 48,
    "kvm_dirty_log": 16,
    "kvm_msi": 32,
    "kvm_enable_cap": 104,
    "kvm_irq_routing_entry": 48,
    "kvm_irq_routing": 8,
    "kvm_debug_exit_arch": 32,
    "kvm_sync_regs": 520,
    "kvm_run": 2352,
}

# (struct, C member path, offset) from gcc's offsetof.
KERNEL_OFFSETS = [
    ("kvm_run", "immediate_exit", 1),
    ("kvm_run", "exit_reason", 8),
    ("kvm_run", "io", 32),
    ("kvm_run", "io.data_offset", 40),
    ("kvm_run", "mmio.data", 40),
    ("kvm_run", "mmio.len", 48),
    ("kvm_run", "mmio.is_write", 52),
    ("kvm_run", "system_event.data", 40),
    ("kvm_run", "internal.data", 40),
    ("kvm_run", "fail_entry.cpu", 40),
    ("kvm_run", "kvm_valid_regs", 288),
    ("kvm_run", "s", 304),
    ("kvm_sregs", "efer", 264),
    ("kvm_sregs", "interrupt_bitmap", 280),
    ("kvm_fpu", "mxcsr", 408),
    ("kvm_vcpu_events", "exception_payload", 56),
    ("kvm_ioeventfd", "fd", 20),
    ("kvm_clock_data", "host_tsc", 24),
]


def _member(struct: type, path: str) -> tuple[int, type]:
    """Offset and type of a dotted member path, resolving the anonymous unions as C does."""
    offset, cur = 0, struct
    for name in path.split("."):
        for anon in getattr(cur, "_anonymous_", ()):
            anon_type = dict(cur._fields_)[anon]
            if name not in dict(cur._fields_) and name in _c_names(anon_type):
                offset += getattr(cur, anon).offset
                cur = anon_type
        offset += getattr(cur, name).offset
        cur = dict(cur._fields_)[name]
    return offset, cur


def _c_names(t: type) -> set[str]:
    names = set()
    for name, ftype, *_ in t._fields_:
        if name in getattr(t, "_anonymous_", ()):
            names |= _c_names(ftype)
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("name,size", sorted(KERNEL_SIZES.items()))
def test_kvm_struct_size_matches_kernel(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(s, name)) == size


@pytest.mark.parametrize("struct,path,offset", KERNEL_OFFSETS)
def test_kvm_struct_offset_matches_kernel(struct: str, path: str, offset: int) -> None:
    assert _member(getattr(s, struct), path)[0] == offset


def _walk(t: type, c_path: str, base: int) -> list[tuple[str, int, int | None]]:
    """(C expression path, offset, size or None) for every field of t, recursively."""
    rows: list[tuple[str, int, int | None]] = []
    for name, ftype, *bits in t._fields_:
        field = getattr(t, name)
        if bits:  # bitfield: neither offsetof nor sizeof apply
            continue
        if name in getattr(t, "_anonymous_", ()):
            rows += _walk(ftype, c_path, base + field.offset)
            continue
        path = f"{c_path}.{name}" if c_path else name
        flexible = issubclass(ftype, ctypes.Array) and ftype._length_ == 0
        rows.append((path, base + field.offset, None if flexible else ctypes.sizeof(ftype)))
        if issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            rows += _walk(ftype, path, base + field.offset)
    return rows


def test_kvm_structs_every_field_matches_gcc(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to check the KVM structures against <linux/kvm.h> (apt-get install gcc)"
    checks: list[str] = []
    expected: list[str] = []
    for name in sorted(KERNEL_SIZES):
        checks.append(f'printf("%zu\\n", sizeof(struct {name}));')
        expected.append(str(ctypes.sizeof(getattr(s, name))))
        for path, offset, size in _walk(getattr(s, name), "", 0):
            checks.append(f'printf("%zu\\n", offsetof(struct {name}, {path}));')
            expected.append(str(offset))
            if size is not None:
                checks.append(f'printf("%zu\\n", sizeof(((struct {name} *)0)->{path}));')
                expected.append(str(size))
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n"
        "int main(void) {\n" + "\n".join(checks) + "\nreturn 0; }\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([gcc, "-o", str(exe), str(src)], check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert len(got) == len(expected)
    mismatches = [(c, e, g) for c, e, g in zip(checks, expected, got, strict=True) if e != g]
    assert not mismatches, mismatches[:10]


def test_kvm_ioapic_redirection_bitfields_follow_the_kernel_order() -> None:
    entry = s.kvm_ioapic_redirtbl()
    entry.fields.vector = 0x30
    entry.fields.delivery_mode = 0b101
    entry.fields.mask = 1
    entry.fields.dest_id = 0xAB
    # IOAPIC redirection entry: vector 0-7, delivery mode 8-10, mask bit 16, destination 56-63.
    assert entry.bits == 0x30 | (0b101 << 8) | (1 << 16) | (0xAB << 56)


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)), max_size=40))
def test_kvm_make_msrs_holds_the_pairs(pairs: list[tuple[int, int]]) -> None:
    msrs = s.make_kvm_msrs(pairs)
    assert msrs.nmsrs == len(pairs)
    assert ctypes.sizeof(msrs) == 8 + 16 * len(pairs)
    assert [(e.index, e.data) for e in msrs.entries] == pairs


def test_kvm_make_cpuid2_copies_entries() -> None:
    entry = s.kvm_cpuid_entry2(function=0xD, index=1, eax=7)
    cpuid = s.make_kvm_cpuid2([entry, entry])
    entry.eax = 99
    assert cpuid.nent == 2 and ctypes.sizeof(cpuid) == 8 + 2 * 40
    assert [(e.function, e.index, e.eax) for e in cpuid.entries] == [(0xD, 1, 7)] * 2
    assert s.make_kvm_cpuid2(256).nent == 256


def test_kvm_exit_names_cover_the_common_exits() -> None:
    assert s.KVM_EXIT_NAMES[s.KVM_EXIT_IO] == "KVM_EXIT_IO"
    assert s.KVM_EXIT_NAMES[s.KVM_EXIT_INTERNAL_ERROR] == "KVM_EXIT_INTERNAL_ERROR"
    assert s.KVM_EXIT_NAMES[s.KVM_EXIT_SHUTDOWN] == "KVM_EXIT_SHUTDOWN"
