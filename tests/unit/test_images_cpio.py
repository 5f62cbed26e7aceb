"""The newc cpio writer, read back by our reader and by GNU cpio."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.devtools.images.cpio import CpioFormatError, read_newc, write_newc
from firelet.devtools.images.tree import CHARDEV, DIR, FILE, SYMLINK, Entry

TREE = [
    Entry("bin", DIR, 0o755),
    Entry("bin/busybox", FILE, 0o755, b"\x7fELF" + bytes(range(256)) * 3),
    Entry("bin/sh", SYMLINK, 0o777, b"/bin/busybox"),
    Entry("tmp", DIR, 0o1777),
    Entry("init", FILE, 0o755, b"#!/bin/sh\necho hi\n"),
    Entry("etc", DIR, 0o755),
    Entry("etc/hostname", FILE, 0o644, b"firelet\n"),
    Entry("empty", FILE, 0o600, b""),
    Entry("dev", DIR, 0o755),
    Entry("dev/console", CHARDEV, 0o600, rdev=(5, 1)),
]


def test_round_trip_keeps_names_modes_and_contents() -> None:
    assert read_newc(write_newc(TREE)) == TREE


def test_members_are_4_byte_aligned_and_end_with_trailer() -> None:
    archive = write_newc(TREE)
    assert len(archive) % 4 == 0
    assert archive.startswith(b"070701")
    assert b"TRAILER!!!\0" in archive[-128:]


def test_gnu_cpio_lists_what_we_wrote(tmp_path) -> None:
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=write_newc(TREE),
                             stdout=subprocess.PIPE, check=True).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] if " -> " not in line else line.split()[-3] for line in lines] == [
        entry.path for entry in TREE
    ]
    assert lines[0].startswith("drwxr-xr-x")
    assert lines[2].startswith("lrwxrwxrwx") and lines[2].endswith("bin/sh -> /bin/busybox")
    assert lines[3].startswith("drwxrwxrwt")
    assert lines[-1].startswith("crw-------")
    # And it extracts the file contents byte for byte.
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=write_newc(TREE),
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin/busybox").read_bytes() == TREE[1].data
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755


def test_truncated_archive_is_an_error() -> None:
    archive = write_newc(TREE)
    with pytest.raises(CpioFormatError):
        read_newc(archive[:200])
    with pytest.raises(CpioFormatError):
        read_newc(b"not a cpio archive at all" * 10)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=60).filter(
    lambda s: s != "TRAILER!!!"
)
entries = st.one_of(
    st.builds(Entry, names, st.just(FILE), st.integers(0, 0o7777), st.binary(max_size=300)),
    st.builds(Entry, names, st.just(DIR), st.integers(0, 0o7777)),
    st.builds(Entry, names, st.just(SYMLINK), st.just(0o777), st.binary(min_size=1, max_size=80)),
    st.builds(Entry, names, st.just(CHARDEV), st.integers(0, 0o777), st.just(b""),
              st.tuples(st.integers(0, 4095), st.integers(0, 2**20 - 1))),
)


@given(st.lists(entries, max_size=20))
def test_any_tree_round_trips(tree: list[Entry]) -> None:
    assert read_newc(write_newc(tree)) == tree
