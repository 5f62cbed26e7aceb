"""The device registry: every device kind is planned, made and wired the same way.

The slots and kernel command-line fragments are the guest's view and stay as they
were; a new kind of device (here a test-only virtio device) is one registration,
with no change to the builder; and the devices a VM gets are found by class and
id. Wiring runs on the real /dev/kvm (irqfds and ioeventfds registered with KVM).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.arch.x86_64 import layout
from firelet.builder.device_manager import PlannedDevice, attach_devices, device_cmdline, plan_devices
from firelet.builder.registry import DEVICE_KINDS
from firelet.builder.spec import VIRTIO_MMIO, BuildInputs, ConsoleSpec, DeviceKinds, DeviceSpec, Wiring
from firelet.config.model import VmConfig, convert
from firelet.devices.interrupt import EventFdInterrupt
from firelet.devices.legacy.console import ConsoleBuffer
from firelet.devices.legacy.i8042 import I8042
from firelet.devices.legacy.serial import Serial
from firelet.devices.virtio import mmio
from firelet.devices.virtio.block import Block
from firelet.devices.virtio.device import VirtioDeviceBase
from firelet.errors import UsageError
from firelet.events.loop import EventLoop
from firelet.kvm import Kvm, KvmError
from firelet.vstate.device_registry import BusKind, DeviceEntry, DeviceRegistry, Slot
from firelet.vstate.vcpu import VcpuGate
from firelet.vstate.vmm import Vmm, VmmResources

from virtio_utils import DriverQueue, mmio_init, mmio_read32, mmio_write32, new_memory


class Probe(VirtioDeviceBase):
    """A test-only virtio device: one queue; completes every chain with length 3."""

    device_type = 0x7E
    queue_max_sizes = (8,)

    def __init__(self, label: str) -> None:
        super().__init__(0)
        self.label = label
        self.served = 0

    def process_queue(self, index: int) -> None:
        assert self.mem is not None and self.interrupt is not None
        queue = self.queues[index]
        while (chain := queue.pop(self.mem)) is not None:
            self.served += 1
            queue.add_used(self.mem, chain.head_index, 3)
        if queue.needs_notification(self.mem):
            self.interrupt.signal_used_queue()


def _plan_probes(inputs: BuildInputs) -> list[tuple[str, str]]:
    return [("probe0", "first")]


def _make_probe(label: str, wiring: Wiring) -> Probe:
    return Probe(label)


#: All a new kind needs: its spec, registered. Nothing in firelet/builder knows of it.
PROBE_KIND = DeviceSpec(kind="probe", plan=_plan_probes, placement=VIRTIO_MMIO, make=_make_probe)


def _config(*drive_paths: str) -> VmConfig:
    drives = [{"drive_id": f"d{i}", "path_on_host": path, "is_root_device": i == 1, "is_read_only": False}
              for i, path in enumerate(drive_paths)]
    return convert({"boot-source": {"kernel_image_path": "/k"}, "drives": drives}, VmConfig)


def _inputs(config: VmConfig) -> BuildInputs:
    return BuildInputs(config, ConsoleSpec(ConsoleBuffer()))


def _view(plan: list[PlannedDevice]) -> list[tuple[str, str, Slot]]:
    return [(p.spec.kind, p.device_id, p.slot) for p in plan]


def test_every_device_keeps_its_slot_and_the_root_drive_is_the_first_virtio_window() -> None:
    plan = plan_devices(_inputs(_config("/a", "/root", "/c")), DEVICE_KINDS)
    assert _view(plan) == [
        ("serial", "serial", Slot(BusKind.PIO, ((0x3F8, 8),), irq=4)),
        ("i8042", "i8042", Slot(BusKind.PIO, ((0x60, 1), (0x64, 1)), irq=1)),
        ("block", "d1", Slot(BusKind.MMIO, ((0xD0000000, 0x1000),), irq=5)),
        ("block", "d0", Slot(BusKind.MMIO, ((0xD0001000, 0x1000),), irq=6)),
        ("block", "d2", Slot(BusKind.MMIO, ((0xD0002000, 0x1000),), irq=7)),
    ]
    assert device_cmdline(plan) == ["virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6",
                                    "virtio_mmio.device=4K@0xd0002000:7"]


def test_more_virtio_devices_than_irqs_is_refused_in_one_line() -> None:
    most = layout.IRQ_MAX - layout.IRQ_BASE + 1
    assert len(plan_devices(_inputs(_config(*["/x"] * most)), DEVICE_KINDS)) == most + 2
    with pytest.raises(UsageError, match=f"too many virtio devices: at most {most}"):
        plan_devices(_inputs(_config(*["/x"] * (most + 1))), DEVICE_KINDS)


def test_a_registered_kind_gets_the_next_window_and_irq_and_is_announced() -> None:
    kinds = DeviceKinds([*DEVICE_KINDS, PROBE_KIND])
    plan = plan_devices(_inputs(_config("/a", "/root")), kinds)
    assert _view(plan)[-1] == ("probe", "probe0", Slot(BusKind.MMIO, ((0xD0002000, 0x1000),), irq=7))
    assert device_cmdline(plan)[-1] == "virtio_mmio.device=4K@0xd0002000:7"
    with pytest.raises(ValueError, match="registered twice"):
        kinds.register(PROBE_KIND)


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    kvm = Kvm()
    vm_fd = kvm.create_vm()
    memory = new_memory()
    vm_fd.create_irqchip()  # an irqfd needs it
    loop = EventLoop()
    vmm = Vmm(VmmResources(kvm, vm_fd, memory, [memory.close, kvm.close, vm_fd.close, loop.close]), loop, VcpuGate())
    yield vmm
    vmm.close()


class _Window:
    """The MMIO bus seen from one window: what the virtio driver helpers program."""

    def __init__(self, vmm: Vmm, base: int) -> None:
        self.bus, self.base = vmm.mmio_bus, base

    def read(self, offset: int, data: memoryview) -> None:
        assert self.bus.read(self.base + offset, data)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        assert self.bus.write(self.base + offset, data)


def test_a_registered_virtio_kind_is_made_wired_and_found_like_the_built_in_ones(vmm: Vmm, tmp_path: Path) -> None:
    images = []
    for name in ("a", "root"):
        images.append(tmp_path / f"{name}.img")
        images[-1].write_bytes(bytes(4096))
    plan = plan_devices(_inputs(_config(*map(str, images))), DeviceKinds([*DEVICE_KINDS, PROBE_KIND]))
    attach_devices(vmm, plan)

    devices = vmm.devices
    assert [(e.kind, e.device_id) for e in devices] == [
        ("serial", "serial"), ("i8042", "i8042"), ("block", "d1"), ("block", "d0"), ("probe", "probe0")]
    root, other = devices.get(Block, "d1"), devices.get(Block, "d0")
    assert root is not None and other is not None and root is not other
    assert devices.of_kind(Block) == [root, other] and devices.get(Block, "nope") is None
    assert root.drive_id.rstrip(b"\0") == b"d1"  # the id VIRTIO_BLK_T_GET_ID answers with
    with pytest.raises(LookupError, match="2 Block devices"):
        devices.get(Block)
    assert isinstance(devices.get(Serial), Serial) and isinstance(devices.get(I8042), I8042)
    probe = devices.get(Probe)
    assert probe is not None and probe.label == "first"

    # The legacy devices answer at their ports (the UART's scratch register; the i8042's status).
    scratch = 0x3F8 + 7
    assert vmm.io_bus.write(scratch, b"\x5a")
    value = bytearray(1)
    assert vmm.io_bus.read(scratch, memoryview(value)) and value == b"\x5a"
    assert vmm.io_bus.read(0x64, memoryview(value)) and vmm.io_bus.read(0x60, memoryview(value))
    assert not vmm.io_bus.read(0x62, memoryview(value))  # between the i8042's ports: nobody

    # The probe sits behind its own transport at its window, with its IRQ and notifier in KVM.
    entry = devices.entry("probe", "probe0")
    assert entry is not None and entry.transport is not None and entry.transport.device is probe
    base, irq = entry.slot.base, entry.slot.irq
    assert (base, irq) == (0xD0002000, 7)
    line = entry.transport.interrupt
    assert isinstance(line, EventFdInterrupt) and line.gsi == irq
    window = _Window(vmm, base)
    assert mmio_read32(window, mmio.DEVICE_ID) == Probe.device_type
    queue = DriverQueue(vmm.memory, size=8)
    assert mmio_init(window, [queue]) & mmio.STATUS_DRIVER_OK
    queue.add_chain([(queue.alloc(16), 16, True)])
    mmio_write32(window, mmio.QUEUE_NOTIFY, 0)
    assert probe.served == 1 and queue.take_used() == [(0, 3)]
    vm_fd, efd = vmm.resources.vm_fd, os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with pytest.raises(KvmError) as held:  # KVM has an ioeventfd on queue 0's notify already
            vm_fd.register_ioeventfd(efd, base + mmio.QUEUE_NOTIFY, 4, datamatch=0)
        assert held.value.errno == errno.EEXIST
        vm_fd.register_ioeventfd(efd, base + mmio.QUEUE_NOTIFY, 4, datamatch=1)  # no queue 1: free
        vm_fd.unregister_ioeventfd(efd, base + mmio.QUEUE_NOTIFY, 4, datamatch=1)
    finally:
        os.close(efd)


def test_the_registry_refuses_a_second_device_with_the_same_kind_and_id() -> None:
    devices = DeviceRegistry()
    slot = Slot(BusKind.MMIO, ((0xD0000000, 0x1000),), irq=5)
    devices.add(DeviceEntry("probe", "p", Probe("one"), slot))
    devices.add(DeviceEntry("other", "p", Probe("two"), slot))  # another kind may reuse the id
    with pytest.raises(ValueError, match="two probe devices with id 'p'"):
        devices.add(DeviceEntry("probe", "p", Probe("three"), slot))
    assert [p.label for p in devices.of_kind(Probe)] == ["one", "two"] and len(devices) == 2
