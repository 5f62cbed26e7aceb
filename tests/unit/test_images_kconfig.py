"""Checking that Kconfig kept the fragment's options, and the fragment itself."""

from __future__ import annotations

from firelet.devtools.cache import repo_root
from firelet.devtools.images.kconfig import UNSET, dropped_options, parse_config
from firelet.devtools.images.kernel import FRAGMENT_PATH

FRAGMENT = """\
# a comment
CONFIG_VIRTIO_BLK=y
CONFIG_NR_CPUS=32
# CONFIG_MODULES is not set
"""


def test_parse_reads_values_and_unset_lines() -> None:
    assert parse_config(FRAGMENT) == {"CONFIG_VIRTIO_BLK": "y", "CONFIG_NR_CPUS": "32", "CONFIG_MODULES": UNSET}


def test_nothing_dropped_when_config_honours_fragment() -> None:
    config = "CONFIG_VIRTIO_BLK=y\nCONFIG_NR_CPUS=32\n# CONFIG_MODULES is not set\nCONFIG_OTHER=y\n"
    assert dropped_options(FRAGMENT, config) == []


def test_option_missing_from_config_is_dropped() -> None:
    config = "CONFIG_NR_CPUS=32\n"  # olddefconfig left VIRTIO_BLK out: its dependency was off
    assert dropped_options(FRAGMENT, config) == ["CONFIG_VIRTIO_BLK=y (got unset)"]


def test_changed_value_and_forced_on_option_are_reported() -> None:
    config = "CONFIG_VIRTIO_BLK=m\nCONFIG_NR_CPUS=8\nCONFIG_MODULES=y\n"
    assert dropped_options(FRAGMENT, config) == [
        "CONFIG_VIRTIO_BLK=y (got m)", "CONFIG_NR_CPUS=32 (got 8)", "CONFIG_MODULES=n (got y)",
    ]


def test_unset_option_absent_from_config_is_fine() -> None:
    assert dropped_options("# CONFIG_PCI is not set\n", "CONFIG_X=y\n") == []


def test_fragment_asks_for_the_microvm_essentials() -> None:
    options = parse_config((repo_root() / FRAGMENT_PATH).read_text())
    wanted_on = """64BIT SMP X86_MPPARSE PVH HYPERVISOR_GUEST PARAVIRT KVM_GUEST PRINTK TTY
        SERIAL_8250 SERIAL_8250_CONSOLE VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK
        VIRTIO_NET NET INET PACKET UNIX NETDEVICES NET_CORE VSOCKETS VIRTIO_VSOCKETS
        HW_RANDOM_VIRTIO VIRTIO_BALLOON SERIO SERIO_I8042 INPUT INPUT_KEYBOARD KEYBOARD_ATKBD
        EXT4_FS DEVTMPFS DEVTMPFS_MOUNT TMPFS PROC_FS SYSFS BLK_DEV_INITRD RD_GZIP BINFMT_ELF
        BINFMT_SCRIPT UNIX98_PTYS FUTEX EPOLL SHMEM MULTIUSER POSIX_TIMERS BUG""".split()
    missing = [name for name in wanted_on if options.get(f"CONFIG_{name}") != "y"]
    assert missing == []
    for name in ("MODULES", "RANDOMIZE_BASE", "PCI", "ACPI"):
        assert options[f"CONFIG_{name}"] == UNSET
    assert int(options["CONFIG_NR_CPUS"]) >= 32
