"""The /dev/kvm handle and the VM fd: capabilities, eventfds, devices, and errors for people."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firelet.errors import FireletError
from firelet.kvm import Kvm, KvmError, dirty_bitmap_size
from firelet.kvm import ioctls as K
from firelet.kvm import structs as S
from firelet.memory.guest import GuestMemory


def test_kvm_reports_api_12_and_the_capabilities_firelet_needs() -> None:
    with Kvm() as kvm:
        assert kvm.api_version() == 12
        for cap in (K.KVM_CAP_IRQCHIP, K.KVM_CAP_IRQFD, K.KVM_CAP_IOEVENTFD, K.KVM_CAP_PIT2,
                    K.KVM_CAP_USER_MEMORY, K.KVM_CAP_SET_TSS_ADDR, K.KVM_CAP_IMMEDIATE_EXIT):  # fmt: skip
            assert kvm.check_extension(cap) > 0, cap
        assert kvm.check_extension(K.KVM_CAP_MAX_VCPUS) >= kvm.check_extension(K.KVM_CAP_NR_VCPUS) >= 1
        assert kvm.check_extension(0x7FFFFFF0) == 0  # an unknown capability is simply absent
        assert kvm.vcpu_mmap_size() >= 4096


def test_kvm_msr_index_list_has_the_common_msrs() -> None:
    with Kvm() as kvm:
        msrs = kvm.msr_index_list()
    assert 0x174 in msrs  # MSR_IA32_SYSENTER_CS
    assert len(set(msrs)) == len(msrs)


def test_kvm_vm_platform_devices_and_eventfds() -> None:
    memory = GuestMemory.anonymous([(0, 0x10000)])
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with Kvm() as kvm, kvm.create_vm() as vm:
            region = memory.regions[0]
            vm.set_user_memory_region(0, 0, region.size, region.host_addr)
            vm.set_tss_addr(0xFFFBD000)  # above 2**31: passed as unsigned long, not C int
            vm.set_identity_map_addr(0xFFFBC000)
            vm.create_irqchip()
            vm.create_pit2()
            vm.register_irqfd(efd, 5)
            vm.unregister_irqfd(efd, 5)
            vm.register_ioeventfd(efd, 0xD0000050, 4, datamatch=0)
            vm.unregister_ioeventfd(efd, 0xD0000050, 4, datamatch=0)
            vm.register_ioeventfd(efd, 0x3F8, 1, pio=True)
            with pytest.raises(KvmError) as info:  # the same registration twice is refused
                vm.register_ioeventfd(efd, 0x3F8, 1, pio=True)
            assert info.value.request == "KVM_IOEVENTFD"
            vm.unregister_ioeventfd(efd, 0x3F8, 1, pio=True)
            vm.irq_line(4, 1)
            vm.irq_line(4, 0)
            with pytest.raises(KvmError, match="KVM_CREATE_IRQCHIP"):  # only one irqchip per VM
                vm.create_irqchip()
    finally:
        os.close(efd)
        memory.close()


def test_kvm_ioeventfd_length_is_checked() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm, pytest.raises(ValueError):
        vm.register_ioeventfd(0, 0x1000, 3)


def test_kvm_dirty_log_reports_written_pages() -> None:
    size = 0x10000
    memory = GuestMemory.anonymous([(0, size)])
    try:
        with Kvm() as kvm, kvm.create_vm() as vm:
            vm.set_user_memory_region(0, 0, size, memory.regions[0].host_addr, flags=S.KVM_MEM_LOG_DIRTY_PAGES)
            bitmap = vm.get_dirty_log(0, dirty_bitmap_size(size))
            assert len(bitmap) == 8 and not any(bitmap)  # 16 pages -> one u64 word
    finally:
        memory.close()


def test_kvm_dirty_bitmap_size_rounds_to_u64_words() -> None:
    assert dirty_bitmap_size(4096) == 8
    assert dirty_bitmap_size(64 * 4096) == 8
    assert dirty_bitmap_size(65 * 4096) == 16
    assert dirty_bitmap_size(1 << 30) == (1 << 18) // 8


def test_kvm_missing_device_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FireletError, match=r"^no .*nope: .*load kvm_intel/kvm_amd or run inside the nested rig"):
        Kvm(str(tmp_path / "nope"))


def test_kvm_device_that_is_not_kvm_is_refused() -> None:
    with pytest.raises(FireletError, match="/dev/null is not a KVM device"):
        Kvm("/dev/null")


def test_kvm_no_permission_says_what_to_do() -> None:
    """Open /dev/kvm (root-only here) as user nobody, in a forked child."""
    assert os.geteuid() == 0 and not os.stat("/dev/kvm").st_mode & 0o006, "needs root and a /dev/kvm others cannot open"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report the error text, never return into pytest
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                Kvm()
                message = "opened"
            except FireletError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message == "no permission on /dev/kvm: add your user to group kvm or run as root"


def test_kvm_closed_fd_is_a_kvm_error_not_a_crash() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    fd = vcpu.fd
    vcpu.close()
    vcpu.close()  # idempotent
    vcpu.fd = fd  # now a closed descriptor number
    with pytest.raises(KvmError, match="KVM_GET_REGS failed: Bad file descriptor") as info:
        vcpu.get_regs()
    assert info.value.errno == 9
    vm.close()
    kvm.close()


def test_kvm_run_error_other_than_eintr_is_a_kvm_error() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        fd = vcpu.fd
        vcpu.close()
        vcpu.fd = fd
        with pytest.raises(KvmError, match=r"^KVM_RUN failed: Bad file descriptor") as info:
            vcpu.run()
        assert info.value.request == "KVM_RUN"
