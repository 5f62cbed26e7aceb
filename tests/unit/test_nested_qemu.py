"""The outer QEMU's argv and kernel command line."""

from __future__ import annotations

from pathlib import Path

from firelet.devtools.nested.init_script import Share
from firelet.devtools.nested.qemu import kernel_cmdline, outer_qemu_argv


def _argv(**kw: object) -> list[str]:
    args = dict(kernel=Path("/c/vmlinuz"), initrd=Path("/t/initrd.gz"), cmdline="console=ttyS0",
                mem_mib=2048, smp=3, shares=[])
    args.update(kw)
    return outer_qemu_argv(**args)  # type: ignore[arg-type]


def _value(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_machine_cpu_and_sizes() -> None:
    argv = _argv()
    assert argv[0] == "qemu-system-x86_64"
    assert _value(argv, "-accel") == ["tcg,thread=multi"]
    assert _value(argv, "-M") == ["q35"]
    assert "+svm" in _value(argv, "-cpu")[0] and "+npt" in _value(argv, "-cpu")[0]
    assert _value(argv, "-smp") == ["3"] and _value(argv, "-m") == ["2048"]
    assert {"-nographic", "-nodefaults", "-no-reboot"} <= set(argv)
    assert _value(argv, "-kernel") == ["/c/vmlinuz"] and _value(argv, "-initrd") == ["/t/initrd.gz"]


def test_serial_is_stdio_without_signal_keys() -> None:
    argv = _argv()
    assert _value(argv, "-chardev") == ["stdio,id=s0,signal=off"]
    assert _value(argv, "-serial") == ["chardev:s0"]


def test_host_root_is_read_only_and_shares_writable() -> None:
    argv = _argv(shares=[Share("share0", "/a"), Share("share1", "/b,c")])
    fs = _value(argv, "-virtfs")
    assert fs[0].startswith("local,path=/,mount_tag=hostroot,") and "readonly=on" in fs[0]
    assert fs[1].startswith("local,path=/a,mount_tag=share0,") and "readonly" not in fs[1]
    assert fs[2].startswith("local,path=/b,,c,mount_tag=share1,")  # QEMU's comma escape


def test_cmdline_is_quiet_unless_verbose() -> None:
    quiet = kernel_cmdline(verbose=False)
    assert "console=ttyS0" in quiet and "panic=-1" in quiet and "quiet" in quiet and "loglevel=0" in quiet
    assert "quiet" not in kernel_cmdline(verbose=True)


def test_bios_replaces_seabios_only_when_given() -> None:
    assert "-bios" not in _argv()
    assert _value(_argv(bios=Path("/usr/share/qemu/qboot.rom")), "-bios") == ["/usr/share/qemu/qboot.rom"]
