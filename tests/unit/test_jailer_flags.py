"""firelet-jailer's command line: Firecracker's jailer flags, their defaults and their refusals."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.errors import UsageError
from firelet.jailer import flags

BASE = ["--id", "vm-1", "--exec-file", "/usr/bin/firelet-vmm", "--uid", "123", "--gid", "100"]
ID_CHARS = string.ascii_letters + string.digits + "-"


def test_firecrackers_example_command_line_parses() -> None:
    # jailer.md, "Example Run": the same flags, with firelet's program names
    args = flags.parse(["--id", "551e7604-e35c-42b3-b825-416853441234", "--cgroup", "cpuset.mems=0",
                        "--cgroup", "cpuset.cpus=0-1", "--exec-file", "/usr/bin/firelet-vmm", "--uid", "123",
                        "--gid", "100", "--netns", "/var/run/netns/my_netns", "--daemonize"])
    assert args.id == "551e7604-e35c-42b3-b825-416853441234"
    assert args.cgroups == (("cpuset.mems", "0"), ("cpuset.cpus", "0-1"))
    assert (args.uid, args.gid, args.netns, args.daemonize) == (123, 100, "/var/run/netns/my_netns", True)
    assert args.exec_name == "firelet-vmm"


def test_defaults_are_firecrackers() -> None:
    args = flags.parse(BASE)
    assert args.chroot_base_dir == "/srv/jailer"
    assert args.cgroup_version == 1
    assert args.parent_cgroup_path == "firelet-vmm"  # the exec file's name
    assert not args.new_pid_ns and not args.daemonize and args.netns is None
    assert args.resource_limits == {} and args.vmm_args == ()


def test_everything_after_double_dash_goes_to_the_vmm() -> None:
    args = flags.parse([*BASE, "--new-pid-ns", "--", "--api-sock", "/run/api.sock", "--id", "ignored", "--"])
    assert args.new_pid_ns
    assert args.vmm_args == ("--api-sock", "/run/api.sock", "--id", "ignored", "--")


def test_equals_spelling_and_repeated_flags() -> None:
    args = flags.parse([*BASE, "--cgroup-version=2", "--cgroup=memory.max=256M", "--cgroup", "pids.max=64",
                        "--resource-limit", "fsize=1000", "--resource-limit", "no-file=512",
                        "--parent-cgroup", "/all_uvms/external/", "--chroot-base-dir=/tmp/j"])
    assert args.cgroup_version == 2
    assert args.cgroups == (("memory.max", "256M"), ("pids.max", "64"))
    assert args.resource_limits == {"fsize": 1000, "no-file": 512}
    assert args.parent_cgroup_path == "all_uvms/external"
    assert args.chroot_base_dir == "/tmp/j"


@pytest.mark.parametrize(("argv", "message"), [
    ([*BASE, "--bogus"], "unrecognized arguments: --bogus"),
    (BASE[2:], "the following arguments are required: --id"),
    ([*BASE, "--cgroup-version", "3"], "--cgroup-version: invalid choice: '3'"),
    ([*BASE, "--uid", "-1"], "argument --uid: expected a number from 0 to 4294967294, got '-1'"),
    ([*BASE, "--gid", "root"], "argument --gid: expected a number"),
    ([*BASE, "--cgroup", "memory.max"], "expected <controller>.<file>=<value>"),
    ([*BASE, "--cgroup", "max=1"], "expected <controller>.<file>=<value>"),
    ([*BASE, "--cgroup", "../memory.max=1"], "expected <controller>.<file>=<value>"),
    ([*BASE, "--resource-limit", "cpu=1"], "expected fsize=BYTES or no-file=N"),
    ([*BASE, "--resource-limit", "fsize=-1"], "non-negative integer"),
    ([*BASE, "--parent-cgroup", "a/../../etc"], "without '.' or '..'"),
    ([*BASE, "--id", "a_b"], "use 1 to 64 letters, digits or '-'"),
    ([*BASE, "--daem"], "unrecognized arguments: --daem"),  # no abbreviations: Firecracker has none
])
def test_bad_flags_are_one_line_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        flags.parse(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


@given(st.text(alphabet=ID_CHARS, min_size=1, max_size=64))
def test_every_id_of_letters_digits_and_dashes_up_to_64_is_accepted(vm_id: str) -> None:
    assert flags.parse([f"--id={vm_id}", *BASE[2:]]).id == vm_id  # "=": an id may begin with "-"


@given(st.text(min_size=0, max_size=80).filter(lambda s: not (0 < len(s) <= 64 and all(c in ID_CHARS for c in s))))
def test_any_other_id_is_refused(vm_id: str) -> None:
    # the id names directories and cgroups: '/', '.', NUL, spaces or newlines must never get through
    with pytest.raises(UsageError, match="--id"):
        flags.check_id(vm_id)


@given(st.text(alphabet=ID_CHARS, min_size=65, max_size=100))
def test_ids_longer_than_64_are_refused(vm_id: str) -> None:
    with pytest.raises(UsageError, match="1 to 64"):
        flags.check_id(vm_id)


def test_help_and_version_answer_without_a_jail() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import firelet

    env = dict(os.environ, PYTHONPATH=str(Path(firelet.__file__).resolve().parent.parent))
    version = subprocess.run([sys.executable, "-m", "firelet.jailer", "--version"], capture_output=True, text=True,
                             env=env)
    assert (version.returncode, version.stdout.strip()) == (0, f"firelet-jailer v{firelet.__version__}")
    usage = subprocess.run([sys.executable, "-m", "firelet.jailer", "--help"], capture_output=True, text=True, env=env)
    assert usage.returncode == 0
    for flag in ("--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir", "--netns", "--daemonize",
                 "--new-pid-ns", "--cgroup-version", "--cgroup", "--parent-cgroup", "--resource-limit"):
        assert flag in usage.stdout
