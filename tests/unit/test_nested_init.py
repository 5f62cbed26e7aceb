"""The rig's per-run /init and command script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from firelet.devtools.nested.init_script import (
    CMD_SCRIPT,
    EXIT_MARKER,
    START_MARKER,
    RunSpec,
    Share,
    command_script,
    init_script,
    rig_environment,
)

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _spec(**kw: object) -> RunSpec:
    base = dict(argv=["python3", "-c", "print('x y')"], cwd="/work/main", env={"PATH": "/usr/bin:/bin"},
                nonce="0123abcd", modules=["/lib/modules/kvm.ko", "/lib/modules/kvm-amd.ko"],
                shares=[Share("share0", "/tmp/out dir")])
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_init_mounts_chroots_and_reports_with_the_nonce() -> None:
    text = init_script(_spec())
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostroot /host" in text
    for target in ("/host/proc", "/host/sys", "/host/dev", "/host/dev/pts", "/host/tmp", "/host/run",
                   "/host/dev/shm", "/host/sys/fs/cgroup"):
        assert f" {target}\n" in text
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share0 '/host/tmp/out dir'" in text
    assert f"chroot /host /bin/sh {CMD_SCRIPT}" in text and "setsid -c" in text
    assert f"echo '{START_MARKER} 0123abcd'" in text
    assert f'{EXIT_MARKER} 0123abcd $status' in text
    assert text.index("insmod /lib/modules/kvm.ko") < text.index("insmod /lib/modules/kvm-amd.ko")
    # shares are mounted after the tmpfs on /tmp, or the tmpfs would hide them
    assert text.index("tmpfs /host/tmp") < text.index("share0")
    assert text.rstrip().endswith("sleep 5") and "poweroff -f" in text


def test_init_hides_insmod_noise_unless_verbose() -> None:
    assert ">/dev/null" in init_script(_spec())
    assert ">/dev/null" not in init_script(_spec(verbose=True))


@pytest.mark.parametrize("verbose,heartbeat", [(False, False), (True, False), (False, True)])
def test_busybox_sh_accepts_the_init(tmp_path: Path, verbose: bool, heartbeat: bool) -> None:
    path = tmp_path / "init"
    path.write_text(init_script(_spec(verbose=verbose, heartbeat=heartbeat)))
    proc = subprocess.run([BUSYBOX, "sh", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_command_script_runs_with_the_exact_env_cwd_and_args(tmp_path: Path) -> None:
    nasty = "a 'b' \"c\" $HOME `x` \\ \n end"
    spec = _spec(argv=["sh", "-c", 'printf "%s|%s|%s" "$NASTY" "$(pwd)" "$1"', "zero", nasty],
                 cwd=str(tmp_path), env={"NASTY": nasty, "PATH": "/usr/bin:/bin"})
    script = tmp_path / "cmd.sh"
    script.write_text(command_script(spec))
    out = subprocess.run(["env", "-i", "/bin/sh", str(script)], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{nasty}|{tmp_path}|{nasty}"


def test_command_script_fails_clearly_on_a_missing_cwd(tmp_path: Path) -> None:
    script = tmp_path / "cmd.sh"
    script.write_text(command_script(_spec(argv=["true"], cwd=str(tmp_path / "gone"))))
    out = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True)
    assert out.returncode == 125 and "--share" in out.stderr


def test_rig_environment_adds_flags_and_drops_shell_state() -> None:
    env = rig_environment({"PATH": "/bin", "PWD": "/x", "SHLVL": "2", "FOO": "1", "BAD-NAME": "z"})
    assert env["FIRELET_IN_RIG"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["FOO"] == "1" and env["PATH"] == "/bin"
    assert "PWD" not in env and "SHLVL" not in env and "BAD-NAME" not in env


def test_interactive_run_gets_the_terminal_size() -> None:
    assert "stty rows 40 cols 120" in command_script(_spec(tty_size=(40, 120)))
    assert "stty rows" not in command_script(_spec())


def test_command_script_returns_the_commands_status_quietly_off_a_terminal(tmp_path: Path) -> None:
    """The closing drain (for a tty about to be hung up) must not add noise or eat the status."""
    script = tmp_path / "cmd.sh"
    script.write_text(command_script(_spec(argv=["sh", "-c", "echo out; echo err >&2; exit 7"], cwd="/")))
    out = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (out.returncode, out.stdout, out.stderr) == (7, "out\n", "err\n")


def test_the_heartbeat_starts_before_the_command_and_goes_to_the_second_port() -> None:
    script = init_script(_spec(heartbeat=True))
    assert script.index("/dev/ttyS1") < script.index(START_MARKER)
    assert "/dev/ttyS1" not in init_script(_spec())


def test_the_kvm_keeper_starts_before_the_command_and_holds_its_vm() -> None:
    from firelet.devtools.nested.init_script import KVM_KEEPER

    lines = init_script(_spec()).splitlines()
    keeper = next(i for i, line in enumerate(lines) if line.startswith("chroot /host /usr/bin/python3 -c"))
    command = next(i for i, line in enumerate(lines) if line.startswith("setsid -c env -i chroot /host"))
    assert keeper < command
    compile(KVM_KEEPER, "<keeper>", "exec")  # a syntax error would only show inside the rig
    # The parent returns once the VM exists (init waits for it); the child holds the fds.
    assert "os.fork() == 0" in KVM_KEEPER and "signal.pause()" in KVM_KEEPER
