"""Builder logic without a VM: the guest command line (the kernel's word splitting, root=), kernel waits."""

import threading

from hypothesis import given
from hypothesis import strategies as st

from firelet.builder.boot import boot_cmdline, cmdline_words
from firelet.builder.kernel_waits import KernelWaits
from firelet.config.model import VmConfig, convert


def test_words_split_like_the_kernel() -> None:
    assert cmdline_words("console=ttyS0  reboot=k\tpanic=1") == ["console=ttyS0", "reboot=k", "panic=1"]
    assert cmdline_words('init=/bin/sh foo="a b" bar') == ["init=/bin/sh", "foo=a b", "bar"]
    # Single quotes and backslashes are ordinary characters to Linux (unlike to a shell).
    assert cmdline_words("x='a b' y=c\\ d") == ["x='a", "b'", "y=c\\", "d"]
    assert cmdline_words("") == [] and cmdline_words("   ") == []


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters='"', blacklist_categories=("Zs", "Cc")),
                        min_size=1), max_size=8))
def test_words_without_quotes_round_trip(words: list[str]) -> None:
    words = [w for w in words if w.split() == [w]]  # no whitespace of any kind inside
    assert cmdline_words(" ".join(words)) == words


def _config(boot_args: str | None, **drive: object) -> VmConfig:
    drives = [dict({"drive_id": "root", "path_on_host": "/x.img", "is_root_device": True}, **drive)]
    return convert({"boot-source": {"kernel_image_path": "/k", "boot_args": boot_args}, "drives": drives}, VmConfig)


def test_root_is_added_unless_the_user_gave_one() -> None:
    assert boot_cmdline(_config("console=ttyS0"), ["dev"]) == "console=ttyS0 root=/dev/vda rw dev"
    assert boot_cmdline(_config("console=ttyS0", is_read_only=True), []) == "console=ttyS0 root=/dev/vda ro"
    assert boot_cmdline(_config("root=/dev/vdb rw"), []) == "root=/dev/vdb rw"
    assert boot_cmdline(_config('x="y root=z"'), []) == 'x="y root=z" root=/dev/vda rw'
    assert boot_cmdline(_config("quiet", partuuid="1234-01"), []) == "quiet root=PARTUUID=1234-01 rw"


def test_kernel_waits_run_in_order_on_another_thread_and_report_the_first_failure() -> None:
    seen: list[tuple[str, bool]] = []
    waits = KernelWaits()
    for name in ("memory", "pit", "ioeventfd"):
        waits.add(lambda name=name: seen.append((name, threading.current_thread() is threading.main_thread())))
    waits.finish()
    assert seen == [("memory", False), ("pit", False), ("ioeventfd", False)]

    def fail() -> None:
        raise OSError("EEXIST")

    waits = KernelWaits()
    waits.add(fail)
    waits.add(lambda: seen.append(("after a failure", False)))
    try:
        waits.finish()
    except OSError as exc:
        assert str(exc) == "EEXIST"
    else:
        raise AssertionError("the failure was not re-raised")
    assert seen[-1] == ("ioeventfd", False)  # nothing runs after the first failure
