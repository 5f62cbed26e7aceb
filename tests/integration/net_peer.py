"""The host end of the virtio-net tests: a TCP sink and a TCP source, and a raw-frame flooder.

Run inside the test's network namespace (``GuestNetns.argv``)::

    python3 net_peer.py serve HOST SIZE BLOCK  # port 5001: sink, port 5002: source of SIZE bytes
    python3 net_peer.py flood TAP SRC DST MAC   # UDP frames SRC -> DST (at MAC) into TAP until killed

The sink reads one connection to its end, answers ``<md5> <bytes>`` and closes; the
source sends SIZE bytes and closes. Each prints ``sink|source <md5> <bytes> <seconds>``
on stdout per connection, so the test compares both ends' checksums. The bytes are one
random block of BLOCK bytes (a prime) repeated (the guest builds its stream the same way),
so a lost, repeated or reordered segment changes the checksum.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

SINK_PORT, SOURCE_PORT = 5001, 5002
CHUNK = 1 << 16


def _report(kind: str, digest: str, count: int, started: float) -> None:
    print(f"{kind} {digest} {count} {time.monotonic() - started:.2f}", flush=True)


def _sink(conn: socket.socket) -> None:
    md5, count, started = hashlib.md5(), 0, time.monotonic()
    while data := conn.recv(CHUNK * 4):
        md5.update(data)
        count += len(data)
    conn.sendall(f"{md5.hexdigest()} {count}\n".encode())
    _report("sink", md5.hexdigest(), count, started)


def _source(conn: socket.socket, size: int, block_size: int) -> None:
    block = os.urandom(block_size)
    md5, sent, started = hashlib.md5(), 0, time.monotonic()
    view = memoryview(block)
    while sent < size:
        offset = sent % block_size
        piece = view[offset:offset + min(CHUNK * 4, size - sent, block_size - offset)]
        conn.sendall(piece)
        md5.update(piece)
        sent += len(piece)
    conn.shutdown(socket.SHUT_WR)
    _report("source", md5.hexdigest(), sent, started)


def _serve(host: str, port: int, handle: Callable[[socket.socket], None]) -> None:
    listener = socket.create_server((host, port))
    while True:
        conn, _ = listener.accept()
        with conn:
            handle(conn)


def serve(host: str, size: int, block_size: int) -> None:
    threading.Thread(target=_serve, args=(host, SINK_PORT, _sink), daemon=True).start()
    _serve(host, SOURCE_PORT, lambda conn: _source(conn, size, block_size))


def udp_frame(src: str, dst: str, dst_mac: str, payload: bytes) -> bytes:
    """An Ethernet frame holding one UDP datagram to the discard port (RFC 863), UDP checksum 0 (none)."""
    total = 20 + 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:]
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0)
    return bytes.fromhex(dst_mac.replace(":", "")) + b"\x02\x00\x00\x00\x00\x01\x08\x00" + header + udp + payload


def flood(tap: str, src: str, dst: str, dst_mac: str) -> None:
    """Write UDP frames for the guest into ``tap`` as fast as the kernel takes them (no ARP needed)."""
    frame = udp_frame(src, dst, dst_mac, bytes(1000))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((tap, 0))
    print("flooding", flush=True)
    while True:
        try:
            sock.send(frame)
        except OSError:  # ENOBUFS: the TAP's queue is full; keep pushing
            time.sleep(0.0005)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        flood(*sys.argv[2:6])
