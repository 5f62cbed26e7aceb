"""Ethernet frames a test guest writes to a TAP, and reading the kernel's answers back.

A TAP opened with IFF_VNET_HDR carries a struct virtio_net_hdr before every
frame (virtio 1.2 §5.1.6: 10 bytes without VIRTIO_NET_F_MRG_RXBUF); with no
offloads asked for, it is all zeros both ways.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 10
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def open_tap(name: str) -> int:
    """Attach to the existing TAP ``name`` the way the VMM does; the caller's thread picks the namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError:
        os.close(fd)
        raise
    return fd


def tap_flags(fd: int) -> int:
    ifr = bytearray(40)
    fcntl.ioctl(fd, TUNGETIFF, ifr)
    return int(struct.unpack_from("H", ifr, 16)[0])


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(op: int, sha: bytes, spa: IPv4Address, tha: bytes, tpa: IPv4Address) -> bytes:
    return struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + sha + spa.packed + tha + tpa.packed


def ipv4(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes, ident: int = 1) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                         src.packed, dst.packed)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def icmp_echo(ident: int, seq: int, data: bytes, kind: int = 8) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def send(fd: int, frame: bytes) -> None:
    assert os.write(fd, bytes(VNET_HDR_LEN) + frame) == VNET_HDR_LEN + len(frame)


def exchange(fd: int, frame: bytes, wanted: Callable[[bytes], bool], timeout: float = 20.0,
             resend_every: float = 1.0) -> tuple[bytes, int]:
    """Send ``frame`` and return the first frame from the TAP that ``wanted`` accepts, with how many times
    ``frame`` was sent. Like a real stack, the request is sent again each ``resend_every`` seconds: on a
    loaded machine the namespace's kernel may drop the first one while the TAP's carrier is still coming up.
    Other frames (IPv6 router solicitations and the like) are skipped."""
    deadline = time.monotonic() + timeout
    send(fd, frame)
    sent, next_send = 1, time.monotonic() + resend_every
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, max(0.0, next_send - time.monotonic())))
        if not ready:
            if time.monotonic() >= next_send:
                send(fd, frame)
                sent, next_send = sent + 1, time.monotonic() + resend_every
            continue
        data = os.read(fd, 65536)
        header, answer = data[:VNET_HDR_LEN], data[VNET_HDR_LEN:]
        assert header == bytes(VNET_HDR_LEN), header  # no offloads were asked for
        if wanted(answer):
            return answer, sent
    raise AssertionError(f"no wanted frame from the TAP within {timeout} s ({sent} requests sent)")


def is_arp_reply_for(frame: bytes, ip: IPv4Address) -> bool:
    return frame[12:14] == struct.pack("!H", ETH_P_ARP) and frame[20:22] == b"\0\2" and frame[28:32] == ip.packed


def is_icmp_echo_reply(frame: bytes, ident: int) -> bool:
    return (frame[12:14] == struct.pack("!H", ETH_P_IP) and frame[23] == 1 and frame[34] == 0
            and struct.unpack("!H", frame[38:40])[0] == ident)
