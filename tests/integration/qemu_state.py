"""A stuck QEMU guest's vCPU registers, through QMP: the yardstick's side of a stuck guest's report.

firelet reports its own vCPUs (``Vmm.describe_vcpus``); for QEMU the tests ask its
monitor (``info registers -a``) and judge the state with the same rule, so a QEMU
guest the rig corrupted ends the session as a rig failure too (conftest,
``exit_if_the_rig_corrupted_a_vcpu``).
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass

from firelet.vstate.vcpu import IMPOSSIBLE_STATE, impossible_page_table_root

_REGISTER = re.compile(r"\b(RIP|RSP|CR0|CR3)=([0-9a-fA-F]+)")


@dataclass(frozen=True)
class LowRam:
    """Guest RAM as one range from 0 (QEMU microvm below 3 GiB): what the cr3 check needs."""

    size: int

    def check_range(self, addr: int, length: int, /) -> bool:
        return addr >= 0 and length >= 0 and addr + length <= self.size


def parse_info_registers(text: str) -> list[dict[str, int]]:
    """Each CPU's RIP, RSP, CR0 and CR3 from HMP's ``info registers -a`` (blocks start ``CPU#N``)."""
    blocks = re.split(r"^CPU#\d+\s*$", text, flags=re.MULTILINE)
    cpus = []
    for block in blocks:
        found = {name: int(value, 16) for name, value in _REGISTER.findall(block)}
        if "RIP" in found and "CR3" in found:
            cpus.append(found)
    return cpus


def describe(cpus: list[dict[str, int]], ram: LowRam) -> list[str]:
    """Lines like firelet's ``describe_vcpus``: ``vCPU N: rip=...``, impossible states called out."""
    lines = []
    for index, regs in enumerate(cpus):
        line = f"vCPU {index}: rip={regs['RIP']:#x} rsp={regs.get('RSP', 0):#x} cr3={regs['CR3']:#x}"
        if impossible_page_table_root(regs.get("CR0", 0), regs["CR3"], ram):
            line += f" ({IMPOSSIBLE_STATE}: cr3 is outside guest RAM)"
        lines.append(line)
    return lines


def query_registers(qmp_path: str, timeout: float = 20.0) -> str:
    """``info registers -a`` from the QEMU whose QMP socket is ``qmp_path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(qmp_path)
        lines = sock.makefile("rb")

        def call(command: str, **arguments: object) -> object:
            message = {"execute": command, **({"arguments": arguments} if arguments else {})}
            sock.sendall(json.dumps(message).encode() + b"\n")
            while True:  # events may come first
                line = lines.readline()
                if not line:
                    raise ConnectionError("QMP closed the connection")
                reply = json.loads(line)
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise RuntimeError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

        lines.readline()  # the greeting
        call("qmp_capabilities")
        return str(call("human-monitor-command", **{"command-line": "info registers -a"}))


def describe_qemu_vcpus(qmp_path: str, mem_mib: int) -> str:
    """The report for a stuck QEMU guest; never raises (a diagnostic)."""
    try:
        cpus = parse_info_registers(query_registers(qmp_path))
    except (OSError, ValueError, RuntimeError) as exc:
        return f"vCPU state unavailable ({exc})"
    return "\n".join(describe(cpus, LowRam(mem_mib << 20))) or "vCPU state unavailable (no registers in the reply)"
