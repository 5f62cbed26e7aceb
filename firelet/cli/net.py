"""``firelet net up|down|list``: a microVM's host networking in one command.

``up`` makes a TAP (in a new network namespace if asked, joined to this one by
a veth pair, with NAT out of a host interface if asked) and prints what the
guest should use; ``down`` removes exactly what ``up`` made. See docs/network.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firelet.hostnet import NetSetup

# Kept in step with firelet.hostnet (not imported here, so `firelet --help` stays light).
_DEFAULT_STATE_DIR = "/run/firelet/net"
_DEFAULT_TAP_ADDRESS = "172.16.0.1/30"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "net",
        help="make or remove a microVM's host networking (TAP, namespace, NAT)",
        description="Make and remove the host side of a microVM's network: a TAP device, optionally in "
                    "a network namespace of its own joined to this one by a veth pair, with NAT out of a "
                    "host interface. Needs CAP_NET_ADMIN (root).",
    )
    _state_dir_option(p, _DEFAULT_STATE_DIR)
    actions = p.add_subparsers(dest="net_action", metavar="ACTION")

    u = actions.add_parser("up", help="make a setup and print the guest's settings",
                           description="Make a TAP (and what the options ask for) and record it under NAME.")
    u.add_argument("name", metavar="NAME", help="the setup's name (1-12 letters, digits, '-', '_')")
    u.add_argument("--tap", default="tap0", metavar="IFNAME", help="the TAP's name (default tap0)")
    u.add_argument("--netns", metavar="NETNS",
                   help="make a new network namespace NETNS and put the TAP in it, with a veth pair to this one")
    u.add_argument("--addr", default=_DEFAULT_TAP_ADDRESS, metavar="IP/PREFIX",
                   help=f"the TAP's address, the guest's gateway (default {_DEFAULT_TAP_ADDRESS}); "
                        "the guest takes the other address of the subnet")
    u.add_argument("--veth-addr", metavar="IP/PREFIX",
                   help="this side's address on the veth pair (default: a free /30 in 10.200.0.0/16)")
    u.add_argument("--no-veth", action="store_true", help="with --netns: no veth pair, the namespace stays closed")
    u.add_argument("--nat-out", metavar="IFACE",
                   help="masquerade the guest's traffic out of host interface IFACE (nftables; off by default)")
    u.add_argument("--owner", type=int, metavar="UID", help="the uid that may open the TAP without privileges")
    u.add_argument("--json", action="store_true", help="print the record as JSON")
    _state_dir_option(u, argparse.SUPPRESS)
    u.set_defaults(func=run_up)

    d = actions.add_parser("down", help="remove everything a setup made",
                           description="Remove what `firelet net up NAME` made; what is already gone is skipped.")
    d.add_argument("name", metavar="NAME")
    _state_dir_option(d, argparse.SUPPRESS)
    d.set_defaults(func=run_down)

    ls = actions.add_parser("list", help="show the recorded setups")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")
    _state_dir_option(ls, argparse.SUPPRESS)
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: _usage(p))


def _state_dir_option(parser: argparse.ArgumentParser, default: str) -> None:
    """--state-dir before or after the action (after it, SUPPRESS keeps the one given before)."""
    parser.add_argument("--state-dir", default=default, metavar="DIR",
                        help=f"where setups are recorded (default {_DEFAULT_STATE_DIR})")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("firelet net: error: say up, down or list", file=sys.stderr)
    return 2


def run_up(args: argparse.Namespace) -> int:
    from firelet.hostnet import NetSpec, up
    from firelet.hostnet.addressing import parse_interface

    spec = NetSpec(
        name=args.name, tap=args.tap, tap_address=parse_interface(args.addr, "--addr"), netns=args.netns,
        veth=not args.no_veth,
        veth_address=parse_interface(args.veth_addr, "--veth-addr") if args.veth_addr else None,
        nat_out=args.nat_out, owner=args.owner,
    )
    setup = up(spec, Path(args.state_dir))
    print(setup.to_json() if args.json else describe(setup), end="")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from firelet.hostnet import down

    removed = down(args.name, Path(args.state_dir))
    print(f"removed network setup {args.name}" + "".join(f"\n  {what}" for what in removed))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from firelet.hostnet import list_setups

    setups = list_setups(Path(args.state_dir))
    if args.json:
        print(json.dumps([json.loads(s.to_json()) for s in setups], indent=1))
    elif not setups:
        print("no network setups (make one with `firelet net up NAME`)")
    else:
        for setup in setups:
            print(_summary(setup))
    return 0


def _summary(setup: NetSetup) -> str:
    where = f" in netns {setup.netns}" if setup.netns else ""
    nat = f", NAT out of {setup.nat_out}" if setup.nat_out else ""
    return f"{setup.name}: {setup.tap}{where} {setup.tap_address}, guest {setup.guest.address}{nat}"


def describe(setup: NetSetup) -> str:
    """What was made and what the guest should use, for people."""
    g = setup.guest
    lines = [f"made network setup {setup.name}:"]
    if setup.netns:
        lines.append(f"  network namespace {setup.netns} (/var/run/netns/{setup.netns})")
    owner = f", owner uid {setup.owner}" if setup.owner is not None else ""
    where = f" in {setup.netns}" if setup.netns else ""
    lines.append(f"  TAP {setup.tap}{where}: {setup.tap_address}{owner}")
    if setup.veth_host:
        lines.append(f"  veth {setup.veth_host} {setup.veth_host_address} (here) <-> {setup.veth_netns} "
                     f"{setup.veth_netns_address} (in {setup.netns}, its default route)")
    if setup.nat_out:
        table = f"firelet-{setup.name}"
        lines.append(f"  NAT: the guest's traffic leaves by {setup.nat_out}, masqueraded (nft table ip {table})")
    lines += [
        "guest settings:",
        f"  address  {g.address}",
        f"  gateway  {g.gateway}",
        f"  mac      {g.mac} (a suggestion: 06:00 and the guest's address)",
        f"  boot arg {g.boot_arg()}",
        f"  or in the guest: {'; '.join(g.commands())}",
        f"  config   \"network-interfaces\": [{{\"iface_id\": \"{g.iface}\", \"host_dev_name\": \"{setup.tap}\", "
        f"\"guest_mac\": \"{g.mac}\"}}]",
    ]
    if setup.netns:
        lines.append(f"run the VMM in the namespace: ip netns exec {setup.netns} firelet run ...")
    lines.append(f"remove it all: firelet net down {setup.name}")
    return "\n".join(lines) + "\n"
