"""Which address a request really came from, believing only trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tracker.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(spec: str) -> tuple[Network, ...]:
    """Parse `TRUSTED_PROXIES` ("10.0.0.1, 192.168.0.0/16") into networks."""
    networks = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as e:
            raise ConfigError(
                f"TRUSTED_PROXIES entry {part!r} is not an IP address or CIDR network"
            ) from e
    return tuple(networks)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str:
    """Return the client address.

    X-Forwarded-For is read right to left and only while the hop that added an
    entry is a trusted proxy, so a client cannot forge its address by sending
    the header itself.
    """
    address = remote_addr or ""
    if not forwarded_for or not trusted or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not _trusted(hop, trusted):
            break
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return remote_addr or ""


def truncate_ip(address: str) -> str:
    """Keep only the network part of an address: IPv4 /24 (last octet 0), IPv6 /48.

    Plain IPv4 is cut as a string (this runs per collected event); anything
    else goes through `ipaddress`, and what is not an address becomes "".
    """
    if "." in address and ":" not in address:
        head, dot, _ = address.rpartition(".")
        return head + dot + "0" if head.count(".") == 2 else ""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return truncate_ip(str(ip.ipv4_mapped))
    if isinstance(ip, ipaddress.IPv4Address):
        return truncate_ip(str(ip))
    return str(ipaddress.IPv6Address(int(ip) >> 80 << 80))
