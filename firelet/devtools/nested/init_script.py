"""The outer Linux's ``/init`` and the command script it runs, written per run.

``/init`` (busybox sh) loads the modules, mounts the host root read-only over
9p, builds a usable system inside it (proc, sys, dev, devpts, tmpfs on /tmp
/run /dev/shm, cgroup2), mounts the writable shares at their host paths and
``chroot``s there to run the command with the caller's environment and cwd.
The command's status comes back on the serial console as
``FIRELET-RIG-EXIT <nonce> <status>``; the nonce is fresh per run so that the
command's own output cannot forge it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

START_MARKER = "FIRELET-RIG-START"
#: How often the rig's init shows it is alive on its second serial port (ttyS1).
HEARTBEAT_PERIOD_S = 5
EXIT_MARKER = "FIRELET-RIG-EXIT"

HOST_ROOT_TAG = "hostroot"
# 9p over virtio: 512000 is the largest msize a 6.1 virtio transport accepts
# (128 ring entries of one page each, minus headers).
MSIZE = 512000
# The host root is read-only, so the page cache cannot go stale through our
# own writes; "loose" caching keeps metadata and data and halves Python's start.
ROOT_CACHE = "loose"
# Where the per-run command script sits inside the chroot (a tmpfs).
CMD_SCRIPT = "/run/firelet-rig/cmd.sh"

# The outer kernel rewrites its own code (static keys, with int3 breakpoints and IPIs) when
# KVM's first VM appears and when its last one goes: the preempt-notifier key that
# finish_task_switch() tests, the LAPIC keys, hardware enable on every CPU. Under QEMU's
# multi-threaded TCG that live patching sometimes leaves both outer CPUs stuck at the patched
# site in finish_task_switch (RCU stall, soft lockups: the rig hangs) - twice per guest boot,
# ~1-5% of boots. One VM with one vCPU held open for the rig's life keeps those keys on, so
# guests come and go without any patching. ioctl numbers from linux/kvm.h.
KVM_KEEPER = """\
import fcntl, os, signal, sys
KVM_CREATE_VM, KVM_CREATE_IRQCHIP, KVM_CREATE_VCPU = 0xAE01, 0xAE60, 0xAE41
try:
    kvm = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
    fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
except OSError as exc:
    sys.exit(f"firelet-rig: no KVM keeper VM ({exc.strerror}); guests may hang the rig")
if os.fork() == 0:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        signal.pause()
"""

# Variables that describe the caller's shell rather than what the command needs.
_ENV_SKIP = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "LINES", "COLUMNS"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Share:
    """A writable host directory exported as ``tag`` and mounted at the same path inside."""

    tag: str
    path: str


@dataclass(frozen=True)
class RunSpec:
    """What one rig run executes: the command, where, with what, and its nonce."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    nonce: str
    modules: list[str] = field(default_factory=list)  # paths inside the initramfs, load order
    shares: list[Share] = field(default_factory=list)
    root_cache: str = ROOT_CACHE
    verbose: bool = False
    tty_size: tuple[int, int] | None = None  # (rows, columns) of the caller's terminal
    heartbeat: bool = False  # write a byte to ttyS1 every HEARTBEAT_PERIOD_S (see runner)


def rig_environment(base: dict[str, str]) -> dict[str, str]:
    """The environment the command sees: the caller's, plus the rig's own flags."""
    env = {k: v for k, v in base.items() if k not in _ENV_SKIP and _ENV_NAME.match(k) and "\0" not in v}
    env["FIRELET_IN_RIG"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the root is read-only inside
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def command_script(spec: RunSpec) -> str:
    """The POSIX sh script run inside the chroot: environment, cwd, the command, its status."""
    lines = ["# firelet rig: the command of one run"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(spec.env.items())]
    if spec.tty_size is not None:
        rows, cols = spec.tty_size
        lines.append(f"stty rows {int(rows)} cols {int(cols)} 2>/dev/null")
    cwd = shlex.quote(spec.cwd)
    lines.append(f"cd {cwd} || {{ echo \"firelet nested: cannot enter {spec.cwd!s} inside the rig "
                 "(is it under /tmp? pass it with --share)\" >&2; exit 125; }")
    lines.append(" ".join(shlex.quote(a) for a in spec.argv))
    lines.append("status=$?")
    # This script leads the session on ttyS0: when it ends the kernel hangs the tty up and
    # throws away output the UART has not sent yet. Re-applying the settings waits for it
    # (stty sets them with TCSADRAIN); off a terminal both stty calls fail quietly.
    lines.append('stty "$(stty -g 2>/dev/null)" 2>/dev/null')
    lines.append("exit $status")
    return "\n".join(lines) + "\n"


def init_script(spec: RunSpec) -> str:
    """The busybox ``/init`` of one run."""
    q = shlex.quote
    opts = f"trans=virtio,version=9p2000.L,msize={MSIZE}"
    log = "" if spec.verbose else " >/dev/null 2>&1"
    s = [
        "#!/bin/busybox sh",
        "# firelet rig /init (generated per run)",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "fail() { echo \"firelet-rig: $*\"; sync; poweroff -f; sleep 5; }",
        "mount -t proc proc /proc",
        "mount -t sysfs sys /sys",
        "mount -t devtmpfs dev /dev",
        # A real tty (not /dev/console) so that the command can own it as its controlling tty.
        "exec </dev/ttyS0 >/dev/ttyS0 2>&1",
    ]
    s += [f"insmod {q(m)}{log} || echo \"firelet-rig: insmod {m} failed\"" for m in spec.modules]
    s += [
        "ip link set lo up",
        "hostname firelet-rig",
        "mkdir -p /host",
        f"mount -t 9p -o {opts},ro,cache={spec.root_cache} {HOST_ROOT_TAG} /host"
        " || fail 'cannot mount the host root over 9p'",
        "mount -t proc proc /host/proc",
        "mount -t sysfs sys /host/sys",
        "mount -t devtmpfs dev /host/dev",
        "mkdir -p /host/dev/pts /host/dev/shm",
        "mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts",
        "mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm",
        "mount -t tmpfs -o mode=1777 tmpfs /host/tmp",
        "mount -t tmpfs -o mode=755 tmpfs /host/run",
        "mount -t cgroup2 none /host/sys/fs/cgroup",
    ]
    for share in spec.shares:
        target = q("/host" + share.path)
        s.append(f"mkdir -p {target} && mount -t 9p -o {opts} {q(share.tag)} {target}"
                 f" || fail {q('cannot mount the share ' + share.path)}")
    s += [
        f"mkdir -p /host{CMD_SCRIPT.rsplit('/', 1)[0]}",
        f"cp /rig/cmd.sh /host{CMD_SCRIPT}",
        *([f"( while :; do echo > /dev/ttyS1; sleep {HEARTBEAT_PERIOD_S}; done ) </dev/null >/dev/null 2>&1 &"]
          if spec.heartbeat else []),
        f"chroot /host /usr/bin/python3 -c {q(KVM_KEEPER)} </dev/null",
        f"echo '{START_MARKER} {spec.nonce}'",
        # New session with the serial port as controlling tty; only the script's own environment.
        f"setsid -c env -i chroot /host /bin/sh {CMD_SCRIPT}",
        "status=$?",
        "sync",
        # The command's session hung up ttyS0 as it ended (its fds here are dead): reopen.
        f"echo \"{EXIT_MARKER} {spec.nonce} $status\" >/dev/ttyS0",
        "poweroff -f",
        "sleep 5",
    ]
    return "\n".join(s) + "\n"
