"""`allowed_peers`: the networks a listener (MLLP or HTTP) accepts callers from."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class PeerFilter:
    """Empty = anyone; else the peer's address must be in one of the networks.
    An IPv4 address seen as IPv6 (`::ffff:10.1.2.3`) is matched as IPv4."""

    def __init__(self, allowed: Iterable[str]):
        self.networks = [ipaddress.ip_network(p, strict=False) for p in allowed]

    def allows(self, ip: str) -> bool:
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)
