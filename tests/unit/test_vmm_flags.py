"""Firecracker 1.17's process flags and the ``firecracker`` alias, on real processes (issue #12)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_api_cli import _env, _vmm

from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.cli.vmm import build_parser
from firelet.devtools.aliases import write_alias

from api_fake_backend import call, wait_for_api

#: Every flag of Firecracker 1.17's ``firecracker`` (src/firecracker/src/main.rs), and --help.
FIRECRACKER_FLAGS = [
    "--api-sock", "--id", "--seccomp-filter", "--no-seccomp", "--start-time-us", "--start-time-cpu-us",
    "--parent-cpu-time-us", "--config-file", "--metadata", "--no-api", "--log-path", "--level", "--module",
    "--show-level", "--show-log-origin", "--metrics-path", "--boot-timer", "--version", "--snapshot-version",
    "--describe-snapshot", "--http-api-max-payload-size", "--mmds-size-limit", "--enable-pci", "--help",
]
VERSION_LINE = f"firelet {__version__} (Firecracker API {FIRECRACKER_API_VERSION})"


def test_every_firecracker_flag_is_known() -> None:
    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert set(FIRECRACKER_FLAGS) - known == set()


def _run(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run((command or _vmm()) + list(args), env=_env(), capture_output=True, text=True, timeout=60, check=False)


def test_version_says_firelet_and_the_firecracker_api_it_implements() -> None:
    result = _run("--version")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, VERSION_LINE, "")


@pytest.mark.parametrize("flags", [["--snapshot-version"], ["--describe-snapshot", "/some/vm.snap"]])
def test_snapshot_flags_exit_non_zero_with_one_line_until_snapshots_land(flags: list[str]) -> None:
    result = _run(*flags)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"firelet-vmm: error: {flags[0]}: snapshots are not supported by firelet yet, "
                             "so there is no snapshot data format to report\n")


def test_seccomp_flags_exclude_each_other_as_firecrackers_do() -> None:
    result = _run("--no-seccomp", "--seccomp-filter", "/f.bpf", "--api-sock", "/nonexistent/dir/s")
    assert result.returncode == 2 and "--no-seccomp and --seccomp-filter exclude each other" in result.stderr


@pytest.fixture
def started(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A VMM on ``tmp_path/api.sock`` started with ``request.param``: flags, or (command, flags).

    A flag is a string (``{tmp}`` is ``tmp_path``) or a function of ``tmp_path`` that
    prepares a file and returns its path; a command is a function of ``tmp_path`` too.
    """
    command, flags = request.param if isinstance(request.param, tuple) else (None, request.param)
    sock = tmp_path / "api.sock"
    argv = (command(tmp_path) if command else _vmm()) + ["--api-sock", str(sock)] + [
        f(tmp_path) if callable(f) else f.format(tmp=tmp_path) for f in flags]
    proc = subprocess.Popen(argv, env=_env(), stderr=subprocess.PIPE)
    try:
        wait_for_api(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(10) is None:
                proc.kill()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize("started", [["--enable-pci", "--log-path", "{tmp}/log", "--level", "Info",
                                      "--show-level"]], indirect=True)
def test_enable_pci_keeps_virtio_mmio_and_says_so_at_warning_level_when_the_vm_starts(started: tuple[subprocess.Popen[bytes], Path],
                                                                    tmp_path: Path) -> None:
    _, sock = started
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"not a kernel")
    assert call(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})[0] == 204
    assert call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 400  # the devices were planned
    warning = [line for line in (tmp_path / "log").read_text().splitlines() if "--enable-pci" in line]
    assert len(warning) == 1 and ":WARN" in warning[0]
    assert "virtio devices stay on virtio-mmio" in warning[0] and "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES" in warning[0]


def _metadata(tmp_path: Path) -> str:
    (tmp_path / "meta.json").write_text(json.dumps({"latest": {"meta-data": {"ami-id": "ami-12345678"}}}))
    return str(tmp_path / "meta.json")


@pytest.mark.parametrize("started", [["--metadata", _metadata]], indirect=True)
def test_metadata_fills_the_mmds_data_store_at_start(started: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = started
    assert call(sock, "GET", "/mmds") == (200, {"latest": {"meta-data": {"ami-id": "ami-12345678"}}})


@pytest.mark.parametrize("content,expected", [(None, "cannot read it"), ("{not json", "not valid JSON")])
def test_unusable_metadata_is_a_one_line_usage_error(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "meta.json"
    if content is not None:
        path.write_text(content)
    result = _run("--metadata", str(path), "--api-sock", str(tmp_path / "s"))
    assert result.returncode == 2 and result.stderr.startswith(f"firelet-vmm: error: --metadata {path}: {expected}")
    assert len(result.stderr.splitlines()) == 1


def _alias(tmp_path: Path) -> list[str]:
    return [str(write_alias(tmp_path / "bin"))]


def _alias_without_shebang(tmp_path: Path) -> list[str]:
    """The entry point run by the interpreter directly: only prctl can name the process."""
    code = "import sys; from firelet.cli.vmm import firecracker_console; sys.exit(firecracker_console())"
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("started", [(_alias, []), (_alias_without_shebang, [])], indirect=True,
                         ids=["console-script", "python-c"])
def test_the_firecracker_alias_is_named_firecracker_and_says_it_is_firelet(
        started: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = started
    assert psutil.Process(proc.pid).name() == "firecracker"
    assert Path(f"/proc/{proc.pid}/comm").read_text() == "firecracker\n"
    assert call(sock, "GET", "/")[1] == {"id": "anonymous-instance", "state": "Not started",
                                        "vmm_version": __version__, "app_name": "firelet"}
    assert call(sock, "GET", "/version") == (200, {"firecracker_version": FIRECRACKER_API_VERSION})


def test_the_alias_prints_what_it_is(tmp_path: Path) -> None:
    alias = _alias(tmp_path)
    assert _run("--version", command=alias).stdout.strip() == VERSION_LINE
    result = _run("--snapshot-version", command=alias)
    assert result.returncode == 1 and result.stderr.startswith("firecracker: error: --snapshot-version: ")
    assert _run("--help", command=alias).stdout.startswith("usage: firecracker ")
