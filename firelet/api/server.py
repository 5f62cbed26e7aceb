"""A small, strict HTTP/1.1 server on a Unix domain socket, in its own thread.

Firecracker's API is a dozen JSON endpoints, so a hand-written parser on
``selectors`` serves it with less import cost and fewer surprises than
``http.server``: one thread, non-blocking sockets, a bounded buffer per
connection and a bounded number of connections. Malformed HTTP gets a 400 and
a closed connection; a client that vanishes mid-request is simply dropped.
Nothing a client sends can raise out of the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable

from firelet import seccomp
from firelet.errors import FireletError

log = logging.getLogger("firelet.api")

#: Firecracker's default for ``--http-api-max-payload-size`` (bytes).
DEFAULT_MAX_PAYLOAD = 51200
#: Request line plus headers; Firecracker's clients send a few hundred bytes.
MAX_HEADER_BYTES = 8192
#: Open connections kept at once; the least recently active one is dropped for a newcomer.
MAX_CONNECTIONS = 64
_RECV_CHUNK = 65536
_METHODS = frozenset({"GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "OPTIONS"})
# RFC 9110 §15 reason phrases for the codes we send.
_REASONS = {100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request",
            404: "Not Found", 413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Request:
    """One parsed request (plain class, not a dataclass: ``dataclasses`` costs ms at import)."""

    __slots__ = ("method", "path", "query", "version", "headers", "body")

    def __init__(self, method: str, path: str, query: str, version: str,
                 headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.headers = headers
        self.body = body


class Response:
    __slots__ = ("status", "body", "content_type", "close", "headers")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json",
                 close: bool = False, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.content_type, self.close = status, body, content_type, close
        #: Extra header lines (e.g. Firecracker's ``Deprecation: true``); names and values are ASCII.
        self.headers = headers


def fault(message: str, status: int = 400) -> Response:
    """Firecracker's error shape: ``{"fault_message": "..."}``."""
    import json  # only on the error path

    return Response(status, json.dumps({"fault_message": message}).encode())


class _BadRequest(Exception):
    """Malformed HTTP: answered with a 400 and the connection closed."""


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "close_after_write", "sent_continue", "last_active")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.close_after_write = False
        self.sent_continue = False
        self.last_active = time.monotonic()


def bind_unix_socket(path: str) -> socket.socket:
    """Listen on ``path``: replace a stale socket file, refuse to clobber a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise FireletError(f"API socket path {path} exists and is not a socket; remove it or "
                               "choose another --api-sock")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody is listening
        else:
            raise FireletError(f"API socket {path} is in use by a running process; stop it or choose "
                               "another --api-sock")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise FireletError(f"cannot create API socket {path}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ApiServer:
    """Serves ``handler(request) -> response`` on a listening Unix socket from one thread."""

    def __init__(self, listener: socket.socket, handler: Callable[[Request], Response], *,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._listener = listener
        self._handler = handler
        self.max_payload = max_payload
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="fc_api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every connection (the socket file is the caller's to remove)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        seccomp.confine("api")  # before the first request: a client never talks to an unconfined thread
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping:
                for key, events in self._sel.select(timeout=1.0):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._wake_r:
                        continue
                    else:
                        self._service(key.data, events)
        finally:
            for conn in list(self._conns.values()):
                self._drop(conn)
            self._sel.close()
            self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- connections ---------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):  # drain the backlog, but keep serving others during a flood
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off, never die
                log.warning("API accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self._drop(min(self._conns.values(), key=lambda c: c.last_active))
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _service(self, conn: _Conn, events: int) -> None:
        conn.last_active = time.monotonic()
        if events & selectors.EVENT_WRITE:
            if not self._send(conn):
                return
            self._process(conn)  # pipelined requests waiting behind the response just sent
        elif events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(conn)
                return
            if not data:  # peer closed, possibly mid-request: nothing to answer
                self._drop(conn)
                return
            conn.inbuf += data
            self._process(conn)
        if conn.sock.fileno() in self._conns:
            # While a response is pending we stop reading: a client that pipelines
            # without reading cannot make us buffer without bound.
            want = selectors.EVENT_WRITE if conn.outbuf else selectors.EVENT_READ
            self._sel.modify(conn.sock, want, conn)

    def _send(self, conn: _Conn) -> bool:
        """Send what is pending; False if the connection is gone (dropped or closed after the answer)."""
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._drop(conn)
                return False
            del conn.outbuf[:sent]
        if conn.close_after_write:
            self._drop(conn)
            return False
        return True

    def _process(self, conn: _Conn) -> None:
        """Answer complete requests in the buffer, one at a time, while answers go out at once."""
        while not conn.outbuf and conn.sock.fileno() in self._conns:
            try:
                request = self._parse(conn)
            except _BadRequest as exc:
                self._queue(conn, fault(str(exc)), close=True)
                return
            if request is None:
                return
            try:
                response = self._handler(request)
            except Exception as exc:  # a bug in a route: report it, keep serving
                log.error("API handler failed on %s %s", request.method, request.path, exc_info=True)
                response = fault(f"Internal error: {type(exc).__name__}: {exc}", 500)
            keep_alive = request.version == "HTTP/1.1"
            conn_hdr = request.headers.get("connection", "").lower()
            if conn_hdr == "close":
                keep_alive = False
            elif conn_hdr == "keep-alive":
                keep_alive = True
            self._queue(conn, response, close=response.close or not keep_alive)

    def _queue(self, conn: _Conn, response: Response, *, close: bool) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        head = [f"HTTP/1.1 {response.status} {reason}", "Server: Firecracker API"]
        head.append("Connection: close" if close else "Connection: keep-alive")
        if response.headers:
            head.extend(f"{name}: {value}" for name, value in response.headers.items())
        if response.status != 204:
            head.append(f"Content-Type: {response.content_type}")
            head.append(f"Content-Length: {len(response.body)}")
        conn.outbuf += ("\r\n".join(head) + "\r\n\r\n").encode()
        if response.status != 204:
            conn.outbuf += response.body
        conn.close_after_write = close
        self._send(conn)

    # -- parsing -------------------------------------------------------------
    def _parse(self, conn: _Conn) -> Request | None:
        buf = conn.inbuf
        while buf.startswith(b"\r\n"):  # RFC 9112 §2.2: ignore empty lines before a request
            del buf[:2]
        end = buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise _BadRequest(f"Request headers are larger than the limit of {MAX_HEADER_BYTES} bytes.")
            return None
        try:
            head = bytes(buf[:end]).decode("ascii")
        except UnicodeDecodeError:
            raise _BadRequest("Request headers are not ASCII.") from None
        lines = head.split("\r\n")
        method, path, query, version = _parse_request_line(lines[0])
        headers = _parse_headers(lines[1:])
        if "transfer-encoding" in headers:
            raise _BadRequest("Transfer-Encoding is not supported; send a Content-Length.")
        length = _content_length(headers.get("content-length", "0"))
        if length > self.max_payload:
            raise _BadRequest(f"Request payload with size {length} is larger than the limit of "
                              f"{self.max_payload} allowed by server.")
        total = end + 4 + length
        if len(buf) < total:
            if headers.get("expect", "").lower() == "100-continue" and not conn.sent_continue:
                conn.sent_continue = True
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    pass
            return None
        body = bytes(buf[end + 4:total])
        del buf[:total]
        conn.sent_continue = False
        return Request(method, path, query, version, headers, body)


def _parse_request_line(line: str) -> tuple[str, str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _BadRequest("Invalid HTTP request line.")
    method, target, version = parts
    if method not in _METHODS:
        raise _BadRequest(f"Invalid HTTP method {method[:16]!r}.")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("Unsupported HTTP version; use HTTP/1.1.")
    if target.startswith("http://"):  # absolute form (RFC 9112 §3.2.2): keep only the path
        slash = target.find("/", len("http://"))
        target = target[slash:] if slash >= 0 else "/"
    if not target.startswith("/") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in target):
        raise _BadRequest("Invalid request target.")
    path, _, query = target.partition("?")
    return method, path, query, version


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name or "\t" in name:
            raise _BadRequest("Invalid HTTP header line.")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length" and key in headers and headers[key] != value:
            raise _BadRequest("Conflicting Content-Length headers.")
        headers[key] = value
    return headers


def _content_length(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise _BadRequest("Invalid Content-Length header.")
    return int(text)


def remove_socket_file(path: str) -> None:
    """Remove our socket file on exit; a file someone else put there in the meantime is left alone."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove API socket %s: %s", path, exc)
