"""The HTTP layer: strict parsing, bounded buffers, and no way for a client to wedge or crash it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from api_fake_backend import (
    FakeBackend,
    call,
    parse_response,
    raw_exchange,
    request_bytes,
    serve,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firelet.api import server as srv
from firelet.api.routes import Api
from firelet.errors import FireletError


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "api.sock"
    api = Api(instance_id="srv", backend_factory=FakeBackend)
    with serve(api, path, max_payload=1024):
        yield path


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def _read_response(f: BinaryIO) -> bytes:
    """Read exactly one response (headers + Content-Length body) from a buffered keep-alive stream."""
    head = b""
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        head += line
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    assert head, "server closed the connection"
    return head + b"\r\n" + f.read(length)


def test_keep_alive_serves_many_requests_on_one_connection(sock: Path) -> None:
    with _connect(sock) as s, s.makefile("rb") as f:
        for _ in range(50):
            s.sendall(request_bytes("GET", "/", close=False))
            status, body = parse_response(_read_response(f))
            assert status == 200 and body["id"] == "srv"


def test_pipelined_requests_are_answered_in_order(sock: Path) -> None:
    with _connect(sock) as s, s.makefile("rb") as f:
        s.sendall(request_bytes("GET", "/", close=False) * 300 + request_bytes("GET", "/version", close=False))
        for _ in range(300):
            assert parse_response(_read_response(f))[0] == 200
        assert "firecracker_version" in parse_response(_read_response(f))[1]


def test_burst_of_1000_connections(sock: Path) -> None:
    results: list[int] = []

    def client(n: int) -> None:
        for _ in range(n):
            results.append(call(sock, "GET", "/")[0])

    threads = [threading.Thread(target=client, args=(125,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(200) == 1000


def test_oversized_payload_is_refused_with_firecrackers_message(sock: Path) -> None:
    status, body = call(sock, "PUT", "/mmds", {"k": "x" * 2000})
    assert status == 400
    assert body["fault_message"].startswith("Request payload with size ")
    assert "larger than the limit of 1024 allowed by server" in body["fault_message"]
    assert call(sock, "GET", "/")[0] == 200


def test_client_disconnecting_mid_body_is_dropped(sock: Path) -> None:
    for _ in range(20):
        with _connect(sock) as s:
            s.sendall(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"kernel_")
    assert call(sock, "GET", "/")[0] == 200


def test_client_disconnecting_mid_headers_and_before_reading(sock: Path) -> None:
    for _ in range(20):
        with _connect(sock) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: loc")
        with _connect(sock) as s:
            s.sendall(request_bytes("GET", "/", close=False) * 50)  # never reads the answers
    assert call(sock, "GET", "/")[0] == 200


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"BREW / HTTP/1.1\r\n\r\n",
    b"GET nope HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
    b"PUT /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
    b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
])
def test_malformed_http_gets_400_and_close(sock: Path, data: bytes) -> None:
    status, body = parse_response(raw_exchange(sock, data))
    assert status == 400 and body["fault_message"]
    assert call(sock, "GET", "/")[0] == 200


def test_expect_100_continue(sock: Path) -> None:
    with _connect(sock) as s:
        body = b'{"state": "Paused"}'
        s.sendall(b"PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        with s.makefile("rb") as f:
            assert parse_response(_read_response(f))[0] == 400  # not started yet: a fault, properly framed


def test_http_1_0_closes_after_the_answer(sock: Path) -> None:
    data = raw_exchange(sock, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data


def test_idle_connections_are_evicted_for_new_ones(sock: Path) -> None:
    idle = [_connect(sock) for _ in range(srv.MAX_CONNECTIONS + 10)]
    try:
        time.sleep(0.2)
        assert call(sock, "GET", "/")[0] == 200
    finally:
        for s in idle:
            s.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.lists(
    st.sampled_from([b"GET", b"PUT", b" ", b"/", b"HTTP/1.1", b"\r\n", b":", b"Content-Length", b"0", b"99",
                     b"{", b"}", b"/actions", b"\x00", b"\r\n\r\n", b"Connection: close"]), max_size=30).map(b"".join))
def test_garbage_never_crashes_the_server(sock: Path, data: bytes) -> None:
    with _connect(sock) as s:
        s.settimeout(0.5)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    assert call(sock, "GET", "/")[0] == 200


def test_live_socket_is_not_clobbered_and_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    live = srv.bind_unix_socket(str(path))
    try:
        with pytest.raises(FireletError, match="in use by a running process"):
            srv.bind_unix_socket(str(path))
    finally:
        live.close()  # now stale: the file remains, nobody listens
    assert path.exists()
    again = srv.bind_unix_socket(str(path))
    again.close()
    srv.remove_socket_file(str(path))
    assert not path.exists()


def test_non_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(FireletError, match="exists and is not a socket"):
        srv.bind_unix_socket(str(path))
    srv.remove_socket_file(str(path))
    assert path.read_text() == "keep me"


def test_handler_bug_is_a_500_not_a_dead_server(tmp_path: Path) -> None:
    def handler(req: srv.Request) -> srv.Response:
        if req.path == "/boom":
            raise RuntimeError("bug")
        return srv.Response(200, b"{}")

    path = tmp_path / "s"
    server = srv.ApiServer(srv.bind_unix_socket(str(path)), handler)
    server.start()
    try:
        status, body = call(path, "GET", "/boom")
        assert status == 500 and "RuntimeError" in body["fault_message"]
        assert call(path, "GET", "/ok")[0] == 200
    finally:
        server.stop()
