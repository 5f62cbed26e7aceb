"""Kernel build logic that does not need minutes of compiling."""

from __future__ import annotations

import io
import struct
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.devtools import host as _host
from firelet.devtools.cache import repo_root
from firelet.devtools.images import KernelArtifacts, build_kernel, kernel
from firelet.devtools.images.kernel import (
    FRAGMENT_PATH,
    XEN_ELFNOTE_PHYS32_ENTRY,
    check_bzimage,
    check_vmlinux,
    kernel_key,
)
from firelet.devtools.images.progress import LiveLine, ticker
from firelet.errors import FireletError


def _note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), note_type) + pad(name + b"\0") + pad(desc)


def _elf(notes: bytes) -> bytes:
    """A minimal ELF64 with a PT_LOAD and a PT_NOTE holding ``notes``."""
    phoff, phentsize = 64, 56
    notes_at = phoff + 2 * phentsize
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, phentsize, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, notes_at, notes_at, 0x1000)
    note = struct.pack("<IIQQQQQQ", 4, 4, notes_at, 0, 0, len(notes), len(notes), 4)
    return header + load + note + notes


def test_pvh_entry_found_after_other_notes(tmp_path: Path) -> None:
    notes = _note(b"GNU", 3, bytes(20)) + _note(b"Xen", 6, b"linux\0") + \
        _note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000A40))
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(_elf(notes))
    assert check_vmlinux(vmlinux) == 0x1000A40


def test_elf_without_pvh_note_is_refused(tmp_path: Path) -> None:
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(_elf(_note(b"GNU", 3, bytes(20))))
    with pytest.raises(FireletError, match="PVH"):
        check_vmlinux(vmlinux)
    vmlinux.write_bytes(b"MZ not an elf")
    with pytest.raises(FireletError, match="ELF"):
        check_vmlinux(vmlinux)


@given(st.binary(max_size=400))
def test_note_walker_never_crashes_on_garbage(tail: bytes) -> None:
    # Must return None or an address, never raise (struct.error, IndexError...).
    for image in (b"\x7fELF\x02" + tail, _elf(tail)):
        result = kernel._pvh_entry(image)
        assert result is None or 0 <= result < 2**64


def test_bzimage_magic_checked(tmp_path: Path) -> None:
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    good = tmp_path / "bzImage"
    good.write_bytes(bytes(image))
    check_bzimage(good)
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(bytes(0x400))
    with pytest.raises(FireletError, match="HdrS"):
        check_bzimage(bad)


def test_kernel_key_follows_fragment_source_and_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    fragment = (repo_root() / FRAGMENT_PATH).read_bytes()
    base = kernel_key(fragment, "6.1.192-2")
    assert kernel_key(fragment, "6.1.192-2") == base
    assert kernel_key(fragment + b"CONFIG_IPV6=y\n", "6.1.192-2") != base
    assert kernel_key(fragment, "6.1.200-1") != base
    monkeypatch.setattr(kernel, "RECIPE_VERSION", "999")
    assert kernel_key(fragment, "6.1.192-2") != base


def test_cached_kernel_returns_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRELET_CACHE", str(tmp_path))
    key = kernel_key((repo_root() / FRAGMENT_PATH).read_bytes(), kernel._ensure_source(None))
    final = tmp_path / "kernel" / key
    final.mkdir(parents=True)
    (final / "vmlinux").write_bytes(b"\x7fELF")
    (final / "bzImage").write_bytes(b"bz")
    (final / "version").write_text("6.1.192\n")
    started = time.monotonic()
    artifacts = build_kernel(progress=lambda message: pytest.fail(f"reported {message!r}"))
    assert time.monotonic() - started < 2
    assert artifacts == KernelArtifacts(final / "vmlinux", final / "bzImage", "6.1.192")


def test_failed_make_shows_log_tail_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "build.log"
    script = "for i in $(seq 1 40); do echo line$i; done; echo 'error: boom' >&2; exit 2"
    with pytest.raises(FireletError) as caught:
        kernel._run_make(["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, log, None)
    message = str(caught.value)
    assert str(log) in message and "exit 2" in message and "\n" not in message
    shown = capsys.readouterr().err.splitlines()
    assert shown[-1] == "error: boom" and "line40" in shown and "line5" not in shown
    assert len(shown) == 30


def test_objects_counted_from_kbuild_lines(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_bytes(b"  CC      init/main.o\n  AR      lib/built-in.a\n  AS      arch/x86/entry.o\n  CC   half")
    count, offset = kernel._count_compiled(log, 0, 0)
    assert count == 2
    with open(log, "ab") as handle:
        handle.write(b".o\n  LD      vmlinux\n")
    assert kernel._count_compiled(log, count, offset)[0] == 3


def test_make_ticks_progress_while_running(tmp_path: Path) -> None:
    ticks: list[str] = []

    class Fast:
        tick_seconds = 0.2

        def __call__(self, message: str) -> None:
            ticks.append("milestone " + message)

        def tick(self, message: str) -> None:
            ticks.append(message)

    script = "echo '  CC      a.o'; echo '  CC      b.o'; sleep 1"
    kernel._run_make(["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, tmp_path / "log", Fast(),
                     count_objects=True)
    assert ticks and ticks[-1].startswith("kernel: compiling... 2 objects")


def test_missing_build_tools_name_their_packages() -> None:
    needs = {"sh": "dash", "no-such-tool-xyz": "xyz-tools", "/no/such/header.h": "libfoo-dev",
             "/also/missing.h": "libfoo-dev"}
    assert _host.missing_packages(needs) == ["xyz-tools", "libfoo-dev"]


def test_low_disk_space_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FireletError, match=r"needs about .* GiB free"):
        _host.require_free_space(tmp_path, 1 << 60, what="building the guest kernel")
    _host.require_free_space(tmp_path, 1, what="nothing")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_live_line_redraws_on_a_tty() -> None:
    stream = _Stream(tty=True)
    line = LiveLine(stream)
    assert ticker(line)[0] == 1.0
    line.tick("compiling 1")
    line.tick("compiling 2")
    line("done")
    assert stream.getvalue() == "\r\x1b[Kcompiling 1\r\x1b[Kcompiling 2\ndone\n"


def test_live_line_prints_plain_lines_for_logs() -> None:
    stream = _Stream(tty=False)
    line = LiveLine(stream)
    assert ticker(line)[0] == 15.0
    line.tick("compiling 1")
    line("done")
    assert stream.getvalue() == "compiling 1\ndone\n"
    assert ticker(print) == (15.0, print)
    assert LiveLine().stream is sys.stderr


def test_only_dead_local_builds_are_stale(tmp_path: Path) -> None:
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()
    boot = _host.process_tag().rpartition("-")[0]
    mine = tmp_path / f".build-k-{_host.process_tag()}"
    gone = tmp_path / f".build-k-{boot}-{finished.pid}"
    other_kernel = tmp_path / f".build-k-0123456789ab-{finished.pid}"  # e.g. inside the nested rig
    other_key = tmp_path / f".build-j-{boot}-{finished.pid}"
    for path in (mine, gone, other_kernel, other_key):
        path.mkdir()
    kernel._remove_stale_builds(tmp_path, "k")
    assert mine.exists() and other_kernel.exists() and other_key.exists()
    assert not gone.exists()
    assert _host.tag_is_dead(f"{boot}-{finished.pid}") and not _host.tag_is_dead(_host.process_tag())
