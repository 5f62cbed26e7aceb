"""``/network-interfaces/{id}`` against real TAPs: PUT opens the TAP as the VMM will, PATCH replaces buckets.

The API (and firelet-vmm) runs inside a network namespace the test makes, holding
TAPs the test makes; a TAP that is missing, busy or not a TAP is refused at the PUT
in one line naming it, and the configuration is left as it was.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firelet.api.faults import NOT_BEFORE_BOOT
from firelet.api.routes import Api
from firelet.devtools.cache import repo_root
from firelet.hostnet import links
from firelet.hostnet.netns import create_netns, netns_path, remove_netns, run_in_netns
from firelet.metrics import Metrics

from api_fake_backend import FakeBackend, call, serve, wait_for_api
from net_frames import open_tap

if os.geteuid() != 0 or not Path("/dev/net/tun").exists():  # pragma: no cover - the CI machine is root
    pytest.fail("these tests make network namespaces and TAPs: run them as root with /dev/net/tun", pytrace=False)

_counter = itertools.count()
LIMIT = {"bandwidth": {"size": 1000, "refill_time": 100}}


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with TAPs tap0 and tap1 (and lo), removed after the test."""
    name = f"fltapi{os.getpid() % 10000}{next(_counter)}"
    create_netns(name)
    try:
        for tap in ("tap0", "tap1"):
            links.create_tap(tap, netns=name)
        yield name
    finally:
        remove_netns(name)


class Client:
    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = call(self.sock, method, path, body)
        assert status in (200, 204), (method, path, status, answer)
        return answer

    def fault(self, method: str, path: str, body: Any = None) -> str:
        status, answer = call(self.sock, method, path, body)
        assert status == 400 and set(answer) == {"fault_message"}, (method, path, status, answer)
        message: str = answer["fault_message"]
        assert "\n" not in message
        return message

    def interfaces(self) -> list[dict[str, Any]]:
        return list(self.ok("GET", "/vm/config")["network-interfaces"])


@pytest.fixture
def api(netns: str, tmp_path: Path) -> Iterator[tuple[Client, FakeBackend]]:
    """An API whose server thread lives in ``netns`` (threads it starts inherit the namespace)."""
    fake = FakeBackend()
    api = Api(instance_id="net-vm", backend_factory=lambda: fake, metrics=Metrics())
    sock = tmp_path / "api.sock"
    (tmp_path / "vmlinux").write_bytes(b"\0" * 4096)
    cm = serve(api, sock)
    run_in_netns(netns, cm.__enter__)
    try:
        yield Client(sock), fake
    finally:
        cm.__exit__(None, None, None)


def _iface(iface_id: str, tap: str, **more: Any) -> dict[str, Any]:
    return {"iface_id": iface_id, "host_dev_name": tap, **more}


def _boot(client: Client, tmp_path: Path) -> None:
    client.ok("PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "vmlinux")})
    client.ok("PUT", "/actions", {"action_type": "InstanceStart"})


def test_put_opens_the_tap_and_get_reports_the_interface_as_firecracker_does(
        api: tuple[Client, FakeBackend], tmp_path: Path) -> None:
    client, fake = api
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", guest_mac="06:00:C0:00:02:02",
                                                        rx_rate_limiter=LIMIT))
    client.ok("PUT", "/network-interfaces/eth1", _iface("eth1", "tap1"))
    assert client.interfaces() == [
        {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:c0:00:02:02", "mtu": None,
         "rx_rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": None, "refill_time": 100}, "ops": None},
         "tx_rate_limiter": None},
        {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": None, "mtu": None, "rx_rate_limiter": None,
         "tx_rate_limiter": None},
    ]
    # A PUT with the same id replaces that interface, whole (what it leaves out is gone).
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", guest_mac="06:00:c0:00:02:03"))
    assert [(n["iface_id"], n["guest_mac"], n["rx_rate_limiter"]) for n in client.interfaces()] == [
        ("eth0", "06:00:c0:00:02:03", None), ("eth1", None, None)]
    _boot(client, tmp_path)
    assert fake.config is not None
    assert [(n.iface_id, n.host_dev_name) for n in fake.config.network_interfaces] == [("eth0", "tap0"),
                                                                                       ("eth1", "tap1")]


def test_a_tap_that_is_missing_busy_or_not_a_tap_is_refused_naming_it(api: tuple[Client, FakeBackend],
                                                                       netns: str) -> None:
    client, _ = api
    assert client.fault("PUT", "/network-interfaces/eth0", _iface("eth0", "tap9")).startswith(
        "Network config error: Could not create the network device: TAP device 'tap9' does not exist in this "
        "network namespace; create it first")
    assert client.fault("PUT", "/network-interfaces/eth0", _iface("eth0", "lo")).startswith(
        "Network config error: Could not create the network device: 'lo' is not a TAP device")
    held = run_in_netns(netns, lambda: open_tap("tap1"))  # another process's VMM has it
    try:
        message = client.fault("PUT", "/network-interfaces/eth0", _iface("eth0", "tap1"))
    finally:
        os.close(held)
    assert message.startswith("Network config error: Could not create the network device: ")
    assert "TAP device 'tap1' is in use by another process" in message
    assert client.interfaces() == []  # nothing half-applied
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap1"))  # free again


def test_duplicates_and_bad_values_are_refused_in_firecrackers_words(api: tuple[Client, FakeBackend]) -> None:
    client, _ = api
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", guest_mac="06:00:00:00:00:01"))
    assert client.fault("PUT", "/network-interfaces/eth1", _iface("eth1", "tap1", guest_mac="06:00:00:00:00:01")) == (
        "Network config error: The MAC address is already in use: 06:00:00:00:00:01.")
    assert client.fault("PUT", "/network-interfaces/eth1", _iface("eth1", "tap0")) == (
        "Network config error: Could not create the network device: the TAP tap0 is already used by "
        "network interface eth0.")
    assert client.fault("PUT", "/network-interfaces/eth1", _iface("eth2", "tap1")).startswith(
        "The id from the path does not match the id from the body!")
    assert "guest_mac: expected a unicast MAC" in client.fault(
        "PUT", "/network-interfaces/eth1", _iface("eth1", "tap1", guest_mac="07:00:00:00:00:01"))
    assert "rx_rate_limiter.bandwidth.size: expected int >= 0, got -1" in client.fault(
        "PUT", "/network-interfaces/eth1",
        _iface("eth1", "tap1", rx_rate_limiter={"bandwidth": {"size": -1, "refill_time": 1}}))
    assert "not supported by firelet yet" in client.fault(
        "PUT", "/network-interfaces/eth1", _iface("eth1", "tap1", mtu=1500))
    # Its own MAC and TAP again under its own id: a replacement, not a duplicate.
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", guest_mac="06:00:00:00:00:01"))
    assert [n["iface_id"] for n in client.interfaces()] == ["eth0"]


def test_patch_replaces_the_given_buckets_live_and_keeps_the_others(api: tuple[Client, FakeBackend],
                                                                     tmp_path: Path) -> None:
    client, fake = api
    ops = {"size": 10, "refill_time": 100}
    client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", rx_rate_limiter=LIMIT,
                                                        tx_rate_limiter={"ops": ops}))
    assert client.fault("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0"}) == NOT_BEFORE_BOOT
    _boot(client, tmp_path)
    rx = {"ops": {"size": 200, "refill_time": 1000, "one_time_burst": 5}}
    client.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": rx})
    [iface] = client.interfaces()
    assert iface["rx_rate_limiter"] == {"bandwidth": {"size": 1000, "one_time_burst": None, "refill_time": 100},
                                        "ops": {"size": 200, "one_time_burst": 5, "refill_time": 1000}}
    assert iface["tx_rate_limiter"] == {"bandwidth": None, "ops": {**ops, "one_time_burst": None}}
    # A 0-sized bucket removes that limit; a limiter left with none is reported as none.
    zero = {"size": 0, "refill_time": 0}
    client.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": {"ops": zero}})
    assert client.interfaces()[0]["tx_rate_limiter"] is None
    updates = [c for c in fake.calls if c[0] == "update_net"]
    assert [(c[1], c[2] is not None, c[3] is not None) for c in updates] == [("eth0", True, False),
                                                                            ("eth0", False, True)]
    assert client.fault("PATCH", "/network-interfaces/eth9", {"iface_id": "eth9"}) == (
        "Network config error: Unable to update the net device: no network interface has iface_id 'eth9'. "
        "Please verify the request arguments.")
    assert "size: expected int <= " in client.fault(
        "PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": {"ops": {
            "size": 1 << 63, "refill_time": 1}}})


# -- firelet-vmm itself, run inside the namespace ---------------------------------------------
def _vmm_in(netns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns_path(netns)}", sys.executable, "-m", "firelet.cli.vmm", "--no-seccomp", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo_root()) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_firelet_vmm_opens_the_tap_in_its_own_namespace_at_the_put(netns: str, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen(_vmm_in(netns, "--api-sock", str(sock)), env=_env(), stderr=subprocess.PIPE)
    try:
        wait_for_api(sock, proc)
        client = Client(sock)
        client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", guest_mac="06:00:c0:00:02:02"))
        assert client.fault("PUT", "/network-interfaces/eth1", _iface("eth1", "tap9")).startswith(
            "Network config error: Could not create the network device: TAP device 'tap9' does not exist")
        assert [n["host_dev_name"] for n in client.interfaces()] == ["tap0"]
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_firelet_vmm_config_file_takes_network_interfaces(netns: str, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"not a kernel")
    path = tmp_path / "vm.json"

    def run(tap: str) -> subprocess.CompletedProcess[str]:
        path.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                    "network-interfaces": [_iface("eth0", tap)]}))
        return subprocess.run(_vmm_in(netns, "--no-api", "--config-file", str(path)), env=_env(),
                              capture_output=True, text=True, timeout=60)

    missing = run("tap9")
    assert missing.returncode == 1
    assert missing.stderr.startswith("firelet-vmm: error: config file: network-interfaces/eth0: Network config "
                                     "error: Could not create the network device: TAP device 'tap9' does not exist")
    assert missing.stderr.count("\n") == 1
    present = run("tap0")  # accepted and opened; the start then fails on the kernel, after it
    assert present.returncode == 1
    assert present.stderr.startswith("firelet-vmm: error: config file: actions: Cannot start the microVM: "), (
        present.stderr)


def test_vhost_is_firelets_own_field_refused_with_limiters_or_without_the_module(
        api: tuple[Client, FakeBackend]) -> None:
    client, _ = api
    refused = client.fault("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", vhost=True, tx_rate_limiter=LIMIT))
    assert "vhost: an interface on vhost-net moves its frames in the host kernel" in refused
    if os.path.exists("/dev/vhost-net"):  # a host with vhost-net takes it, and reports it back
        client.ok("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", vhost=True))
        assert client.interfaces()[0]["vhost"] is True
    else:
        message = client.fault("PUT", "/network-interfaces/eth0", _iface("eth0", "tap0", vhost=True))
        assert message.startswith("Network config error: Could not create the network device: vhost-net is not "
                                  "available: cannot open /dev/vhost-net") and "modprobe vhost_net" in message
        assert client.interfaces() == []
    client.ok("PUT", "/network-interfaces/eth1", _iface("eth1", "tap1"))
    assert "vhost" not in client.interfaces()[-1]  # Firecracker's fields only, unless it is asked for
