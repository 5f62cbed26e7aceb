"""machine-config track_dirty_pages on a real guest: KVM's log holds what a booting Linux wrote."""

from __future__ import annotations

from pathlib import Path

from conftest import BOOT_TIMEOUT_S


def test_dirty_pages_of_a_booted_guest_are_logged_and_cleared_by_fetching(kernel, rootfs: Path) -> None:
    from firelet import MicroVM
    from firelet.builder.boot import DEFAULT_BOOT_ARGS
    from firelet.config.model import VmConfig, convert
    from firelet.devtools.images import guest_cmdline_for, parse_exit_status
    from firelet.memory.dirty import fetch_all_dirty_pages

    mem_mib = 128
    config = convert({
        "boot-source": {"kernel_image_path": str(kernel.vmlinux),
                        "boot_args": f"{DEFAULT_BOOT_ARGS} {guest_cmdline_for('echo dirty-test')}"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True, "is_read_only": True}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mem_mib, "track_dirty_pages": True},
    }, VmConfig)
    vm = MicroVM(config=config)
    try:
        vm.start()
        outcome = vm.wait(BOOT_TIMEOUT_S)
        text = vm.console.text()
        assert outcome.clean and parse_exit_status(text) == 0 and "dirty-test" in text, text[-3000:]
        pages = fetch_all_dirty_pages(vm.vmm.resources.vm_fd, vm.vmm.memory)
        # A Linux boot writes its page tables, stacks, slab and page cache: thousands of pages,
        # all of them guest RAM, each once.
        assert len(pages) > 1000, len(pages)
        assert len(set(pages)) == len(pages) and max(pages) < mem_mib * 256
        assert fetch_all_dirty_pages(vm.vmm.resources.vm_fd, vm.vmm.memory) == []  # the guest has stopped; the log was cleared
    finally:
        vm.close()
