"""Which addresses a webhook may be sent to: the server-side request forgery policy.

Everything that is not a public unicast address is refused, with a reason, unless it lies
inside one of the operator's ``WEBHOOK_ALLOWED_NETWORKS``. IPv6 forms that embed an IPv4
address (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address they carry.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# The instance metadata services of the big clouds (AWS also answers on IPv6).
METADATA_ADDRESSES: Final = frozenset(
    {IPv4Address("169.254.169.254"), IPv6Address("fd00:ec2::254")}
)

# Checked in order; the first match gives the reason. Anything else that Python does not
# call globally routable is refused as reserved.
_REFUSED: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (IPv4Network(net) if ":" not in net else IPv6Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private (RFC 1918) address"),
        ("172.16.0.0/12", "a private (RFC 1918) address"),
        ("192.168.0.0/16", "a private (RFC 1918) address"),
        ("169.254.0.0/16", "a link-local address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("192.0.0.0/24", "a reserved address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fc00::/7", "a unique-local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

_NAT64: Final = IPv6Network("64:ff9b::/96")
_COMPATIBLE: Final = IPv6Network("::/96")


def parse_address(text: str) -> IPAddress:
    """An address as ``getaddrinfo`` gives it, without an IPv6 zone (``fe80::1%eth0``)."""
    return ip_address(text.split("%", 1)[0])


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the embedding forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    """Refuses non-public addresses unless an allowed network contains them."""

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allowed = tuple(allowed)

    def _allowed(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)

    def refusal(self, address: IPAddress | str) -> str | None:
        """Why ``address`` must not be connected to, or None if it may be."""
        ip = parse_address(address) if isinstance(address, str) else address
        inner = embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
        if self._allowed(ip) or (inner is not None and self._allowed(inner)):
            return None
        if inner is not None:
            reason = self.refusal(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
        if ip in METADATA_ADDRESSES:
            return "the cloud metadata address"
        for network, reason in _REFUSED:
            if ip.version == network.version and ip in network:
                return reason
        if not ip.is_global:
            return "a reserved address"
        return None
