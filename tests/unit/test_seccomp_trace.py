"""scripts/seccomp-trace reads strace's output right: thread marks, kinds, pinned argument values."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "seccomp-trace"


def load_script():
    loader = importlib.machinery.SourceFileLoader("seccomp_trace", str(SCRIPT))
    spec = importlib.util.spec_from_loader("seccomp_trace", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


TRACE = """\
100 openat(-100 /* AT_FDCWD */, "/usr/lib/python3.11/os.py", 0x80000 /* O_RDONLY|O_CLOEXEC */) = 3
100 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/main", 0x7ffd, 0) = -1 ENOENT (No such file or directory)
101 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/fl-vcpu0", 0x7f15, 0) = -1 ENOENT (No such file or directory)
101 ioctl(12, 0xae80 /* KVM_RUN */, 0 <unfinished ...>
100 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/confine/main",  <unfinished ...>
101 <... ioctl resumed>)                  = 0
100 <... newfstatat resumed>0x7ffd, 0)   = -1 ENOENT (No such file or directory)
100 futex(0x7f1, 0x189 /* FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME */, 0, NULL, 0xffffffff) = 0
102 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/fl-events", 0x7f, 0) = -1 ENOENT (No such file)
102 ioctl(9, 0xae41 /* KVM_CREATE_VCPU */, 0) = 12
102 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/confine/vmm", 0x7f, 0) = -1 ENOENT (No such file)
102 mmap(NULL, 8392704, 0 /* PROT_NONE */, 0x20022 /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK */, -1, 0) = 0x7f
102 fcntl(5, 0x3 /* F_GETFL */) = 0x2 (flags O_RDWR)
103 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/fc_api", 0x7f, 0) = -1 ENOENT (No such file)
103 socket(0x1 /* AF_UNIX */, 0x80801 /* SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK */, 0) = 7
103 openat(-100 /* AT_FDCWD */, "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so", 0x80000) = 8
103 clone3({flags=0x3d0f00 /* CLONE_VM|CLONE_THREAD */, child_tid=0x7f}, 88 <unfinished ...>
105 set_robust_list(0x7f9c, 24) = 0
103 <... clone3 resumed> => {parent_tid=[105]}, 88) = 105
105 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/fc_metrics", 0x7f, 0) = -1 ENOENT (No such file)
105 write(9, "{}\n", 3) = 3
104 newfstatat(-100 /* AT_FDCWD */, "/firelet-seccomp-mark/thread/fl-helper", 0x7f, 0) = -1 ENOENT (No such file)
104 getpid() = 100
--- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_TKILL, si_pid=100, si_uid=0} ---
101 +++ exited with 0 +++
"""


def test_calls_count_from_each_threads_confinement_point_and_under_its_creators_filter(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.write_text(TRACE)
    result = load_script().parse(trace)
    calls = {kind: sorted(names) for kind, names in result["calls"].items()}
    # The metrics thread, started by the confined API thread, runs under the API's filter too.
    assert calls == {"main": ["futex"], "vcpu": ["ioctl"], "vmm": ["fcntl", "mmap"], "metrics": ["write"],
                     "api": ["clone3", "openat", "set_robust_list", "socket", "write"], "unknown:fl-helper": ["getpid"]}
    assert result["values"]["vcpu"] == {"ioctl": {str(0xAE80): "KVM_RUN"}}
    assert result["values"]["vmm"] == {"mmap": {"0": "PROT_NONE"}, "fcntl": {"3": "F_GETFL"}}
    assert result["values"]["api"] == {"socket": {"1": "AF_UNIX"}}
    assert result["late_imports"] == {"api": ["/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"]}


def test_argument_splitting_respects_nesting_and_strings() -> None:
    script = load_script()
    assert script.split_args('3, {a=1, b="x,y"}, [1, 2], "q\\"r,s")') == ["3", '{a=1, b="x,y"}', "[1, 2]", '"q\\"r,s"']
    assert script.number("0x4010ae67 /* KVM_REGISTER_COALESCED_MMIO */") == (0x4010AE67, "KVM_REGISTER_COALESCED_MMIO")
    assert script.number("-100 /* AT_FDCWD */") == (0xFFFFFF9C, "AT_FDCWD")
    assert script.number("NULL") == (0, "0")
