"""What the jail shows of the host: the exec file, its Python, and the ELF files they load; nothing more."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

import firelet
from firelet.jailer import elf, runtime


def test_the_interpreters_elf_header_names_its_loader_and_libc() -> None:
    interp, needed, _ = elf.read_dynamic(os.path.realpath(sys.executable))
    assert interp is not None and interp.startswith("/lib")
    assert "libc.so.6" in needed


def test_the_closure_resolves_libraries_transitively() -> None:
    libs = elf.closure([os.path.realpath(sys.executable)])
    names = {os.path.basename(p) for p in libs}
    assert "libc.so.6" in names
    assert all(os.path.exists(p) for p in libs)


def test_a_file_that_is_not_elf_needs_nothing(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n" * 20)
    with pytest.raises(elf.NotElf):
        elf.read_dynamic(str(script))
    assert elf.closure([str(script)]) == set()


def test_symlinks_on_the_way_are_recreated_and_the_end_is_bound(tmp_path: Path) -> None:
    (tmp_path / "real" / "lib").mkdir(parents=True)
    (tmp_path / "real" / "lib" / "libx.so.1.2").write_text("x")
    (tmp_path / "real" / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    (tmp_path / "lib").symlink_to("real/lib")
    exposure = runtime.Exposure()
    runtime.add(exposure, str(tmp_path / "lib" / "libx.so.1"))
    assert exposure.symlinks == {str(tmp_path / "lib"): "real/lib",
                                 str(tmp_path / "real" / "lib" / "libx.so.1"): "libx.so.1.2"}
    assert exposure.binds == {str(tmp_path / "real" / "lib" / "libx.so.1.2"): False}


def test_a_bound_directory_covers_what_is_below_it(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("f")
    exposure = runtime.Exposure()
    runtime.add(exposure, str(tmp_path / "d" / "e" / "f"))
    runtime.add(exposure, str(tmp_path / "d"))
    runtime.add(exposure, str(tmp_path / "d" / "e"))
    assert exposure.binds == {str(tmp_path / "d"): True}
    assert exposure.top_level() == {str(tmp_path).strip("/").split("/")[0]: None}


def test_a_firelet_vmm_script_exposes_exactly_the_python_it_needs(tmp_path: Path) -> None:
    script = tmp_path / "firelet-vmm"
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    script.chmod(0o755)
    exposure = runtime.for_exec_file(str(script))
    binds = set(exposure.binds)
    assert str(script) in binds
    assert os.path.dirname(firelet.__file__) in binds
    assert sysconfig.get_paths()["stdlib"] in binds
    assert any(sysconfig.get_paths()["purelib"].startswith(b) for b in binds)
    assert os.path.realpath(sys.executable) in binds
    assert any(os.path.basename(b).startswith("libc.so") for b in binds)
    # nothing else of the host: no home, no /etc beyond the loader's cache, no whole /usr or /lib
    assert not {"/", "/usr", "/usr/lib", "/etc", "/work", "/root", "/home", "/tmp"} & binds
    assert [b for b in binds if b.startswith("/etc")] == ["/etc/ld.so.cache"]
    assert exposure.env["PYTHONPATH"] == os.path.dirname(os.path.dirname(firelet.__file__))


def test_a_script_for_another_interpreter_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "vmm"
    script.write_text("#!/usr/bin/env python3\n")
    with pytest.raises(runtime.ExecFileError, match="is not the jailer's"):
        runtime.for_exec_file(str(script))


def test_a_native_program_exposes_itself_and_its_libraries() -> None:
    exposure = runtime.for_exec_file(os.path.realpath("/bin/true"))
    assert os.path.realpath("/bin/true") in exposure.binds
    assert any(os.path.basename(b).startswith("libc.so") for b in exposure.binds)
    assert exposure.env == {}
