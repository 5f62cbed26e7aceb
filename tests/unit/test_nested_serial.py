"""Filtering the rig's serial console: markers, nonces, chunking, newlines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firelet.devtools.nested.serial import RigOutput

NONCE = "5eed"
BOOT = b"SeaBIOS\r\n[    0.1] Linux version 6.1\r\nBooting from ROM..\x1bcFIRELET-RIG-START 5eed\r\n"
BODY = b"hi\r\nFIRELET-RIG-EXIT beef 0\r\nprompt$ "
END = b"FIRELET-RIG-EXIT 5eed 3\r\nreboot: Power down\r\n"
CONSOLE = BOOT + BODY + END


def _feed_all(filt: RigOutput, chunks: list[bytes]) -> bytes:
    return b"".join(filt.feed(c) for c in chunks) + filt.finish()


def test_whole_stream_shows_only_the_command_output() -> None:
    filt = RigOutput(NONCE)
    out = _feed_all(filt, [CONSOLE])
    # a marker with another nonce is the command's own output and passes through
    assert out == b"hi\nFIRELET-RIG-EXIT beef 0\nprompt$ "
    assert filt.status == 3 and filt.started


@given(st.lists(st.integers(0, len(CONSOLE)), max_size=12))
def test_any_chunking_gives_the_same_output(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [CONSOLE[a:b] for a, b in zip([0, *points], [*points, len(CONSOLE)], strict=True)]
    filt = RigOutput(NONCE)
    assert _feed_all(filt, chunks) == b"hi\nFIRELET-RIG-EXIT beef 0\nprompt$ "
    assert filt.status == 3


def test_byte_by_byte_split_crlf() -> None:
    filt = RigOutput(NONCE)
    out = _feed_all(filt, [bytes([b]) for b in CONSOLE])
    assert b"\r" not in out and filt.status == 3


def test_prompt_without_newline_is_shown_at_once() -> None:
    filt = RigOutput(NONCE)
    filt.feed(BOOT)
    assert filt.feed(b"login: ") == b"login: "


def test_marker_prefix_is_held_until_decided() -> None:
    filt = RigOutput(NONCE)
    filt.feed(BOOT)
    assert filt.feed(b"text FIRELET-RIG-EX") == b"text "
    assert filt.feed(b"TRA\n") == b"FIRELET-RIG-EXTRA\n"


def test_output_without_trailing_newline_before_the_marker() -> None:
    filt = RigOutput(NONCE)
    assert _feed_all(filt, [BOOT + b"nonl" + END]) == b"nonl"
    assert filt.status == 3


def test_interactive_keeps_carriage_returns() -> None:
    filt = RigOutput(NONCE, strip_cr=False)
    assert _feed_all(filt, [CONSOLE]).startswith(b"hi\r\n")
    assert filt.status == 3


def test_verbose_shows_the_boot_log_but_not_the_markers() -> None:
    out = _feed_all(RigOutput(NONCE, show_boot=True), [CONSOLE])
    assert b"Linux version 6.1" in out and b"Power down" in out
    assert b"RIG-START 5eed" not in out and b"RIG-EXIT 5eed" not in out


def test_no_marker_means_no_status_and_a_tail_for_the_error() -> None:
    filt = RigOutput(NONCE)
    out = _feed_all(filt, [b"[ 1.0] Kernel panic - not syncing: VFS\r\n"])
    assert out == b"" and filt.status is None and not filt.started
    assert filt.tail_lines()[-1] == "[ 1.0] Kernel panic - not syncing: VFS"


def test_garbled_status_is_the_rig_failure_code() -> None:
    filt = RigOutput(NONCE)
    _feed_all(filt, [BOOT + b"FIRELET-RIG-EXIT 5eed ??\n"])
    assert filt.status == 125
