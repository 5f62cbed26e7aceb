"""``firelet run --net tap=NAME[,mac=MAC][,id=ID]``: Firecracker network interfaces from the command line.

A good spec becomes the same validated interface a config file or the API gives; a bad
one is a one-line usage error naming the option, before anything is built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.cli.main import build_parser, main, requested_command
from firelet.cli.run import build_microvm, parse_net
from firelet.errors import UsageError


def _args(*argv: str):
    full = ["run", *argv]
    return build_parser(requested_command(full)).parse_args(full)


def test_each_net_option_is_an_interface_in_order(tmp_path: Path) -> None:
    vm, _ = build_microvm(_args("--kernel", str(tmp_path / "vmlinux"), "--console", "none",
                                "--net", "tap=tap0", "--net", "mac=06:00:C0:00:02:06,tap=tap1,id=mgmt"))
    assert [(n.iface_id, n.host_dev_name, n.guest_mac) for n in vm.config.network_interfaces] == [
        ("eth0", "tap0", None), ("mgmt", "tap1", "06:00:c0:00:02:06")]


@pytest.mark.parametrize(("spec", "needle"), [
    ("tap0", "--net tap0: bad item 'tap0'; use tap=NAME[,mac=MAC][,id=ID]"),
    ("tap=", "--net tap=: bad item 'tap='"),
    ("tap=a,tap=b", "--net tap=a,tap=b: bad item 'tap=b'"),
    ("tap=a,speed=10", "--net tap=a,speed=10: bad item 'speed=10'"),
    ("mac=06:00:00:00:00:01", "--net mac=06:00:00:00:00:01: needs tap=NAME"),
])
def test_a_bad_spec_is_one_usage_line(spec: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_net(spec, 0)
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="tapmcid=,:0123456789abcdef x", max_size=30))
def test_any_spec_parses_or_is_refused_in_one_line(spec: str) -> None:
    try:
        iface = parse_net(spec, 3)
    except UsageError as exc:
        assert str(exc).startswith(f"--net {spec}: ") and "\n" not in str(exc)
        return
    assert set(iface) <= {"iface_id", "host_dev_name", "guest_mac"} and iface["host_dev_name"]
    if not any(item.startswith("id=") for item in spec.split(",")):
        assert iface["iface_id"] == "eth3"  # its place among the --net options


def test_the_command_refuses_bad_interfaces_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = str(tmp_path / "vmlinux")
    assert main(["run", "--kernel", kernel, "--console", "none", "--net", "id=x"]) == 2
    assert capsys.readouterr().err == "firelet: error: --net id=x: needs tap=NAME, the host TAP device (see `firelet net up`)\n"
    assert main(["run", "--kernel", kernel, "--console", "none", "--net", "tap=tap0,mac=01:00:00:00:00:01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("firelet: error: network-interfaces[0].guest_mac: expected a unicast MAC") and err.count("\n") == 1
    assert main(["run", "--kernel", kernel, "--console", "none", "--net", "tap=tap0", "--net", "tap=tap0"]) == 2
    assert "host_dev_name 'tap0' is used by more than one interface" in capsys.readouterr().err
    config = tmp_path / "vm.json"
    config.write_text("{}")
    assert main(["run", "--config-file", str(config), "--net", "tap=tap0"]) == 2
    assert "do not combine it with --kernel/--rootfs/--drive/--initrd/--net" in capsys.readouterr().err


def test_vhost_asks_for_the_kernels_data_path() -> None:
    assert parse_net("tap=tap0,vhost", 0) == {"host_dev_name": "tap0", "vhost": True, "iface_id": "eth0"}
    with pytest.raises(UsageError, match="bad item 'vhost'"):
        parse_net("tap=tap0,vhost,vhost", 0)
