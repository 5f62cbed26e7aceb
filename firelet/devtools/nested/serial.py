"""Filtering the outer Linux's serial console into the command's own output.

The console carries, in order: the kernel's and ``/init``'s boot chatter,
``FIRELET-RIG-START <nonce>``, the command's output, then
``FIRELET-RIG-EXIT <nonce> <status>`` and the power-off chatter. Output comes
in arbitrary chunks and an interactive program's prompt has no newline, so
the filter passes bytes on at once and only holds back a tail that could be
the start of a marker.
"""

from __future__ import annotations

from firelet.devtools.nested.init_script import EXIT_MARKER, START_MARKER

_BOOT, _RUN, _DONE = "boot", "run", "done"
_TAIL_BYTES = 16384


def _prefix_overlap(data: bytes, token: bytes) -> int:
    """Length of the longest suffix of ``data`` that is a proper prefix of ``token``."""
    for n in range(min(len(data), len(token) - 1), 0, -1):
        if data.endswith(token[:n]):
            return n
    return 0


class RigOutput:
    """A stateful filter: ``feed`` raw console bytes, get the bytes to show.

    ``status`` is the command's exit status once the exit marker has been
    seen; ``started`` tells whether the command ever began. ``strip_cr`` turns
    the tty's ``\\r\\n`` into ``\\n`` (off when a raw terminal wants them).
    """

    def __init__(self, nonce: str, *, show_boot: bool = False, strip_cr: bool = True) -> None:
        self._start = f"{START_MARKER} {nonce}".encode()
        self._exit = f"{EXIT_MARKER} {nonce} ".encode()
        self._show_boot = show_boot
        self._strip_cr = strip_cr
        self._phase = _BOOT
        self._pending = b""
        self._held_cr = False
        self._tail = bytearray()
        self.status: int | None = None

    @property
    def started(self) -> bool:
        return self._phase != _BOOT

    def tail_lines(self, count: int = 20) -> list[str]:
        """The last ``count`` lines of everything the console said (for error messages)."""
        text = bytes(self._tail).decode("utf-8", "replace").replace("\r", "")
        return [line for line in text.split("\n") if line.strip()][-count:]

    def feed(self, data: bytes) -> bytes:
        data = self._fix_newlines(data)
        self._tail += data
        del self._tail[:-_TAIL_BYTES]
        self._pending += data
        out = bytearray()
        while True:
            if self._phase == _BOOT:
                if self._scan(self._start, out, show=self._show_boot) is None:
                    break
                self._phase = _RUN
            elif self._phase == _RUN:
                line = self._scan(self._exit, out, show=True)
                if line is None:
                    break
                self.status = _parse_status(line)
                self._phase = _DONE
            else:
                if self._show_boot:
                    out += self._pending
                self._pending = b""
                break
        return bytes(out)

    def finish(self) -> bytes:
        """Flush what is held back at the end of the stream."""
        rest = self._pending + (b"\r" if self._held_cr else b"")
        self._pending, self._held_cr = b"", False
        if self._phase == _RUN or self._show_boot:
            return rest
        return b""

    def _fix_newlines(self, data: bytes) -> bytes:
        if not self._strip_cr:
            return data
        if self._held_cr:
            data = b"\r" + data
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        return data.replace(b"\r\n", b"\n")

    def _scan(self, token: bytes, out: bytearray, *, show: bool) -> bytes | None:
        """Find ``token`` and its line's end in the pending bytes; pass the bytes before it.

        Returns the rest of the marker line (after the token), or None when it
        is not complete yet (the undecided tail stays pending).
        """
        idx = self._pending.find(token)
        if idx < 0:
            keep = _prefix_overlap(self._pending, token)
            cut = len(self._pending) - keep
            if show:
                out += self._pending[:cut]
            self._pending = self._pending[cut:]
            return None
        if show:
            out += self._pending[:idx]
        self._pending = self._pending[idx:]
        end = self._pending.find(b"\n")
        if end < 0:
            return None
        line = self._pending[len(token):end]
        self._pending = self._pending[end + 1:]
        return line


def _parse_status(rest: bytes) -> int:
    """The status after the marker; 125 (the rig's own failure) if it is garbled."""
    text = rest.strip().decode("ascii", "replace")
    return int(text) if text.isdigit() else 125
