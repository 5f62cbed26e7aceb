"""The "net" device kind: planned after the drives, its TAP opened in the VMM's namespace and released with the VM.

Devices are made on the real /dev/kvm, on TAPs in a namespace the test makes; the
controller finds an interface by its id and replaces its limiters on the event loop.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.builder.device_manager import attach_devices, device_cmdline, plan_devices
from firelet.builder.registry import DEVICE_KINDS
from firelet.builder.spec import BuildInputs, ConsoleSpec
from firelet.config.model import RateLimiter, TokenBucket, VmConfig, convert
from firelet.controller.interface import BackendError
from firelet.controller.vmm_controller import VmmController
from firelet.devices.legacy.console import ConsoleBuffer
from firelet.errors import UsageError
from firelet.hostnet import links
from firelet.hostnet.netns import create_netns, remove_netns, run_in_netns
from firelet.kvm import Kvm
from firelet.vstate.device_registry import BusKind, Slot
from firelet.vstate.vcpu import VcpuGate
from firelet.vstate.vmm import Vmm, VmmResources

from net_frames import open_tap
from virtio_utils import new_memory

if os.geteuid() != 0 or not Path("/dev/net/tun").exists():  # pragma: no cover - the CI machine is root
    pytest.fail("these tests make network namespaces and TAPs: run them as root with /dev/net/tun", pytrace=False)

_counter = itertools.count()


def _config(drives: int, ifaces: list[dict[str, object]]) -> VmConfig:
    return convert({"boot-source": {"kernel_image_path": "/k"},
                    "drives": [{"drive_id": f"d{i}", "path_on_host": f"/d{i}", "is_root_device": i == 0}
                               for i in range(drives)],
                    "network-interfaces": ifaces}, VmConfig)


def test_interfaces_come_after_the_drives_so_every_drive_keeps_its_window() -> None:
    ifaces = [{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "mgmt", "host_dev_name": "tap1"}]
    without = plan_devices(BuildInputs(_config(2, []), ConsoleSpec(ConsoleBuffer())), DEVICE_KINDS)
    plan = plan_devices(BuildInputs(_config(2, ifaces), ConsoleSpec(ConsoleBuffer())), DEVICE_KINDS)
    assert [(p.spec.kind, p.device_id, p.slot) for p in plan[:len(without)]] == [
        (p.spec.kind, p.device_id, p.slot) for p in without]
    assert [(p.spec.kind, p.device_id, p.slot) for p in plan[len(without):]] == [
        ("net", "eth0", Slot(BusKind.MMIO, ((0xD0002000, 0x1000),), irq=7)),
        ("net", "mgmt", Slot(BusKind.MMIO, ((0xD0003000, 0x1000),), irq=8)),
    ]
    assert device_cmdline(plan)[-2:] == ["virtio_mmio.device=4K@0xd0002000:7", "virtio_mmio.device=4K@0xd0003000:8"]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fltbld{os.getpid() % 10000}{next(_counter)}"
    create_netns(name)
    try:
        links.create_tap("tap0", netns=name)
        yield name
    finally:
        remove_netns(name)


@pytest.fixture
def controller(netns: str) -> Iterator[VmmController]:
    """A controller whose VM (memory, irqchip, its event loop) gets devices from the registry, as a build does.

    Made inside ``netns``: its event loop's thread, which builds the devices, is the VMM's, and lives there.
    """
    ctl = run_in_netns(netns, lambda: VmmController(instance_id="net-test"))
    kvm = Kvm()
    vm_fd = kvm.create_vm()
    memory = new_memory()
    vm_fd.create_irqchip()  # an irqfd needs it
    ctl.vmm = Vmm(VmmResources(kvm, vm_fd, memory, [memory.close, kvm.close, vm_fd.close, ctl.loop.close]),
                  ctl.loop, VcpuGate())
    yield ctl
    ctl.vmm.close()


def _tap_busy(netns: str, name: str) -> bool:
    try:
        os.close(run_in_netns(netns, lambda: open_tap(name)))
    except OSError as exc:
        assert exc.errno == errno.EBUSY, exc
        return True
    return False


def _attach(ctl: VmmController, netns: str, ifaces: list[dict[str, object]]) -> None:
    plan = plan_devices(BuildInputs(_config(0, ifaces), ConsoleSpec(ConsoleBuffer())), DEVICE_KINDS)
    ctl.submit(lambda: attach_devices(ctl.vmm, plan)).result(10)  # on the VMM's loop, as InstanceStart builds


def test_the_tap_is_held_while_the_vm_lives_and_released_with_it(controller: VmmController, netns: str) -> None:
    from firelet.devices.virtio.net import Net

    assert not _tap_busy(netns, "tap0")
    _attach(controller, netns, [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:c0:00:02:02"}])
    net = controller.vmm.devices.get(Net, "eth0")
    assert net is not None and net.config_space()[:6] == bytes.fromhex("0600c0000202")  # the guest's MAC
    assert _tap_busy(netns, "tap0")  # the device has it, as Firecracker's does
    controller.vmm.close()
    assert not _tap_busy(netns, "tap0")


def test_a_missing_tap_fails_the_build_in_one_line_naming_the_interface(controller: VmmController,
                                                                        netns: str) -> None:
    with pytest.raises(UsageError) as info:
        _attach(controller, netns, [{"iface_id": "eth1", "host_dev_name": "tap9"}])
    assert str(info.value).startswith("network interface eth1: TAP device 'tap9' does not exist in this network "
                                      "namespace")
    assert "\n" not in str(info.value)
    assert not links.link_exists("tap9", netns)  # opening it by name did not make one


def test_patch_reaches_the_device_on_the_event_loop(controller: VmmController, netns: str) -> None:
    from firelet.devices.virtio.net import Net

    _attach(controller, netns, [{"iface_id": "eth0", "host_dev_name": "tap0"}])
    net = controller.vmm.devices.get(Net, "eth0")
    assert net is not None
    seen: list[str] = []
    original = net.update_rate_limiters

    def spy(rx: RateLimiter | None, tx: RateLimiter | None) -> None:
        import threading

        seen.append(threading.current_thread().name)
        original(rx, tx)

    net.update_rate_limiters = spy  # type: ignore[method-assign]  # records the thread it runs on
    limiter = RateLimiter(bandwidth=TokenBucket(size=1000, refill_time=100))
    controller.submit(lambda: controller.update_net_rate_limiters("eth0", limiter, None)).result(10)
    assert controller.loop.thread is not None and seen == [controller.loop.thread.name]
    assert net.rx_limiter.bandwidth is not None and net.rx_limiter.bandwidth.size == 1000
    assert net.tx_limiter.unlimited
    with pytest.raises(BackendError, match="no network interface has iface_id 'eth9'"):
        controller.submit(lambda: controller.update_net_rate_limiters("eth9", limiter, None)).result(10)


def test_a_vhost_interface_needs_vhost_net_and_says_so_in_one_line(controller: VmmController, netns: str) -> None:
    iface = {"iface_id": "eth0", "host_dev_name": "tap0", "vhost": True}
    if Path("/dev/vhost-net").exists():  # a host with it builds the kernel's data path on the TAP
        from firelet.devices.virtio.net.vhost import VhostNet

        _attach(controller, netns, [iface])
        assert isinstance(controller.vmm.devices.get(VhostNet, "eth0"), VhostNet) and _tap_busy(netns, "tap0")
        return
    with pytest.raises(UsageError) as info:
        _attach(controller, netns, [iface])
    assert str(info.value).startswith("network interface eth0: vhost-net is not available: cannot open "
                                      "/dev/vhost-net") and "\n" not in str(info.value)
    assert not _tap_busy(netns, "tap0")  # the TAP it had opened is closed again
