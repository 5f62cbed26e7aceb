"""A firelet-vmm process with one way in for a test: run as a script, it is the VMM itself.

    python seccomp_escape.py vcpu ATTEMPTS -- VMM-FLAGS...   (a guest MMIO write runs ATTEMPTS on its vCPU)
    python seccomp_escape.py api ATTEMPTS -- VMM-FLAGS...    (PUT /escape runs ATTEMPTS on the API thread)

ATTEMPTS is a comma-separated list of names from :data:`ATTEMPTS` (``none``: no attempt). The VMM is confined by its
own code path (``firelet.cli.vmm.console``, exactly what the ``firelet-vmm`` command runs); the
script only adds a device kind through the builder's registry and a route through a resource's
route table, the two places firelet's own devices and endpoints are added. Each attempt prints
``survived NAME on THREAD: OUTCOME`` when the process lives through it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable

from firelet.api.resources import instance
from firelet.api.routing import no_content
from firelet.builder.registry import DEVICE_KINDS
from firelet.builder.spec import BuildInputs, DeviceSpec, Wiring
from firelet.vstate.device_registry import BusKind, Slot

#: Where the escape device sits: inside the boot page tables' 1 GiB identity map, above guest RAM.
ESCAPE_ADDR = 0x30000000
GUEST_ENTRY = 0x1000000
#: The guest: one MMIO write to the escape device, then a reset through the i8042 (ends the VMM).
GUEST_CODE = bytes.fromhex(
    "b801000000"  # mov eax, 1
    "89042500000030"  # mov [0x30000000], eax  ; an MMIO exit, served on this vCPU's thread
    "b0fe"  # mov al, 0xfe
    "e664"  # out 0x64, al                  ; i8042: pulse the CPU reset line
    "f4"  # hlt
    "ebfd"  # jmp hlt
)
_SYS_PTRACE = 101  # asm/unistd_64.h
_PTRACE_PEEKUSER = 3  # linux/ptrace.h
_TIOCGWINSZ = 0x5413  # asm-generic/ioctls.h: a terminal ioctl, neither KVM's nor TUN's
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
# Made now, unconfined: each attempt below must make exactly the one forbidden call.
_PARENT = os.getppid()
_PIPE_READ, _PIPE_WRITE = os.pipe()


def _execve() -> str:
    os.execv("/nonexistent/firelet-escape", ["firelet-escape"])
    return "returned"


def _ptrace() -> str:
    result = _syscall(_SYS_PTRACE, _PTRACE_PEEKUSER, _PARENT, 0, 0)
    return f"ptrace returned {result}, errno {ctypes.get_errno()}"


def _socket_inet() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.detach()  # no close(2): some kinds may not close fds
    return "socket made"


def _ioctl() -> str:
    fcntl.ioctl(_PIPE_READ, _TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    return "ioctl answered"


ATTEMPTS: dict[str, Callable[[], str]] = {"execve": _execve, "ptrace": _ptrace, "socket": _socket_inet,
                                          "ioctl": _ioctl}


def attempt(names: list[str]) -> None:
    for name in names:
        try:
            outcome = ATTEMPTS[name]()
        except OSError as exc:
            outcome = f"{type(exc).__name__} errno {exc.errno}"
        print(f"survived {name} on {threading.current_thread().name}: {outcome}", flush=True)


class EscapeDevice:
    """An MMIO device whose write handler, on the guest's vCPU thread, runs the attempts."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        from firelet import seccomp  # loaded long ago: no import happens here

        print(f"guest wrote on {threading.current_thread().name}: confined as {seccomp.confined_kind()}, "
              f"unconfined threads {seccomp.unconfined_threads()}", flush=True)
        attempt(self.names)


def main(argv: list[str]) -> int:
    where, names = argv[0], [n for n in argv[1].split(",") if n != "none"]
    vmm_flags = argv[argv.index("--") + 1:]
    if where == "vcpu":
        def plan(inputs: BuildInputs) -> list[tuple[str, list[str]]]:
            return [("escape", names)]

        def make(config: list[str], wiring: Wiring) -> EscapeDevice:
            return EscapeDevice(config)

        DEVICE_KINDS.register(DeviceSpec(kind="escape", plan=plan, make=make,
                                         placement=Slot(BusKind.MMIO, ((ESCAPE_ADDR, 0x1000),))))
    else:
        @instance.routes.route("PUT", "/escape", "instance_info")
        def put_escape(api: object, req: object, ident: str) -> object:
            attempt(names)
            return no_content()

    from firelet.cli.vmm import console

    sys.argv = ["firelet-vmm", *vmm_flags]
    return console()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
