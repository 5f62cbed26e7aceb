"""firelet.hostnet and `firelet net` on this host, for real: namespaces, TAPs, veth pairs, nft tables.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and /dev/net/tun. Every name is
unique to the test run and everything is removed afterwards, also when a test
fails. Addresses are documentation ones (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24); NAT tests run inside a scratch namespace standing in for the
host, so the host's own nftables and ip_forward are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from firelet.hostnet import (
    HostNetError,
    MissingKernelSupport,
    NameTaken,
    NetSetup,
    NetSpec,
    down,
    links,
    list_setups,
    up,
)
from firelet.hostnet.addressing import free_subnet, peer_address
from firelet.hostnet.checks import require_tun
from firelet.hostnet.netns import create_netns, list_netns, netns_exists, netns_path, remove_netns, rtnl

from hostnet_utils import require_root_and_tun, setups_removed_after, unique

REPO = Path(__file__).resolve().parents[2]
require_root_and_tun()


_handed_out: list[IPv4Network] = []


def free_here(pool: str) -> IPv4Interface:
    """The first host address of a /30 of ``pool`` that this namespace does not use (the machine's own
    network may be a documentation one too) and that no other test of this run was given."""
    subnet = free_subnet([*links.networks_in_use(), *_handed_out], IPv4Network(pool))
    _handed_out.append(subnet)
    return IPv4Interface(f"{next(subnet.hosts())}/30")


def sys_class_net(netns: str, path: str) -> str:
    """A /sys/class/net file as seen inside ``netns`` (ip netns exec mounts that namespace's sysfs)."""
    return subprocess.run(["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{path}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def firelet(*args: str, netns: str | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`firelet ARGS` in a subprocess, optionally in a namespace (nsenter: only the network changes)."""
    argv = [*prefix, sys.executable, "-m", "firelet.cli.main", *args]
    if netns is not None:
        argv = ["nsenter", f"--net={netns_path(netns)}", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", check=False, timeout=60)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A record directory whose setups are all removed at the end, whatever the test did."""
    yield from setups_removed_after(tmp_path / "state")


@pytest.fixture
def scratch_netns() -> Iterator[Callable[[], str]]:
    """Makes namespaces for a test and removes them (and so all inside them) afterwards."""
    made: list[str] = []

    def make() -> str:
        name = unique("fltx")
        create_netns(name)
        made.append(name)
        return name

    yield make
    for name in made:
        remove_netns(name)


def test_up_makes_a_namespace_with_a_tap_and_a_veth_pair_and_down_leaves_nothing(state_dir: Path) -> None:
    name = unique("fl")
    before = links.link_names()
    veth = free_here("198.51.100.0/24")
    up(NetSpec(name=name, netns=name, tap_address=IPv4Interface("192.0.2.1/30"), veth_address=veth, owner=65534),
       state_dir)

    assert netns_exists(name) and name in list_netns()
    assert links.link_names(name) == ["lo", "tap0", "veth0"]
    assert links.addresses("tap0", name) == [IPv4Interface("192.0.2.1/30")]
    assert links.addresses("veth0", name) == [peer_address(veth)]
    assert links.addresses(f"fl-{name}") == [veth]
    with rtnl(name) as ipr:
        [default] = [r for r in ipr.get_routes(family=2) if r["dst_len"] == 0]
        assert default.get_attr("RTA_GATEWAY") == str(veth.ip)
        assert ipr.link_lookup(ifname="tap0") and ipr.get_links(ipr.link_lookup(ifname="tap0")[0])[0]["flags"] & 1
    # The kernel's own view, through the namespace's sysfs: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_PERSIST
    # (linux/if_tun.h), owned by the uid asked for.
    assert int(sys_class_net(name, "tap0/tun_flags"), 16) == 0x0002 | 0x1000 | 0x4000 | 0x0800
    assert sys_class_net(name, "tap0/owner") == "65534"
    listing = subprocess.run(["ip", "netns", "exec", name, "ls", "/sys/class/net"], capture_output=True, text=True)
    assert listing.stdout.split() == ["lo", "tap0", "veth0"]
    assert not links.link_exists("tap0")  # the TAP is in the namespace, not here

    removed = down(name, state_dir)
    assert removed == [f"interface fl-{name}", f"interface tap0 in netns {name}", f"network namespace {name}"]
    assert not netns_exists(name)
    assert links.link_names() == before
    assert list_setups(state_dir) == []
    assert not (state_dir / f"{name}.json").exists()


def test_a_tap_here_without_a_namespace(state_dir: Path) -> None:
    name, tap = unique("fl"), unique("fltap")
    address = free_here("203.0.113.0/24")
    setup = up(NetSpec(name=name, tap=tap, tap_address=address), state_dir)
    assert setup.guest.address == peer_address(address)
    assert links.addresses(tap) == [address]
    assert Path(f"/sys/class/net/{tap}/tun_flags").read_text().strip() == "0x5802"
    assert down(name, state_dir) == [f"interface {tap}"]
    assert not links.link_exists(tap)


def test_down_finishes_when_pieces_are_already_gone(state_dir: Path) -> None:
    name = unique("fl")
    up(NetSpec(name=name, netns=name, tap_address=IPv4Interface("192.0.2.1/30"),
               veth_address=free_here("198.51.100.0/24")), state_dir)
    links.delete_link(f"fl-{name}")  # someone removed the veth pair by hand
    assert down(name, state_dir) == [f"interface tap0 in netns {name}", f"network namespace {name}"]
    assert not netns_exists(name) and list_setups(state_dir) == []


def test_a_failing_step_undoes_what_was_made(state_dir: Path) -> None:
    name = unique("fl")
    # A TAP named like the namespace's veth end: the namespace and the TAP are made, then the veth pair
    # fails inside the namespace (File exists), and both must be undone.
    with pytest.raises(HostNetError, match=r"cannot make veth pair .*/veth0: File exists"):
        up(NetSpec(name=name, tap="veth0", netns=name, tap_address=IPv4Interface("192.0.2.1/30"),
                   veth_address=free_here("198.51.100.0/24")), state_dir)
    assert not netns_exists(name)
    assert not links.link_exists(f"fl-{name}")
    assert list_setups(state_dir) == []


def test_names_that_exist_are_refused(state_dir: Path, scratch_netns: Callable[[], str]) -> None:
    taken = scratch_netns()
    with pytest.raises(NameTaken, match=f"network namespace '{taken}' exists"):
        up(NetSpec(name=unique("fl"), netns=taken), state_dir)
    name, tap = unique("fl"), unique("fltap")
    up(NetSpec(name=name, tap=tap, tap_address=free_here("203.0.113.0/24")), state_dir)
    with pytest.raises(NameTaken, match=f"setup named '{name}' exists"):
        up(NetSpec(name=name, tap=unique("fltap"), tap_address=free_here("203.0.113.0/24")), state_dir)
    with pytest.raises(NameTaken, match=f"interface '{tap}' exists"):
        up(NetSpec(name=unique("fl"), tap=tap, tap_address=free_here("203.0.113.0/24")), state_dir)
    assert [s.name for s in list_setups(state_dir)] == [name]


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("firelet: error: "), done.stderr
    for word in words:
        assert word in lines[0]


def test_the_cli_makes_lists_and_removes_a_setup(tmp_path: Path) -> None:
    name = unique("fl")
    state = str(tmp_path / "state")
    veth = free_here("198.51.100.0/24")
    made = firelet("net", "up", name, "--netns", name, "--addr", "192.0.2.33/30", "--veth-addr", str(veth),
                   "--state-dir", state)
    try:
        assert made.returncode == 0, made.stderr
        assert "ip=192.0.2.34::192.0.2.33:255.255.255.252::eth0:off" in made.stdout
        assert "06:00:C0:00:02:22" in made.stdout and f"ip netns exec {name}" in made.stdout
        listed = firelet("net", "list", "--json", "--state-dir", state)
        [record] = json.loads(listed.stdout)
        assert record["name"] == name and record["veth_netns_address"] == str(peer_address(veth))
        again = firelet("net", "up", name, "--state-dir", state)
        _one_line_error(again, 2, "exists already", f"firelet net down {name}")
    finally:
        gone = firelet("net", "down", name, "--state-dir", state)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.splitlines()[0] == f"removed network setup {name}"
    assert not netns_exists(name) and not links.link_exists(f"fl-{name}")
    _one_line_error(firelet("net", "down", name, "--state-dir", state), 2, f"no network setup named '{name}'")


@pytest.mark.parametrize(("args", "words"), [
    (("--addr", "192.0.2.1"), ("--addr", "prefix length")),
    (("--addr", "192.0.2.3/30"), ("broadcast",)),
    (("--tap", "x" * 16), ("TAP name",)),
    (("--owner", "4294967295"), ("owner uid",)),
    (("--nat-out", "nosuchif0"), ("nosuchif0", "does not exist")),
    (("--netns", "a/b"), ("namespace name",)),
])
def test_the_cli_refuses_bad_input_in_one_line(tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    if "--nat-out" in args and shutil.which("nft") is None:
        pytest.fail("the nftables package is missing (scripts/setup installs it)")
    _one_line_error(firelet("net", "up", unique("fl"), *args, "--state-dir", str(tmp_path)), 2, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix", [
    ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"),  # nobody
    ("setpriv", "--inh-caps", "-net_admin", "--bounding-set", "-net_admin"),  # root, less CAP_NET_ADMIN
])
def test_without_cap_net_admin_the_cli_refuses_in_one_line(tmp_path: Path, prefix: tuple[str, ...]) -> None:
    name = unique("fl")
    done = firelet("net", "up", name, "--netns", name, "--state-dir", str(tmp_path / "state"), prefix=prefix)
    _one_line_error(done, 77, "CAP_NET_ADMIN")
    assert not netns_exists(name) and not (tmp_path / "state").exists()


def test_nat_makes_one_table_per_side_and_down_removes_them_and_restores_forwarding(
        tmp_path: Path, scratch_netns: Callable[[], str]) -> None:
    """In a scratch namespace that plays the host: the host's own nftables are not touched."""
    host = scratch_netns()
    name = unique("fl")
    state = str(tmp_path / "state")
    nft = ["nsenter", f"--net={netns_path(host)}", "nft"]
    forwarding = ip_forward(host)
    assert firelet("net", "up", name, "--netns", name, "--addr", "192.0.2.41/30", "--veth-addr", "198.51.100.41/30",
                   "--nat-out", "lo", "--state-dir", state, netns=host).returncode == 0
    try:
        host_rules = subprocess.run([*nft, "list", "table", "ip", f"firelet-{name}"], capture_output=True, text=True)
        assert 'ip saddr 198.51.100.40/30 oifname "lo"' in host_rules.stdout and "masquerade" in host_rules.stdout
        inner = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "table", "ip", "firelet"],
                               capture_output=True, text=True)
        assert 'ip saddr 192.0.2.40/30 oifname "veth0"' in inner.stdout
        assert ip_forward(host) == "1" and ip_forward(name) == "1"
    finally:
        gone = firelet("net", "down", name, "--state-dir", state, netns=host)
    assert gone.returncode == 0, gone.stderr
    assert f"nft table ip firelet-{name}" in gone.stdout
    assert subprocess.run([*nft, "list", "tables"], capture_output=True, text=True).stdout == ""
    assert ip_forward(host) == forwarding
    assert not netns_exists(name)


def ip_forward(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_setups_list_what_is_recorded(state_dir: Path) -> None:
    names = [unique("fl"), unique("fl")]
    for name in names:
        up(NetSpec(name=name, tap=unique("fltap"), tap_address=free_here("203.0.113.0/24")), state_dir)
    assert sorted(s.name for s in list_setups(state_dir)) == sorted(names)
    assert all(isinstance(s, NetSetup) for s in list_setups(state_dir))


def test_without_nft_nat_is_refused_in_one_line(tmp_path: Path) -> None:
    name = unique("fl")
    done = firelet("net", "up", name, "--nat-out", "lo", "--state-dir", str(tmp_path), prefix=("env", "PATH=/usr/bin:/bin"))
    _one_line_error(done, 69, "nftables package")
    assert list(tmp_path.iterdir()) == []  # refused before anything was made


def test_a_missing_tun_device_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingKernelSupport, match="tun module") as err:
        require_tun(tmp_path / "no-tun")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("traversable", [True, False])
def test_listing_records_it_cannot_read_is_refused_not_shown_empty(tmp_path: Path, traversable: bool) -> None:
    """As nobody: a root-only record directory, reachable or behind a directory nobody cannot enter."""
    outer = Path(tempfile.mkdtemp(prefix="fltest-", dir="/tmp"))
    try:
        outer.chmod(0o755 if traversable else 0o700)
        state = outer / "state"
        state.mkdir(mode=0o700)
        (state / "vm1.json").write_text("{}")
        done = firelet("net", "list", "--state-dir", str(state),
                       prefix=("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"))
    finally:
        shutil.rmtree(outer)
    _one_line_error(done, 77, "run this as root")


def test_forwarding_stays_on_while_another_setups_nat_needs_it(tmp_path: Path, scratch_netns: Callable[[], str]) -> None:
    host = scratch_netns()
    state = str(tmp_path / "state")
    forwarding = ip_forward(host)
    first, second = unique("fl"), unique("fl")
    for name, tap, addr in ((first, "fltapa", "203.0.113.1/30"), (second, "fltapb", "203.0.113.5/30")):
        made = firelet("net", "up", name, "--tap", tap, "--addr", addr, "--nat-out", "lo", "--state-dir", state,
                       netns=host)
        assert made.returncode == 0, made.stderr
    assert ip_forward(host) == "1"
    assert firelet("net", "down", first, "--state-dir", state, netns=host).returncode == 0
    assert ip_forward(host) == "1"  # the second setup's NAT still forwards
    gone = firelet("net", "down", second, "--state-dir", state, netns=host)
    assert gone.returncode == 0 and "sysctl net.ipv4.ip_forward (was" in gone.stdout
    assert ip_forward(host) == forwarding


def test_a_stale_nft_table_of_the_same_name_is_refused_before_anything_is_made(
        tmp_path: Path, scratch_netns: Callable[[], str]) -> None:
    host = scratch_netns()
    name = unique("fl")
    subprocess.run(["nsenter", f"--net={netns_path(host)}", "nft", "add", "table", "ip", f"firelet-{name}"], check=True)
    done = firelet("net", "up", name, "--tap", "fltapc", "--nat-out", "lo", "--state-dir", str(tmp_path), netns=host)
    _one_line_error(done, 2, f"nft table ip firelet-{name} exists already")
    listing = subprocess.run(["ip", "-n", host, "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "fltapc" not in listing and list(tmp_path.iterdir()) == []
