"""The VMM as a process: SIGTERM stops it cleanly, an interactive console carries keystrokes."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
from pathlib import Path

from conftest import BOOT_TIMEOUT_S, await_console, read_file_in_image, read_until


def test_sigterm_stops_the_vm_cleanly_and_keeps_written_data(kernel, rootfs: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "firelet", "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs),
         "--cmd", "echo kept > /root/kept; sync; echo guest-is-up; sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        await_console(proc, b"guest-is-up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # stopped by the host: a clean end
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_file_in_image(rootfs, "/root/kept").strip() == "kept"


def test_interactive_console_carries_keystrokes_to_the_guest(kernel, rootfs: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "firelet", "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs), "--ro",
         "--cmd", "echo type-something; read line; echo got-$line"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        # As in a terminal: a new session whose controlling tty is the pty, us its foreground job.
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    try:
        read_until(master, b"type-something", BOOT_TIMEOUT_S)
        os.write(master, b"hello-guest\r")
        out = read_until(master, b"got-hello-guest", 60)
        assert b"got-hello-guest" in out
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_sigusr2_reports_thread_stacks_and_vcpu_registers_and_the_guest_runs_on(kernel, rootfs: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "firelet", "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs), "--ro",
         "--cmd", "echo guest-is-up; sleep 5; echo still-running"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        await_console(proc, b"guest-is-up")
        proc.send_signal(signal.SIGUSR2)
        report = read_until(proc.stderr.fileno(), b"firelet: vCPU 0: rip=", 60)
        assert b"most recent call first" in report  # every thread's stack came first
        read_until(proc.stdout.fileno(), b"still-running", 60)  # paused for the report, then resumed
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    line = next(x for x in report.decode().splitlines() if x.startswith("firelet: vCPU 0: rip="))
    assert "cr3=" in line and "not the guest's state" not in line


def test_timeout_stops_the_vm_and_says_where_each_vcpu_was(kernel, rootfs: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "firelet", "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs), "--ro",
         "--cmd", "sleep 600", "--timeout", "30", "--console", "none"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=BOOT_TIMEOUT_S,
    )
    assert result.returncode == 124, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line for people
    assert "timed out: no end within 30 s (vCPU 0: rip=" in result.stderr
    assert "not the guest's state" not in result.stderr
