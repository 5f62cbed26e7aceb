"""The guest command-line helper and the console marker parsers."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.errors import UsageError
from firelet.guest import (
    EXIT_MARKER,
    MAX_CMD_FRAGMENT,
    READY_MARKER,
    guest_cmdline_for,
    parse_exit_status,
    parse_ready_uptime,
)

commands = st.text(min_size=1, max_size=400).filter(lambda s: s.strip())


@given(commands)
def test_any_command_round_trips_through_base64(command: str) -> None:
    fragment = guest_cmdline_for(command)
    name, _, value = fragment.partition("=")
    assert name == "firelet.cmd"
    assert base64.b64decode(value, validate=True).decode() == command


@given(commands)
def test_fragment_is_one_kernel_parameter(command: str) -> None:
    fragment = guest_cmdline_for(command)
    assert not any(ch in fragment for ch in " \t\n\"'\\")
    assert fragment.isascii()


def test_empty_command_is_refused() -> None:
    with pytest.raises(UsageError, match="empty"):
        guest_cmdline_for("  ")


def test_command_too_long_for_the_kernel_is_refused() -> None:
    with pytest.raises(UsageError, match="too long"):
        guest_cmdline_for("x" * MAX_CMD_FRAGMENT)


def test_markers_are_the_documented_strings() -> None:
    assert (READY_MARKER, EXIT_MARKER) == ("FIRELET-READY", "FIRELET-EXIT")


def test_ready_uptime_from_a_serial_console() -> None:
    text = "[    1.0] Run /init as init process\r\nFIRELET-READY uptime=1.33\r\n$ "
    assert parse_ready_uptime(text) == pytest.approx(1.33)


def test_ready_uptime_absent_or_partial() -> None:
    assert parse_ready_uptime("booting...\n") is None
    assert parse_ready_uptime("FIRELET-READY upt") is None
    assert parse_ready_uptime("FIRELET-READY uptime=") is None


def test_exit_status_is_the_last_marker() -> None:
    # The command printed a fake marker before init printed the real one.
    text = "FIRELET-READY uptime=0.9\nFIRELET-EXIT status=0\r\nFIRELET-EXIT status=7\r\n"
    assert parse_exit_status(text) == 7


def test_exit_status_absent_until_the_line_is_complete() -> None:
    assert parse_exit_status("FIRELET-READY uptime=0.9\nhello\n") is None
    assert parse_exit_status("FIRELET-EXIT status=") is None


@given(st.integers(min_value=0, max_value=255), st.text(max_size=200).filter(lambda s: "FIRELET" not in s))
def test_exit_status_found_after_any_output(status: int, noise: str) -> None:
    text = f"{noise}\n{EXIT_MARKER} status={status}\r\n"
    assert parse_exit_status(text) == status


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: round(f, 2)))
def test_ready_uptime_round_trips(uptime: float) -> None:
    assert parse_ready_uptime(f"{READY_MARKER} uptime={uptime:.2f}\n") == pytest.approx(uptime)
