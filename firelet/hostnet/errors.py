"""The errors of host networking setup: one line saying what is wrong and what to do."""

from __future__ import annotations

from firelet.errors import FireletError, MissingToolError, UsageError


class HostNetError(FireletError):
    """A setup step the kernel or the host refused (a netlink error, nft failing, ...)."""


class NameTaken(UsageError):
    """A setup, link, namespace or nft table with that name exists already."""


class BadInput(UsageError):
    """An invalid name, address or uid."""


class NotPermitted(FireletError):
    """The caller lacks a capability the setup needs (CAP_NET_ADMIN, CAP_SYS_ADMIN)."""

    exit_code = 77  # EX_NOPERM in sysexits.h


class MissingKernelSupport(MissingToolError):
    """/dev/net/tun, nftables or the nft program is not there."""

    exit_code = 69  # EX_UNAVAILABLE in sysexits.h
