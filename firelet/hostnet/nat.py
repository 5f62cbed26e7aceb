"""NAT out of a namespace with nftables, and the IPv4 forwarding switch it needs.

Each setup gets a table of its own, so removing it is deleting that one table:
nothing shared is edited, and no rule handles have to be looked up. The ruleset
is generated as text and loaded with ``nft -f -`` in the right namespace;
pyroute2's nftables module is too low-level for a masquerade rule to read well.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network

from firelet.hostnet.errors import HostNetError, NameTaken
from firelet.hostnet.netns import netns_exists, run_in_netns

IP_FORWARD = "net/ipv4/ip_forward"


def masquerade_ruleset(table: str, source: IPv4Network, out_iface: str) -> str:
    """A table of family ip whose postrouting chain masquerades ``source`` leaving by ``out_iface``."""
    return (
        f"table ip {table} {{\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\tip saddr {source} oifname "{out_iface}" counter masquerade\n'
        "\t}\n"
        "}\n"
    )


def _nft(nft: str, args: list[str], netns: str | None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # The subprocess is started from the thread that joined the namespace, so it runs there.
    return run_in_netns(netns, lambda: subprocess.run(
        [nft, *args], input=stdin, capture_output=True, text=True, check=False))


def table_exists(nft: str, table: str, netns: str | None = None) -> bool:
    if netns is not None and not netns_exists(netns):
        return False
    return _nft(nft, ["list", "table", "ip", table], netns).returncode == 0


def load_table(nft: str, table: str, ruleset: str, netns: str | None = None) -> None:
    """Load ``ruleset`` (one new table ``table``); refuses if that table exists, since nft would merge into it."""
    if table_exists(nft, table, netns):
        where = f" in network namespace {netns!r}" if netns else ""
        raise NameTaken(f"nft table ip {table} exists already{where}: remove it (nft delete table ip {table})")
    done = _nft(nft, ["-f", "-"], netns, stdin=ruleset)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[0]
        raise HostNetError(f"nft refused the NAT table {table}: {reason}")


def delete_table(nft: str, table: str, netns: str | None = None) -> bool:
    """Delete table ``table``; False when it (or its namespace) is already gone."""
    if not table_exists(nft, table, netns):
        return False
    done = _nft(nft, ["delete", "table", "ip", table], netns)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[0]
        raise HostNetError(f"cannot delete nft table ip {table}: {reason}")
    return True


def read_sysctl(path: str, netns: str | None = None) -> str:
    """A /proc/sys value as seen from that namespace (net sysctls are per namespace)."""
    def read() -> str:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()

    return run_in_netns(netns, read)


def write_sysctl(path: str, value: str, netns: str | None = None) -> None:
    def write() -> None:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)

    try:
        run_in_netns(netns, write)
    except OSError as exc:
        raise HostNetError(f"cannot set {path.replace('/', '.')} = {value}: {exc.strerror or exc}") from None
