"""What must hold before anything is made: names, capabilities, kernel support.

Each check raises one of :mod:`firelet.hostnet.errors` with a one-line message,
so that ``firelet net up`` refuses before it touches the host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from firelet.hostnet.errors import BadInput, MissingKernelSupport, NotPermitted

# Capability bit numbers, linux/capability.h.
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

TUN_DEVICE = Path("/dev/net/tun")

# A setup's name becomes a file name, a netns name and part of link and nft table names.
_SETUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}")
# Link names: at most IFNAMSIZ - 1 = 15 bytes (linux/if.h); we allow a safe alphabet only.
_LINK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
# Namespace names are file names under /var/run/netns.
_NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_setup_name(name: str) -> str:
    if not _SETUP_NAME.fullmatch(name):
        raise BadInput(f"invalid setup name {name!r}: use 1-12 letters, digits, '-' or '_', "
                       "starting with a letter or digit")
    return name


def check_link_name(name: str, what: str = "interface") -> str:
    if not _LINK_NAME.fullmatch(name):
        raise BadInput(f"invalid {what} name {name!r}: use 1-15 letters, digits, '.', '-' or '_'")
    return name


def check_netns_name(name: str) -> str:
    if not _NETNS_NAME.fullmatch(name):
        raise BadInput(f"invalid network namespace name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
    return name


def check_uid(uid: int, what: str = "owner uid") -> int:
    if not 0 <= uid < 2**32 - 1:  # (uid_t)-1 means "no owner" to the kernel
        raise BadInput(f"invalid {what} {uid}: give a number from 0 to {2**32 - 2}")
    return uid


def effective_capabilities(status: str | None = None) -> int:
    """The CapEff mask of this process, from /proc/self/status (or the given text of one)."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise NotPermitted("cannot read this process's capabilities: /proc/self/status has no CapEff line")


def require_capabilities(*, netns: bool, status: str | None = None) -> None:
    """CAP_NET_ADMIN always; CAP_SYS_ADMIN too when a namespace is made (it is a mount plus setns)."""
    caps = effective_capabilities(status)
    if not caps >> CAP_NET_ADMIN & 1:
        raise NotPermitted("firelet net needs CAP_NET_ADMIN to make links and addresses: run it as root (sudo)")
    if netns and not caps >> CAP_SYS_ADMIN & 1:
        raise NotPermitted("making a network namespace needs CAP_SYS_ADMIN: run firelet net as root (sudo)")


def require_tun(device: Path = TUN_DEVICE) -> None:
    """/dev/net/tun, loading the tun module first if it is missing and modprobe is there."""
    if device.exists():
        return
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "-q", "tun"], capture_output=True, check=False)
    if not device.exists():
        raise MissingKernelSupport(
            f"{device} is missing and the tun module would not load: "
            "load it (modprobe tun) or use a kernel with CONFIG_TUN")


def require_nft() -> str:
    """The path of ``nft``, once it has shown that the kernel has nftables."""
    nft = shutil.which("nft")
    if nft is None:
        raise MissingKernelSupport("NAT needs the nft program: install the nftables package (apt-get install nftables)")
    probe = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise MissingKernelSupport(
            f"nftables does not work here ({reason}): load nf_tables and nft_masq (modprobe) or drop --nat-out")
    return nft
