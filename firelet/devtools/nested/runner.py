"""Running one command in the rig: boot the outer QEMU, stream its console, return the status.

A run never hangs and never leaves QEMU behind: a deadline kills it (exit
124), QEMU ending without the exit marker is an error with the console's last
lines (exit 125), and Ctrl-C or any exception kills it before returning.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from firelet.devtools.nested import outer
from firelet.devtools.nested.init_script import RunSpec, Share, command_script, init_script, rig_environment
from firelet.devtools.nested.qemu import QBOOT, kernel_cmdline, outer_qemu_argv
from firelet.devtools.nested.serial import RigOutput
from firelet.errors import FireletError, UsageError

EXIT_TIMEOUT = 124
EXIT_RIG_FAILED = 125
# A Unix socket path for the outer QEMU's monitor (debugging a stuck rig: info cpus, info registers).
MONITOR_ENV = "FIRELET_RIG_MONITOR"
# After the exit marker (written after a sync), how long QEMU may take to power off.
_POWEROFF_GRACE = 3.0

log = logging.getLogger(__name__)


class RigTimeout(FireletError):
    """The command did not finish within --timeout."""

    exit_code = EXIT_TIMEOUT


class RigFailed(FireletError):
    """The outer Linux or QEMU stopped without reporting the command's status."""

    exit_code = EXIT_RIG_FAILED


class RigHung(RigFailed):
    """The outer Linux stopped running its own processes (its heartbeat stopped)."""


#: No heartbeat for this long (after the first one) means the outer kernel hung: seen now and
#: then under QEMU's emulated CPU (soft lockups on both CPUs), never caused by the command.
HEARTBEAT_TIMEOUT_S = 90.0


def _binary_out(stream: TextIO | BinaryIO) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else cast(BinaryIO, stream)  # a stream without .buffer is binary


def _check_dir(path: Path, what: str) -> str:
    resolved = path.expanduser().resolve()
    if not resolved.is_dir():
        raise UsageError(f"{what} {path} is not a directory; pass an existing directory")
    return str(resolved)


#: Host directories the rig mounts a fresh tmpfs over: the host's files there are not visible inside.
_TMPFS_INSIDE = ("/tmp", "/run", "/dev/shm")


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _hidden_inside(path: str) -> bool:
    return any(_is_within(path, top) for top in _TMPFS_INSIDE)


def compile_firelet_bytecode() -> None:
    """Write firelet's own ``.pyc`` files here, where the checkout is writable.

    The rig sees this machine's root read-only, so Python inside can never cache
    bytecode: without this, every firelet start in the rig would compile each module
    changed since the last install (an editable install compiles none) from source,
    which under the emulated CPU costs a good part of a second.
    """
    import compileall

    package = Path(__file__).resolve().parents[2]
    try:
        compileall.compile_dir(str(package), quiet=2)
    except OSError:  # a read-only install: its bytecode came with it
        log.debug("could not compile %s", package, exc_info=True)


def run_in_rig(argv: list[str], *, timeout: float, shares: list[Path] | tuple[Path, ...] = (),
               mem_mib: int = 4096, smp: int = 2, cwd: Path | str | None = None,
               stdout: TextIO | BinaryIO | None = None, interactive: bool = False,
               verbose: bool = False, env: dict[str, str] | None = None) -> int:
    """Run ``argv`` inside the rig's outer Linux (with a real ``/dev/kvm``) and return its status."""
    if not argv:
        raise UsageError("no command given: firelet nested -- CMD [ARGS...]")
    if timeout <= 0 or mem_mib < 256 or smp < 1:
        raise UsageError("--timeout must be > 0, --mem at least 256 MiB and --smp at least 1")
    out = _binary_out(stdout if stdout is not None else sys.stdout)
    work_dir = _check_dir(Path(cwd or os.getcwd()), "--cwd")
    share_paths = [_check_dir(Path(p), "--share") for p in shares]
    if _hidden_inside(work_dir) and not any(_is_within(work_dir, p) for p in share_paths):
        share_paths.append(work_dir)  # e.g. a checkout under /tmp, which is a fresh tmpfs inside
    share_list = [Share(f"share{i}", p) for i, p in enumerate(share_paths)]
    spec = RunSpec(
        argv=list(argv), cwd=work_dir,
        env=rig_environment(dict(os.environ if env is None else env)),
        nonce=secrets.token_hex(8), shares=share_list, verbose=verbose,
        tty_size=_tty_size() if interactive else None, heartbeat=True,
    )
    base = outer.prepare_base()
    spec = RunSpec(**{**spec.__dict__, "modules": outer.module_paths_inside(base.kernel)})
    compile_firelet_bytecode()
    with tempfile.TemporaryDirectory(prefix="firelet-rig-") as tmp:
        initrd = outer.write_run_initrd(base, init_script(spec), command_script(spec), Path(tmp))
        pvh = base.kernel.vmlinux is not None and QBOOT.exists()
        qemu_argv = outer_qemu_argv(kernel=base.kernel.boot_image if pvh else base.kernel.vmlinuz,
                                    initrd=initrd, cmdline=kernel_cmdline(verbose=verbose),
                                    mem_mib=mem_mib, smp=smp, shares=share_list,
                                    bios=QBOOT if pvh else None,
                                    monitor=os.environ.get(MONITOR_ENV),
                                    heartbeat=str(Path(tmp) / "heartbeat"))
        # QEMU keeps OPOST|ONLCR on a raw stdio terminal, so \r\n -> \n is right in both modes.
        filt = RigOutput(spec.nonce, show_boot=verbose, strip_cr=True)
        return _supervise(qemu_argv, filt, out, timeout=timeout, interactive=interactive,
                          heartbeat=Path(tmp) / "heartbeat")


def _supervise(qemu_argv: list[str], filt: RigOutput, out: BinaryIO, *, timeout: float,
               interactive: bool, heartbeat: Path | None = None) -> int:
    """Start QEMU, pump its console through ``filt`` into ``out`` until it ends or the deadline."""
    saved_tty = _save_tty() if interactive else None
    try:
        proc = subprocess.Popen(
            qemu_argv, stdin=None if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # Non-interactive QEMU gets its own session so a terminal's Ctrl-C reaches only us.
            start_new_session=not interactive,
        )
    except FileNotFoundError:
        raise FireletError(f"{qemu_argv[0]} is not installed: apt-get install qemu-system-x86") from None
    errors = bytearray()
    try:
        _pump(proc, filt, out, errors, deadline=time.monotonic() + timeout, heartbeat=heartbeat)
    except _Deadline:
        _kill(proc)
        _restore_tty(saved_tty)
        raise RigTimeout(f"the command did not finish within {timeout:g} s; QEMU was killed "
                         "(raise --timeout if it needs longer)") from None
    except _Hung:
        _kill(proc)
        _restore_tty(saved_tty)
        out.write(filt.finish())
        out.flush()
        raise RigHung(f"the rig stopped responding: its kernel sent no heartbeat for "
                      f"{HEARTBEAT_TIMEOUT_S:g} s (the emulated machine hung, not the command); "
                      "QEMU was killed, run it again") from None
    finally:
        _kill(proc)
        _restore_tty(saved_tty)
    out.write(filt.finish())
    out.flush()
    if filt.status is not None:
        return filt.status
    where = "while the command ran" if filt.started else "before the command started"
    _print_tail(filt, errors)
    raise RigFailed(f"the rig's QEMU exited (status {proc.returncode}) {where} without reporting "
                    "a status; see the console lines above (-v shows the outer boot log)")


class _Deadline(Exception):
    pass


class _Hung(Exception):
    pass


class _Heartbeat:
    """Watches the file QEMU writes the rig's ttyS1 to: it must keep growing once it has begun."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.size = 0
        self.last_change: float | None = None

    def check(self, now: float) -> None:
        if self.path is None:
            return
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size != self.size:
            self.size, self.last_change = size, now
        elif self.last_change is not None and now - self.last_change > HEARTBEAT_TIMEOUT_S:
            raise _Hung()


def _pump(proc: subprocess.Popen[bytes], filt: RigOutput, out: BinaryIO, errors: bytearray,
          *, deadline: float, heartbeat: Path | None = None) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    open_streams = 2
    marker_at: float | None = None
    t0 = time.monotonic()
    started_at: float | None = None
    beat = _Heartbeat(heartbeat)
    while open_streams:
        now = time.monotonic()
        if now >= deadline:
            raise _Deadline()
        beat.check(now)
        if marker_at is not None and now - marker_at > _POWEROFF_GRACE:
            return  # status known and flushed to disk; no need to wait for the power-off
        for key, _ in sel.select(timeout=min(0.5, deadline - now)):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
            elif key.data == "err":
                errors += data
                del errors[:-8192]
            else:
                shown = filt.feed(data)
                if shown:
                    out.write(shown)
                    out.flush()
                if filt.started and started_at is None:
                    started_at = time.monotonic()
                    log.info("rig: command started %.2f s after QEMU", started_at - t0)
                if filt.status is not None and marker_at is None:
                    marker_at = time.monotonic()
                    log.info("rig: command ended %.2f s after QEMU", marker_at - t0)
    proc.wait()
    log.info("rig: QEMU exited %.2f s after it started", time.monotonic() - t0)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _tty_size() -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return size.lines, size.columns


def _save_tty() -> list[Any] | None:
    try:
        return termios.tcgetattr(sys.stdin.fileno())
    except (termios.error, ValueError, OSError):
        return None


def _restore_tty(saved: list[Any] | None) -> None:
    if saved is not None:
        try:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        except (termios.error, ValueError, OSError):
            pass


def _print_tail(filt: RigOutput, errors: bytearray) -> None:
    lines = filt.tail_lines(15)
    err = bytes(errors).decode("utf-8", "replace").strip().splitlines()[-5:]
    if lines or err:
        print("firelet: last lines of the rig's console:", file=sys.stderr)
        for line in lines + [f"qemu: {e}" for e in err]:
            print(f"  | {line}", file=sys.stderr)
