"""Firecracker's own documents and a Firecracker client from PyPI boot guests on firelet (issue #12).

- Firecracker's example ``vm_config.json``, only its two paths changed, through
  ``firelet-vmm --config-file`` and ``firelet run --config-file``.
- The getting-started guide's session: ``firecracker --api-sock ... --enable-pci``
  and its ``curl --unix-socket`` requests (the network step aside: firelet has no
  virtio-net yet), with the guest told to print a line and reset in place of ssh.
- ``firecracker-python`` (PyPI) starting the ``firecracker`` alias and configuring
  and starting the VM through its own API client (its Docker and networking helpers aside).

Firecracker's reference is read from ``../shared/specs/firecracker`` beside the
checkout (``FIRELET_FIRECRACKER_SPECS`` overrides); the tests needing it skip without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.devtools.aliases import write_alias
from firelet.devtools.cache import repo_root
from firelet.devtools.images import READY_MARKER, guest_cmdline_for

from conftest import BOOT_TIMEOUT_S, await_console

SPECS = Path(os.environ.get("FIRELET_FIRECRACKER_SPECS", repo_root().parent / "shared" / "specs" / "firecracker"))
VM_CONFIG = SPECS / "tests" / "framework" / "vm_config.json"
#: Firecracker's getting-started boot arguments (docs/getting-started.md, x86_64).
GUIDE_BOOT_ARGS = "console=ttyS0 reboot=k panic=1"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(repo_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _firecrackers_example(kernel: Any, rootfs: Path, tmp_path: Path) -> Path:
    if not VM_CONFIG.exists():
        pytest.skip(f"Firecracker's reference is not at {SPECS}")
    doc = json.loads(VM_CONFIG.read_text())
    doc["boot-source"]["kernel_image_path"] = str(kernel.vmlinux)
    doc["drives"][0]["path_on_host"] = str(rootfs)
    path = tmp_path / "vm_config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def _boot_to_ready_then_stop(argv: list[str], cwd: Path | None = None) -> tuple[str, int, str]:
    """Run a VMM whose console is its stdout until the guest's init is up, then SIGTERM it.

    The example's boot arguments give no command, so the guest's init waits at a shell:
    it has booted once its readiness line shows. Returns (console, exit status, stderr).
    """
    proc = subprocess.Popen(argv, env=_env(), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = await_console(proc, READY_MARKER.encode())
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        return (seen + rest).decode(errors="replace").replace("\r", ""), proc.returncode, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_firecrackers_example_config_boots_through_firelet_vmm(kernel, rootfs: Path, tmp_path: Path) -> None:
    config = _firecrackers_example(kernel, rootfs, tmp_path)
    console, code, err = _boot_to_ready_then_stop(
        [sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file", str(config)])
    assert code == 0, err
    assert "Brought up 1 node, 2 CPUs" in console, console[-3000:]  # the example's vcpu_count: 2
    assert "console=ttyS0 reboot=k panic=1" in console  # the example's boot_args, unchanged


def test_firecrackers_example_config_boots_through_firelet_run(kernel, rootfs: Path, tmp_path: Path) -> None:
    config = _firecrackers_example(kernel, rootfs, tmp_path)
    console, code, err = _boot_to_ready_then_stop(
        [sys.executable, "-m", "firelet", "run", "--config-file", str(config)])
    assert code == 0, err
    assert "Brought up 1 node, 2 CPUs" in console, console[-3000:]


def _curl_put(sock: str, path: str, body: dict[str, Any], cwd: Path) -> None:
    """One of the guide's ``curl -X PUT --unix-socket`` requests; it must answer 204."""
    result = subprocess.run(["curl", "-sS", "-X", "PUT", "--unix-socket", sock, "--data", json.dumps(body),
                             "-o", "/dev/stderr", "-w", "%{http_code}", f"http://localhost{path}"],
                            cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout == "204", f"PUT {path}: {result.stdout} {result.stderr}"


def test_getting_started_session_boots_with_curl_and_enable_pci(kernel, rootfs: Path, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the getting-started session needs curl (apt-get install curl)", pytrace=False)
    firecracker = write_alias(tmp_path / "bin")
    # The guide's files sit in the working directory and are named relative to it.
    (tmp_path / "vmlinux-6.1").symlink_to(kernel.vmlinux)
    (tmp_path / "ubuntu-24.04.ext4").symlink_to(rootfs)
    api_socket = "/tmp/firelet-getting-started.socket"  # the guide's /tmp/firecracker.socket, made unique
    if os.path.exists(api_socket):
        os.unlink(api_socket)
    proc = subprocess.Popen([str(firecracker), "--api-sock", api_socket, "--enable-pci"], cwd=tmp_path,
                            env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(api_socket):
            assert proc.poll() is None and time.monotonic() < deadline, "the API socket never appeared"
            time.sleep(0.05)
        _curl_put(api_socket, "/logger", {"log_path": "./firecracker.log", "level": "Debug", "show_level": True,
                                          "show_log_origin": True}, tmp_path)
        marker = "hello-from-the-getting-started-guide"
        _curl_put(api_socket, "/boot-source", {"kernel_image_path": "./vmlinux-6.1",
                                               "boot_args": f"{GUIDE_BOOT_ARGS} {guest_cmdline_for(f'echo {marker}')}"},
                  tmp_path)
        _curl_put(api_socket, "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "./ubuntu-24.04.ext4",
                                                 "is_root_device": True, "is_read_only": False}, tmp_path)
        _curl_put(api_socket, "/actions", {"action_type": "InstanceStart"}, tmp_path)
        out, err = proc.communicate(timeout=BOOT_TIMEOUT_S)  # the guest prints, then resets: the VMM ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    console = out.decode(errors="replace").replace("\r", "")
    assert proc.returncode == 0, err.decode()
    assert marker in console and "FIRELET-EXIT status=0" in console, console[-3000:]
    log = (tmp_path / "firecracker.log").read_text()
    warning = [line for line in log.splitlines() if "--enable-pci" in line]
    assert len(warning) == 1 and ":WARN" in warning[0] and "virtio-mmio" in warning[0], log[-3000:]
    assert ":DEBUG" in log  # the guide's level, with levels shown
    assert not os.path.exists(api_socket)


def test_firecracker_python_boots_a_guest_through_the_firecracker_alias(kernel, rootfs: Path, tmp_path: Path) -> None:
    # firecracker-python (PyPI) imports Docker, paramiko and pyroute2 for its helpers, and at import
    # warns that /usr/local/bin/firecracker is missing; it is pointed at the alias below instead.
    from firecracker.api import Api
    from firecracker.exceptions import APIError
    from firecracker.process import ProcessManager

    manager = ProcessManager()
    manager._config.binary_path = str(write_alias(tmp_path / "bin"))  # where it looks for `firecracker`
    manager._config.data_path = str(tmp_path / "vms")
    vm_id = "fcpy-guest"
    vm_dir = tmp_path / "vms" / vm_id
    vm_dir.mkdir(parents=True)
    sock = str(vm_dir / "firecracker.socket")
    pid = manager.start(vm_id, ["--api-sock", sock, "--id", vm_id, "--log-path", str(vm_dir / "vm.log")])
    try:
        assert manager.is_running(vm_id)
        assert manager.get_pid(vm_id)[0] == pid  # its check: the process is named "firecracker"
        assert manager._find_running_process(vm_id) == pid  # found by name and --api-sock, as it does
        api = Api(sock)
        deadline = time.monotonic() + 60
        while True:
            try:
                info = api.describe.get().json()
                break
            except APIError:
                assert time.monotonic() < deadline, "the API never answered"
                time.sleep(0.2)
        assert info == {"id": vm_id, "state": "Not started", "vmm_version": __version__, "app_name": "firelet"}
        assert api.version.get().json() == {"firecracker_version": FIRECRACKER_API_VERSION}
        marker = "hello-from-firecracker-python"
        api.boot.put(kernel_image_path=str(kernel.vmlinux),
                     boot_args=f"console=ttyS0 reboot=k pci=off panic=1 {guest_cmdline_for(f'echo {marker}; sleep 600')}")
        api.drive.put(drive_id="rootfs", path_on_host=str(rootfs), is_root_device=True, is_read_only=False)
        api.machine_config.put(vcpu_count=1, mem_size_mib=256)
        api.actions.put(action_type="InstanceStart")
        assert api.describe.get().json()["state"] == "Running"
        console = vm_dir / "firecracker.log"  # where the library sends the VMM's stdout, the guest's console
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while marker not in console.read_text(errors="replace"):
            assert time.monotonic() < deadline, console.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        assert api.vm_config.get().json()["machine-config"]["mem_size_mib"] == 256
        api.close()
    finally:
        assert manager.stop(vm_id)  # SIGTERM, as the library stops Firecracker
    assert not manager.is_running(vm_id)
    # The library never waits for the process it started (it stays a zombie until its parent,
    # this test, reaps it): reap it here; SIGTERM ends firelet-vmm with status 0.
    assert psutil.Process(pid).wait(timeout=30) == 0


def _huge_pages_unclaimed() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(info["HugePages_Free"].split()[0]) - int(info["HugePages_Rsvd"].split()[0])


def test_2m_huge_pages_back_the_guest_once_the_host_reserves_them(kernel, rootfs: Path, tmp_path: Path) -> None:
    """The advice of the 400 (reserve N pages) is enough: the guest boots on hugetlbfs pages, all claimed at start."""
    knob = Path("/proc/sys/vm/nr_hugepages")
    before = int(knob.read_text())
    knob.write_text(f"{before + 64}\n")  # 128 MiB of 2 MiB pages; put back below
    try:
        base = _huge_pages_unclaimed()
        assert base >= 64, f"the host could reserve only {base} huge pages"
        config = tmp_path / "vm.json"
        config.write_text(json.dumps({
            "boot-source": {"kernel_image_path": str(kernel.vmlinux),
                            "boot_args": f"console=ttyS0 reboot=k panic=1 pci=off {guest_cmdline_for('sleep 2')}"},
            "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                        "is_read_only": True}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}}))
        proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file", str(config)],
                                env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await_console(proc, READY_MARKER.encode())
            claimed = base - _huge_pages_unclaimed()  # used or reserved by the running VMM
            out, err = proc.communicate(timeout=BOOT_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert claimed == 64
        assert b"FIRELET-EXIT status=0" in out.replace(b"\r", b"")
        assert _huge_pages_unclaimed() == base  # given back when the VMM ended
    finally:
        knob.write_text(f"{before}\n")
