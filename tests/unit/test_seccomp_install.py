"""Real filters on real threads: each test confines a child Python process (never this one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from firelet.errors import UsageError
from firelet.seccomp import SeccompError, filter_for, resolve_policy

ROOT = Path(__file__).resolve().parents[2]


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=60)


PREAMBLE = """
    import os, threading
    from firelet.seccomp import install
    from firelet.seccomp.policy import parse_policy
"""


def test_a_denied_call_kills_the_process_with_sigsys() -> None:
    child = run_child(PREAMBLE + """
    policy = parse_policy({"t": {"default_action": "allow", "filter_action": "kill_process",
                                 "filter": [{"syscall": "getcwd"}]}})
    install("t", policy)
    print("installed", flush=True)
    os.getcwd()
    print("survived", flush=True)
    """)
    assert child.returncode == -signal.SIGSYS, child.stderr
    assert child.stdout == "installed\n"


def test_an_errno_action_fails_the_call_and_the_process_goes_on() -> None:
    child = run_child(PREAMBLE + """
    policy = parse_policy({"t": {"default_action": "allow", "filter_action": {"errno": 13},
                                 "filter": [{"syscall": "getcwd"}]}})
    install("t", policy)
    try:
        os.getcwd()
    except PermissionError as exc:
        print("errno", exc.errno)
    """)
    assert (child.returncode, child.stdout) == (0, "errno 13\n"), child.stderr


def test_argument_conditions_decide() -> None:
    # socket(AF_UNIX) allowed, socket(AF_INET) kills: the argument check the VMM's policy relies on.
    child = run_child(PREAMBLE + """
    import socket
    policy = parse_policy({"t": {"default_action": "allow", "filter_action": "kill_process",
                                 "filter": [{"syscall": "socket", "args": [
                                     {"index": 0, "type": "dword", "op": "ne", "val": 1, "comment": "AF_UNIX"}]}]}})
    install("t", policy)
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    print("unix ok", flush=True)
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print("inet ok", flush=True)
    """)
    assert (child.returncode, child.stdout) == (-signal.SIGSYS, "unix ok\n"), child.stderr


def test_a_thread_filter_binds_that_thread_only() -> None:
    child = run_child(PREAMBLE + """
    policy = parse_policy({"t": {"default_action": "allow", "filter_action": {"errno": 1},
                                 "filter": [{"syscall": "getcwd"}]}})
    def confined():
        install("t", policy)
        try:
            os.getcwd()
            print("thread: allowed")
        except PermissionError:
            print("thread: denied")
        with open("/proc/thread-self/status") as f:
            print("thread:", [l.split()[1] for l in f if l.startswith("Seccomp:")][0])
    t = threading.Thread(target=confined)
    t.start(); t.join()
    os.getcwd()
    print("main: allowed")
    with open("/proc/thread-self/status") as f:
        print("main:", [l.split()[1] for l in f if l.startswith("Seccomp:")][0])
    """)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["thread: denied", "thread: 2", "main: allowed", "main: 0"]


def test_installing_sets_no_new_privs() -> None:
    child = run_child(PREAMBLE + """
    policy = parse_policy({"t": {"default_action": "allow", "filter_action": "allow", "filter": []}})
    install("t", policy)
    with open("/proc/thread-self/status") as f:
        print([l.split()[1] for l in f if l.startswith("NoNewPrivs:")][0])
    """)
    assert (child.returncode, child.stdout) == (0, "1\n"), child.stderr


def test_resolve_policy_from_the_flags(tmp_path: Path) -> None:
    assert resolve_policy(True, None) is None
    assert {"vmm", "api", "vcpu"} <= set(resolve_policy(False, None) or {})
    with pytest.raises(UsageError, match="contradict"):
        resolve_policy(True, "x.json")
    custom = tmp_path / "custom.json"
    flt = {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "read"}]}
    custom.write_text(json.dumps({"vmm": flt, "api": flt, "vcpu": flt}))
    policy = resolve_policy(False, str(custom))
    assert policy is not None and set(policy) == {"vmm", "api", "vcpu"}
    assert filter_for("metrics", policy) is policy["vmm"]  # firelet's other threads take the VMM's filter
    with pytest.raises(SeccompError, match="no filter for thread kind 'gpu'; it defines api, vcpu, vmm"):
        filter_for("gpu", policy)
    custom.write_text(json.dumps({"vmm": flt}))
    with pytest.raises(SeccompError, match="no filter for thread kind"):
        resolve_policy(False, str(custom))
    compiled = tmp_path / "compiled.bpf"
    compiled.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")
    with pytest.raises(SeccompError, match=r"not JSON.*seccompiler's JSON"):
        resolve_policy(False, str(compiled))
    with pytest.raises(SeccompError, match="cannot read it"):
        resolve_policy(False, str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("flt", "message"), [
    ({"default_action": "allow", "filter_action": "alow", "filter": []}, 'unknown action "alow"'),
    ({"default_action": {"errno": -1}, "filter_action": "allow", "filter": []}, "unknown action"),
    ({"default_action": "allow", "filter_action": "allow", "filter": [{"syscall": "nosuch"}]}, "no system call named 'nosuch'"),
    ({"default_action": "allow", "filter_action": "allow",
      "filter": [{"syscall": "ioctl", "args": [{"index": 6, "type": "dword", "op": "eq", "val": 0}]}]}, "index must be"),
    ({"default_action": "allow", "filter_action": "allow",
      "filter": [{"syscall": "ioctl", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 1 << 32}]}]}, "fits in 32 bits"),
    ({"default_action": "allow", "filter_action": "allow",
      "filter": [{"syscall": "ioctl", "args": [{"index": 1, "type": "word", "op": "eq", "val": 1}]}]}, 'type must be "dword"'),
    ({"default_action": "allow", "filter_action": "allow",
      "filter": [{"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": "masked_eq", "val": 1}]}]}, "op must be"),
    ({"default_action": "allow", "filter": []}, "missing 'filter_action'"),
])
def test_bad_policies_are_refused_in_one_line(tmp_path: Path, flt: dict, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"vmm": flt, "api": flt, "vcpu": flt}))
    with pytest.raises(SeccompError, match=message) as info:
        resolve_policy(False, str(path))
    assert "\n" not in str(info.value)


ESCAPES = {
    "nothing": "pass",  # the control: the confined thread lives, writes and ends
    "execve": "os.execv('/bin/true', ['true'])",
    "ptrace": "ptrace(16, os.getppid(), None, None)",  # PTRACE_ATTACH to the test runner
    "socket(AF_INET)": "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "ioctl(FIONREAD)": "fcntl.ioctl(r, 0x541B, bytearray(4))",  # not in any thread's list
}


@pytest.mark.parametrize("kind", ["vmm", "api", "vcpu"])
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_firelets_policy_kills_escape_attempts_from_each_thread_kind(kind: str, escape: str) -> None:
    # The thread confines itself with firelet's own filter for its kind, then tries the escape.
    child = run_child(f"""
    import ctypes, fcntl, os, socket, threading
    from firelet.seccomp import install
    libc = ctypes.CDLL(None, use_errno=True)
    ptrace = libc.ptrace
    r, w = os.pipe()
    def thread():
        install({kind!r})
        {ESCAPES[escape]}
        os.write(w, b"survived")
    t = threading.Thread(target=thread)
    t.start(); t.join()
    print(os.read(r, 100).decode())
    """)
    if escape == "nothing":
        assert (child.returncode, child.stdout) == (0, "survived\n"), child.stderr
    else:
        assert child.returncode == -signal.SIGSYS, (child.stdout, child.stderr)


def test_install_stays_the_function_after_use() -> None:
    # A submodule named like the function would replace it on the package at its first import.
    import firelet.seccomp
    from firelet.seccomp import attach  # noqa: F401 - importing it must not shadow install()

    assert callable(firelet.seccomp.install)
