"""The warm launcher: one single-threaded loop that forks VMMs on request (docs/launcher.md).

Everything runs on the main thread in one ``selectors`` (epoll) loop: the listening
socket, the clients' connections and a self-pipe that SIGCHLD, SIGTERM, SIGINT and
SIGHUP write to (``signal.set_wakeup_fd``). No thread is ever started, so a fork
copies a process with no other thread mid-way through anything and no lock held.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from firelet.launcher import oom, protocol
from firelet.launcher.children import Child, Children
from firelet.launcher.jail import Jailed
from firelet.launcher.socket_path import LauncherError, claim_socket_path
from firelet.log import get_logger

log = get_logger("firelet.launcher")

#: The signals the loop handles itself; a child gets back what the launcher found.
_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The loop wakes at least this often (s), so a missed wakeup only delays, never loses, a reap.
_MAX_SLEEP_S = 1.0
#: How long replies still queued at exit may take to leave (s).
_FINAL_FLUSH_S = 1.0


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    fd: int
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    waiting: tuple[protocol.Wait, float] | None = None  # a wait request and its deadline
    close_after_flush: bool = False


class LauncherServer:
    """Listens on ``path`` and runs until SIGTERM/SIGINT/SIGHUP or a ``shutdown`` request."""

    def __init__(self, path: str, *, grace_s: float = 5.0, child_oom_adj: int | None = None) -> None:
        self.path = path
        self.grace_s = grace_s
        self.children = Children()
        self._handlers: dict[int, Any] = {s: signal.getsignal(s) for s in _SIGNALS}
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._closing = False
        self._leave_running = False
        self._stop_signal: int | None = None
        self._child_oom_adj = child_oom_adj  # each child's, when the launcher lowered its own (oom.py)

    # -- start and stop ---------------------------------------------------------------------
    def bind(self) -> None:
        claim_socket_path(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # owner only: whoever connects runs VMMs as this user
        try:
            listener.bind(self.path)
        except OSError as exc:
            listener.close()
            raise LauncherError(f"--socket {self.path}: cannot listen there: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        listener.listen(128)
        listener.setblocking(False)
        self._inode = os.stat(self.path).st_ino
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, self._accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wakeup)

    def serve(self) -> int:
        """The loop; returns the launcher's exit status (0) once it has shut down."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        try:
            while not (self._closing and (self._leave_running or not self.children.running())):
                timeout = self._next_timeout()
                for key, mask in self._sel.select(timeout):
                    key.data(key.fileobj, mask)
                self._after_events()
        finally:
            self._close()
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only noted here (the loop acts on it): the handler may run in the middle of a selector call.
        if signum != signal.SIGCHLD:  # SIGCHLD only wakes the loop up (through the wakeup fd)
            self._stop_signal = signum

    def _begin_shutdown(self, *, leave_running: bool, grace_s: float) -> list[str]:
        self._closing, self._leave_running = True, leave_running
        self._stop_listening()
        running = self.children.running()
        if not leave_running:
            for child in running:
                self.children.signal(child, signal.SIGTERM, grace_s)
        return [c.id for c in running]

    def _stop_listening(self) -> None:
        if self._listener is None:
            return
        self._sel.unregister(self._listener)
        self._listener.close()
        self._listener = None
        try:  # only our own socket: a new launcher may already listen at the path
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._stop_listening()
        deadline = time.monotonic() + _FINAL_FLUSH_S
        for conn in list(self._conns.values()):
            self._final_flush(conn, deadline)
            self._drop(conn)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _drop_in_child(self) -> None:
        """In a forked child: close the launcher's sockets, selector and pipe (never unlinks)."""
        for conn in self._conns.values():
            conn.sock.close()
        if self._listener is not None:
            self._listener.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._child_oom_adj is not None:
            oom.restore(self._child_oom_adj)

    # -- the loop's events ------------------------------------------------------------------
    def _next_timeout(self) -> float:
        now = time.monotonic()
        times = [now + _MAX_SLEEP_S]
        kill = self.children.next_kill()
        if kill is not None:
            times.append(kill)
        times += [c.waiting[1] for c in self._conns.values() if c.waiting is not None]
        return max(0.0, min(times) - now)

    def _after_events(self) -> None:
        if self._stop_signal is not None and not self._closing:
            log.info("launcher: %s: stopping", signal.Signals(self._stop_signal).name)
            self._begin_shutdown(leave_running=False, grace_s=self.grace_s)
        for child in self.children.reap():
            if child.jail is not None:  # before any reply can report it ended: its jail goes first
                child.jail_end = child.jail.release()
            log.info("launcher: %s (pid %d) ended: %s", child.id, child.pid, child.record()["state"])
        self.children.kill_overdue(time.monotonic())
        for conn in list(self._conns.values()):
            self._resume(conn)

    def _wakeup(self, _fd: object, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self, _sock: object, _mask: int) -> None:
        if self._listener is None:
            return
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = _Conn(sock, sock.fileno())
        self._conns[conn.fd] = conn
        self._sel.register(sock, selectors.EVENT_READ, self._ready)

    def _ready(self, sock: Any, mask: int) -> None:
        conn = self._conns.get(sock.fileno())
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and self._conns.get(conn.fd) is conn:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return
            conn.inbuf += data
            self._resume(conn)

    def _resume(self, conn: _Conn) -> None:
        """Answer this connection's requests in order; a pending ``wait`` holds the ones after it."""
        if conn.waiting is not None:
            request, deadline = conn.waiting
            reply = self._try_wait(request, deadline)
            if reply is None:
                return
            conn.waiting = None
            self._send(conn, reply)
        while conn.waiting is None and not conn.close_after_flush and b"\n" in conn.inbuf:
            line, _, rest = bytes(conn.inbuf).partition(b"\n")
            conn.inbuf[:] = rest
            self._handle_line(conn, line)
        if len(conn.inbuf) > protocol.MAX_LINE:
            conn.inbuf.clear()
            conn.close_after_flush = True
            self._send(conn, protocol.error(f"request longer than {protocol.MAX_LINE} bytes; closing"))

    def _handle_line(self, conn: _Conn, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = protocol.decode_request(line)
            if isinstance(request, protocol.Wait):
                conn.waiting = (request, time.monotonic() + request.timeout_s)
                self._resume(conn)
                return
            reply = self._answer(request)
        except protocol.ProtocolError as exc:
            reply = protocol.error(str(exc))
        except Exception as exc:  # a bug in the launcher: that request fails, the launcher and its VMs go on
            log.warning("launcher: request failed", exc_info=True)
            reply = protocol.error(f"internal error: {type(exc).__name__}: {exc} (please report firelet's bug)")
        self._send(conn, reply)

    # -- the requests -----------------------------------------------------------------------
    def _answer(self, request: protocol.Request) -> dict[str, object]:
        if isinstance(request, protocol.Launch):
            return self._launch(request)
        if isinstance(request, protocol.List):
            return {"ok": True, "op": "list", "vms": [c.record() for c in self.children.all()]}
        if isinstance(request, protocol.Stop):
            return self._stop(request)
        if isinstance(request, protocol.Reap):
            return {"ok": True, "op": "reap", "vms": [c.record() for c in self.children.forget_ended()]}
        if isinstance(request, protocol.Ping):
            return {"ok": True, "op": "ping", "pid": os.getpid(), "children": len(self.children.running())}
        assert isinstance(request, protocol.Shutdown)
        ids = self._begin_shutdown(leave_running=request.leave_running, grace_s=request.grace_s)
        if request.leave_running:
            pids = {c.id: c.pid for c in self.children.running()}
            self.children.forget_all()
            return {"ok": True, "op": "shutdown", "left_running": pids,
                    "message": f"launcher stopped; {len(pids)} VMM(s) left running"}
        return {"ok": True, "op": "shutdown", "stopping": ids,
                "message": f"launcher stopping; {len(ids)} VMM(s) sent SIGTERM (SIGKILL after {request.grace_s:g} s)"}

    def _stop(self, request: protocol.Stop) -> dict[str, object]:
        signum = protocol.signal_number(request.signal)
        if request.all:
            targets = self.children.running()
        else:
            assert request.id is not None
            child = self.children.get(request.id)
            if child is None:
                raise protocol.ProtocolError(f"stop: no VM with id {request.id!r}")
            targets = [child] if child.running else []
        stopping = [c.id for c in targets if self.children.signal(c, signum, request.grace_s)]
        return {"ok": True, "op": "stop", "stopping": stopping}

    def _try_wait(self, request: protocol.Wait, deadline: float) -> dict[str, object] | None:
        if request.id is not None:
            child = self.children.get(request.id)
            if child is None:
                return protocol.error(f"wait: no VM with id {request.id!r}", "wait")
            group = [child]
        else:
            group = self.children.all()
        if all(not c.running for c in group):
            return {"ok": True, "op": "wait", "vms": [c.record() for c in group]}
        if time.monotonic() >= deadline:
            left = ", ".join(c.id for c in group if c.running)
            return protocol.error(f"wait: still running after {request.timeout_s:g} s: {left}", "wait")
        return None

    def _launch(self, request: protocol.Launch) -> dict[str, object]:
        if self._closing:
            raise protocol.ProtocolError(f"launch {request.id}: the launcher is shutting down")
        old = self.children.get(request.id)
        if old is not None and old.running:
            raise protocol.ProtocolError(f"launch {request.id}: that id is in use (pid {old.pid}); "
                                         "stop it or choose another id")
        if threading.active_count() != 1:  # fork safety: never fork with another thread mid-way
            raise protocol.ProtocolError(f"launch {request.id}: the launcher has threads; refusing to fork")
        jailed = Jailed(request.id, request.jail) if request.jail is not None else None  # nothing left on failure
        opened: list[int] = []
        try:
            stdio = (self._open(os.devnull, os.O_RDONLY, opened, request.id, "stdin"),
                     self._stream(request.stdout, 1, opened, request.id, "stdout"),
                     self._stream(request.stderr, 2, opened, request.id, "stderr"))
            sys.stdout.flush()
            sys.stderr.flush()
            pid = jailed.fork() if jailed is not None else os.fork()
            if pid == 0:  # pragma: no cover  (the child; coverage cannot follow it)
                from firelet.launcher.child import become_vmm

                become_vmm(list(request.argv), name=request.name, cwd=request.cwd, stdio=stdio,
                           handlers=self._handlers, drop_launcher=self._drop_in_child,
                           confine=jailed.confine_child if jailed is not None else None)
        except BaseException:
            if jailed is not None:
                jailed.abandon()
            raise
        finally:
            for fd in opened:
                os.close(fd)
        if jailed is not None:
            jailed.started(pid)  # the child confines itself; a failure ends it and unmakes the jail
        stderr_path = request.stderr if request.stderr.startswith("/") else None
        self.children.add(Child(request.id, pid, list(request.argv), stderr_path, jail=jailed))
        log.info("launcher: %s started (pid %d)%s", request.id, pid, f" in {jailed.root}" if jailed else "")
        reply: dict[str, object] = {"ok": True, "op": "launch", "id": request.id, "pid": pid}
        if jailed is not None:
            reply.update(jailed.record())
        return reply

    def _stream(self, where: str, inherit: int, opened: list[int], vm_id: str, what: str) -> int:
        if where == protocol.INHERIT:
            return inherit
        if where == protocol.NULL:
            return self._open(os.devnull, os.O_WRONLY, opened, vm_id, what)
        return self._open(where, os.O_WRONLY | os.O_CREAT | os.O_APPEND, opened, vm_id, what)

    @staticmethod
    def _open(path: str, flags: int, opened: list[int], vm_id: str, what: str) -> int:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
        except OSError as exc:
            raise protocol.ProtocolError(f"launch {vm_id}: {what} {path}: cannot open it: {exc.strerror}") from None
        opened.append(fd)
        return fd

    # -- replies ----------------------------------------------------------------------------
    def _send(self, conn: _Conn, reply: dict[str, object]) -> None:
        conn.outbuf += protocol.encode(reply)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the client went away
            self._drop(conn)
            return
        if not conn.outbuf and conn.close_after_flush:
            self._drop(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        self._sel.modify(conn.sock, events, self._ready)

    def _final_flush(self, conn: _Conn, deadline: float) -> None:
        try:
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sock.sendall(conn.outbuf)
        except OSError:
            pass

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        self._sel.unregister(conn.sock)
        conn.sock.close()


def serve(path: str, *, grace_s: float = 5.0, warm: bool = True) -> int:
    """``firelet launcher --socket PATH``: claim the path, warm up, listen, loop until told to stop."""
    claim_socket_path(path)  # fail fast, before the imports
    if warm:
        from firelet.launcher.warm import warm_up

        warm_up()
    server = LauncherServer(path, grace_s=grace_s, child_oom_adj=oom.protect_launcher())
    server.bind()
    print(f"firelet launcher: listening on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    return server.serve()
