"""Making and removing a microVM's host networking as one unit.

:func:`up` checks everything it can before it touches the host, then makes the
pieces one by one, recording each as soon as it exists; if a step fails, what
was made is undone and the error is raised. :func:`down` undoes a record in
reverse order and tolerates pieces that are already gone, so it can be run again
after an interruption and always ends with nothing left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

from firelet.hostnet import checks, links, nat
from firelet.hostnet.addressing import DEFAULT_TAP_ADDRESS, free_subnet, peer_address
from firelet.hostnet.errors import BadInput, HostNetError, NameTaken
from firelet.hostnet.netns import create_netns, netns_exists, remove_netns
from firelet.hostnet.record import DEFAULT_STATE_DIR, Made, NetSetup, claim, forget, load, load_all, save
from firelet.log import get_logger

# The namespace's end of the veth pair; the namespace is new, so the name is free.
VETH_NETNS_END = "veth0"
# The NAT table inside a namespace (the namespace is the setup's own).
NETNS_NAT_TABLE = "firelet"

log = get_logger("firelet.hostnet")


def host_nat_table(name: str) -> str:
    """The setup's own table in the host's nftables."""
    return f"firelet-{name}"


def veth_host_end(name: str) -> str:
    return f"fl-{name}"


@dataclass(frozen=True)
class NetSpec:
    """What to make. Without ``netns`` the TAP is made here, as in Firecracker's guide;
    with it, a new namespace holds the TAP and (``veth``) a pair of links joins it to this one."""

    name: str
    tap: str = "tap0"
    tap_address: IPv4Interface = DEFAULT_TAP_ADDRESS
    netns: str | None = None
    veth: bool = True
    veth_address: IPv4Interface | None = None  # host side; None: a free /30 from VETH_POOL
    nat_out: str | None = None  # a host interface to masquerade the guest's traffic out of
    owner: int | None = None  # a uid the TAP belongs to, so that it can open the TAP unprivileged


def _validate(spec: NetSpec) -> None:
    checks.check_setup_name(spec.name)
    checks.check_link_name(spec.tap, "TAP")
    if spec.netns is not None:
        checks.check_netns_name(spec.netns)
    if spec.nat_out is not None:
        checks.check_link_name(spec.nat_out, "--nat-out interface")
    if spec.owner is not None:
        checks.check_uid(spec.owner)
    if spec.nat_out is not None and spec.netns is not None and not spec.veth:
        raise BadInput("NAT out of a namespace goes through its veth pair: drop --no-veth or --nat-out")
    if spec.veth_address is not None and (spec.netns is None or not spec.veth):
        raise BadInput("--veth-addr is for the veth pair, which only a setup with --netns has")
    if spec.veth_address is not None and spec.veth_address.network.overlaps(spec.tap_address.network):
        raise BadInput(f"the veth subnet {spec.veth_address.network} overlaps the TAP's {spec.tap_address.network}")


def _preflight(spec: NetSpec, state_dir: Path) -> str | None:
    """Refuse now what would fail halfway; returns the nft path when NAT is asked."""
    _validate(spec)
    checks.require_capabilities(netns=spec.netns is not None)
    checks.require_tun()
    nft = checks.require_nft() if spec.nat_out is not None else None
    if (state_dir / f"{spec.name}.json").exists():
        raise NameTaken(f"a network setup named {spec.name!r} exists already: "
                        f"remove it with `firelet net down {spec.name}`")
    if spec.netns is not None and netns_exists(spec.netns):
        raise NameTaken(f"network namespace {spec.netns!r} exists already: pick another --netns name")
    if spec.netns is None:
        if links.link_exists(spec.tap):
            raise NameTaken(f"interface {spec.tap!r} exists already: pick another --tap name")
        clash = [net for net in links.networks_in_use() if net.overlaps(spec.tap_address.network)]
        if clash:
            raise BadInput(f"the TAP subnet {spec.tap_address.network} overlaps {clash[0]} on this host: "
                           "pick another --addr")
    elif spec.veth:
        if links.link_exists(veth_host_end(spec.name)):
            raise NameTaken(f"interface {veth_host_end(spec.name)!r} exists already: pick another setup name")
        if spec.veth_address is not None:
            clash = [net for net in links.networks_in_use() if net.overlaps(spec.veth_address.network)]
            if clash:
                raise BadInput(f"the veth subnet {spec.veth_address.network} overlaps {clash[0]} on this host: "
                               "pick another --veth-addr")
    if nft is not None and nat.table_exists(nft, host_nat_table(spec.name)):
        raise NameTaken(f"nft table ip {host_nat_table(spec.name)} exists already: "
                        f"remove it (nft delete table ip {host_nat_table(spec.name)}) or pick another name")
    if spec.nat_out is not None and not links.link_exists(spec.nat_out):
        raise BadInput(f"--nat-out interface {spec.nat_out!r} does not exist on this host")
    return nft


def _veth_address(spec: NetSpec, state_dir: Path) -> IPv4Interface:
    if spec.veth_address is not None:
        return spec.veth_address
    taken = links.networks_in_use()
    taken.append(spec.tap_address.network)
    taken += [s.veth_host_address.network for s in load_all(state_dir) if s.veth_host_address is not None]
    subnet = free_subnet(taken)
    return IPv4Interface(f"{next(subnet.hosts())}/{subnet.prefixlen}")


def up(spec: NetSpec, state_dir: Path = DEFAULT_STATE_DIR) -> NetSetup:
    """Make the setup ``spec`` describes and return its record."""
    nft = _preflight(spec, state_dir)
    setup = NetSetup(name=spec.name, tap=spec.tap, tap_address=spec.tap_address, netns=spec.netns,
                     owner=spec.owner, nat_out=spec.nat_out)
    if spec.netns is not None and spec.veth:
        setup.veth_host = veth_host_end(spec.name)
        setup.veth_host_address = _veth_address(spec, state_dir)
        setup.veth_netns = VETH_NETNS_END
        setup.veth_netns_address = peer_address(setup.veth_host_address)
    claim(state_dir, setup)

    def made(item: Made) -> None:
        setup.made.append(item)
        save(state_dir, setup)

    try:
        _make(setup, nft, made)
    except BaseException:
        try:
            _undo(setup, state_dir)
        except HostNetError as exc:  # the record keeps what is left, for `firelet net down`
            log.warning("could not undo all of network setup %s: %s", setup.name, exc)
        else:
            forget(state_dir, setup.name)
        raise
    return setup


def _make(setup: NetSetup, nft: str | None, made: Callable[[Made], None]) -> None:
    ns = setup.netns
    if ns is not None:
        create_netns(ns)
        made(Made("netns", ns))
        links.set_up("lo", ns)
    links.create_tap(setup.tap, netns=ns, owner=setup.owner)
    made(Made("link", setup.tap, ns))
    links.add_address(setup.tap, setup.tap_address, ns)
    links.set_up(setup.tap, ns)
    if ns is not None and setup.veth_host and setup.veth_netns and setup.veth_host_address and setup.veth_netns_address:
        links.create_veth(setup.veth_host, setup.veth_netns, ns)
        made(Made("link", setup.veth_host))  # deleting one end deletes the pair
        links.add_address(setup.veth_host, setup.veth_host_address)
        links.add_address(setup.veth_netns, setup.veth_netns_address, ns)
        links.set_up(setup.veth_host)
        links.set_up(setup.veth_netns, ns)
        links.add_default_route(setup.veth_host_address.ip, ns)
    if nft is None or setup.nat_out is None:
        return
    if ns is not None and setup.veth_netns and setup.veth_host_address:
        # Inside: the guest's subnet leaves as the namespace's veth address, so the host
        # only ever sees that one (guests in other namespaces may reuse the same subnet).
        _forwarding_on(ns, made)
        ruleset = nat.masquerade_ruleset(NETNS_NAT_TABLE, setup.tap_address.network, setup.veth_netns)
        nat.load_table(nft, NETNS_NAT_TABLE, ruleset, ns)
        made(Made("nft-table", NETNS_NAT_TABLE, ns))
        source = setup.veth_host_address.network
    else:
        source = setup.tap_address.network
    _forwarding_on(None, made)
    table = host_nat_table(setup.name)
    nat.load_table(nft, table, nat.masquerade_ruleset(table, source, setup.nat_out))
    made(Made("nft-table", table))


def _forwarding_on(netns: str | None, made: Callable[[Made], None]) -> None:
    before = nat.read_sysctl(nat.IP_FORWARD, netns)
    if before != "1":
        nat.write_sysctl(nat.IP_FORWARD, "1", netns)
        made(Made("sysctl", nat.IP_FORWARD, netns, before=before))


def _hand_over(item: Made, state_dir: Path, name: str) -> bool:
    """Give a host sysctl change to another setup whose NAT still needs it; True if one took it.

    The change is put first in that setup's record, so it is undone after that setup's NAT table.
    """
    if item.netns is not None:
        return False  # a namespace's sysctl belongs to the one setup that made the namespace
    for other in load_all(state_dir):
        if other.name != name and other.nat_out is not None:  # every NAT forwards on the host
            other.made.insert(0, item)
            save(state_dir, other)
            return True
    return False


def _undo_one(item: Made, state_dir: Path, name: str) -> bool:
    """Undo one step; False when there was nothing left to undo."""
    if item.kind == "netns":
        return remove_netns(item.name)
    if item.kind == "link":
        return links.delete_link(item.name, item.netns)
    if item.kind == "nft-table":
        if item.netns is not None and not netns_exists(item.netns):
            return False
        return nat.delete_table(checks.require_nft(), item.name, item.netns)
    if item.netns is not None and not netns_exists(item.netns):
        return False
    if item.before is None or _hand_over(item, state_dir, name):
        return False
    nat.write_sysctl(item.name, item.before, item.netns)
    return True


def _undo(setup: NetSetup, state_dir: Path) -> list[str]:
    """Undo ``setup.made`` newest first, saving after each step; what was removed, described.

    Steps that fail stay in the record (and the errors are raised together), so a later run can retry them.
    """
    removed: list[str] = []
    errors: list[str] = []
    failed: list[Made] = []
    while setup.made:
        item = setup.made.pop()
        try:
            if _undo_one(item, state_dir, setup.name):
                removed.append(item.describe())
        except HostNetError as exc:
            errors.append(str(exc))
            failed.insert(0, item)
        save(state_dir, setup)
    if errors:
        setup.made = failed
        save(state_dir, setup)
        raise HostNetError("; ".join(errors))
    return removed


def down(name: str, state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Remove everything setup ``name`` made (what is already gone is skipped); what was removed."""
    checks.check_setup_name(name)
    setup = load(state_dir, name)
    checks.require_capabilities(netns=setup.netns is not None)
    removed = _undo(setup, state_dir)
    forget(state_dir, name)
    return removed


def list_setups(state_dir: Path = DEFAULT_STATE_DIR) -> list[NetSetup]:
    return load_all(state_dir)
