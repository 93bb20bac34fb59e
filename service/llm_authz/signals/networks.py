"""Where a request comes from, as a network: prefix, kind, country and autonomous system.

Public addresses are grouped by prefix (/24 for IPv4, /48 for IPv6) and placed in a country with
iptocc, which ships the Regional Internet Registries' delegation data inside its wheel (no
network access, refreshed with each release). Private, loopback and other non-public addresses
have no country: they count by prefix only. An operator's own labels (`--signals-networks`: a
YAML list of CIDRs with a name, country and/or AS) come first, longest prefix winning, so an
office or a VPN egress range is one network wherever in it a request comes from.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from llm_authz.errors import ConfigError

IPV4_PREFIX = 24
IPV6_PREFIX = 48


@dataclass(frozen=True, slots=True)
class Network:
    prefix: str  # the CIDR requests are grouped by
    kind: str  # public | private | loopback | link_local | reserved | unknown | labelled
    country: str | None  # ISO 3166-1 alpha-2
    asn: str | None
    label: str | None  # the operator's name for a labelled network

    def as_input(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "kind": self.kind, "country": self.country, "asn": self.asn,
                "label": self.label}


UNKNOWN = Network(prefix="unknown", kind="unknown", country=None, asn=None, label=None)


@dataclass(frozen=True, slots=True)
class _Label:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    name: str | None
    country: str | None
    asn: str | None


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_private:
        return "private"
    if ip.is_global:
        return "public"
    return "reserved"


@lru_cache(maxsize=1)
def _country_lookup() -> Any:
    import iptocc

    return iptocc.country_code


class NetworkLocator:
    """Address → Network. Lookups are cached per address (a few µs uncached)."""

    def __init__(self, labels: list[_Label] | None = None):
        # longest prefix first, so the most specific label wins
        self._labels = sorted(labels or [], key=lambda lb: lb.network.prefixlen, reverse=True)
        self.locate = lru_cache(maxsize=65536)(self._locate)

    @classmethod
    def from_file(cls, path: Path | None) -> "NetworkLocator":
        return cls(load_labels(path) if path else None)

    def _locate(self, address: str | None) -> Network:
        if not address:
            return UNKNOWN
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return UNKNOWN
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for label in self._labels:
            if ip.version == label.network.version and ip in label.network:
                return Network(prefix=str(label.network), kind="labelled", country=label.country,
                               asn=label.asn, label=label.name)
        bits = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
        prefix = str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
        kind = _kind(ip)
        country = _country_lookup()(str(ip)) if kind == "public" else None
        return Network(prefix=prefix, kind=kind, country=country, asn=None, label=None)


def load_labels(path: Path) -> list[_Label]:
    """Read the operator's network labels; raise ConfigError naming the entry that is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read network labels: {exc}") from exc
    entries = raw.get("networks") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of networks (or a mapping with `networks:`)")
    labels = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("cidr"), str):
            raise ConfigError(f"{path}: entry {i} needs a `cidr`")
        unknown = set(entry) - {"cidr", "name", "country", "asn"}
        if unknown:
            raise ConfigError(f"{path}: entry {i}: unknown key(s) {sorted(unknown)}")
        try:
            network = ipaddress.ip_network(entry["cidr"], strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: entry {i}: {exc}") from exc
        country = entry.get("country")
        if country is not None and not (isinstance(country, str) and len(country) == 2 and country.isalpha()):
            raise ConfigError(f"{path}: entry {i}: country must be a two-letter code")
        labels.append(_Label(network, _opt_str(entry.get("name")), country.upper() if country else None,
                             _opt_str(entry.get("asn"))))
    return labels


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
