"""``client_address``: X-Forwarded-For is honoured only from trusted proxies, read from the right."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.middleware import client_address, parse_networks

LOOPBACK = parse_networks(["127.0.0.1", "::1"])
PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"])


def test_parse_networks_accepts_addresses_and_cidr_ranges() -> None:
    networks = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])

    assert networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )


def test_parse_networks_is_not_strict_about_host_bits() -> None:
    assert parse_networks(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)


def test_parse_networks_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        parse_networks(["not-a-network"])


def test_no_header_gives_the_peer() -> None:
    assert client_address("127.0.0.1", None, LOOPBACK) == "127.0.0.1"
    assert client_address("127.0.0.1", "", LOOPBACK) == "127.0.0.1"


def test_no_peer_gives_none_even_with_a_header() -> None:
    assert client_address(None, "1.2.3.4", LOOPBACK) is None


def test_header_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.7", "1.2.3.4", LOOPBACK) == "203.0.113.7"


def test_header_is_ignored_when_nothing_is_trusted() -> None:
    assert client_address("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"


def test_header_from_a_trusted_peer_is_honoured() -> None:
    assert client_address("127.0.0.1", "198.51.100.20", LOOPBACK) == "198.51.100.20"


def test_hops_are_trimmed() -> None:
    assert client_address("127.0.0.1", "  198.51.100.20  ", LOOPBACK) == "198.51.100.20"


def test_a_spoofed_leftmost_hop_is_ignored_behind_one_proxy() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; the proxy appended the real address.
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.20", LOOPBACK) == "198.51.100.20"


def test_rightmost_untrusted_hop_wins_behind_two_proxies() -> None:
    # client (spoofs 6.6.6.6) -> edge proxy 10.0.0.2 (appends client) -> inner proxy 10.0.0.3 (appends edge)
    header = "6.6.6.6, 198.51.100.20, 10.0.0.2"

    assert client_address("10.0.0.3", header, PROXIES) == "198.51.100.20"


def test_only_the_first_proxy_is_trusted_when_the_second_is_not_in_the_list() -> None:
    # 10.0.0.2 is not trusted here, so it is the client as far as the app can tell.
    assert client_address("127.0.0.1", "198.51.100.20, 10.0.0.2", LOOPBACK) == "10.0.0.2"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert client_address("10.0.0.3", "10.0.0.1, 10.0.0.2", PROXIES) == "10.0.0.1"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "1.2.3.4, garbage",
        "1.2.3.4, unknown",
        "1.2.3.4:5678",
        "999.1.1.1",
        ", , ,",
        "<script>",
    ],
)
def test_a_garbage_rightmost_hop_falls_back_to_the_peer(header: str) -> None:
    assert client_address("127.0.0.1", header, LOOPBACK) == "127.0.0.1"


def test_garbage_to_the_left_of_a_valid_client_does_not_matter() -> None:
    assert client_address("127.0.0.1", "garbage, 198.51.100.20", LOOPBACK) == "198.51.100.20"


def test_all_trusted_hops_with_garbage_leftmost_falls_back_to_the_peer() -> None:
    assert client_address("10.0.0.3", "nonsense, 10.0.0.1", PROXIES) == "10.0.0.3"


def test_ipv6_trusted_peer_and_ipv6_client() -> None:
    assert client_address("::1", "2001:db8::42", LOOPBACK) == "2001:db8::42"


def test_ipv6_untrusted_peer_is_not_overridden() -> None:
    assert client_address("2001:db8::99", "198.51.100.20", LOOPBACK) == "2001:db8::99"


def test_ipv6_proxy_range_is_skipped() -> None:
    assert client_address("fd00::3", "2001:db8::42, fd00::2", PROXIES) == "2001:db8::42"


def test_mixed_ipv4_client_behind_ipv6_proxy() -> None:
    assert client_address("::1", "198.51.100.20", LOOPBACK) == "198.51.100.20"


@pytest.mark.parametrize("peer", ["10.0.0.1", "10.255.255.254", "10.128.0.9"])
def test_any_address_in_a_trusted_cidr_range_is_trusted(peer: str) -> None:
    assert client_address(peer, "198.51.100.20", PROXIES) == "198.51.100.20"


@pytest.mark.parametrize("peer", ["11.0.0.1", "9.255.255.255", "127.0.0.2", "fe00::1"])
def test_addresses_just_outside_the_trusted_ranges_are_not(peer: str) -> None:
    assert client_address(peer, "198.51.100.20", PROXIES) == peer


def _untrusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """As the code judges it: an IPv4-mapped peer is its IPv4 address (``::ffff:10.0.0.1`` is trusted)."""
    return not any(_unmapped(str(address)) in network for network in PROXIES)


_headers = st.one_of(
    st.text(max_size=200),
    st.lists(st.ip_addresses().map(str), max_size=6).map(", ".join),
    st.lists(
        st.sampled_from(["10.0.0.1", "127.0.0.1", "::1", "fd00::5", "1.2.3.4", "junk", ""]), max_size=6
    ).map(",".join),
)


_mapped_v4 = (
    st.ip_addresses(v=4) | st.sampled_from(["10.0.0.0", "10.9.8.7", "127.0.0.1"]).map(ipaddress.IPv4Address)
).map(lambda ip: ipaddress.IPv6Address(f"::ffff:{ip}"))


@given(peer=(st.ip_addresses() | _mapped_v4).filter(_untrusted).map(str), header=st.none() | _headers)
def test_an_untrusted_peer_is_always_the_client(peer: str, header: str | None) -> None:
    assert ipaddress.ip_address(client_address(peer, header, PROXIES) or "") == _unmapped(peer)


@given(peer=st.sampled_from(["10.0.0.1", "127.0.0.1", "::1", "fd00::5"]), header=_headers)
def test_a_trusted_peer_yields_the_peer_or_an_ip_from_the_header(peer: str, header: str) -> None:
    result = client_address(peer, header, PROXIES)

    assert result is not None
    if result != peer:
        hops = [hop.strip() for hop in header.split(",")]
        assert _unmapped(result) in [_unmapped(hop) for hop in hops if _is_address(hop)]


def _unmapped(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def test_a_proxy_reaching_a_dual_stack_socket_over_ipv4_is_trusted() -> None:
    """Bound to ``::``, granian reports an IPv4 peer as ``::ffff:a.b.c.d``: still the trusted proxy."""
    assert client_address("::ffff:10.0.0.5", "6.6.6.6, 1.2.3.4", PROXIES) == "1.2.3.4"
    assert client_address("::ffff:127.0.0.1", "198.51.100.20", LOOPBACK) == "198.51.100.20"


def test_a_trusted_hop_written_ipv4_mapped_is_skipped() -> None:
    assert client_address("10.0.0.1", "1.2.3.4, ::ffff:10.0.0.5", PROXIES) == "1.2.3.4"


@pytest.mark.parametrize("forwarded_for", [None, "1.2.3.4"])
def test_an_ipv4_mapped_client_is_named_by_its_ipv4_address(forwarded_for: str | None) -> None:
    """One client, one spelling: the limiter's keys, the login throttle and the logs agree."""
    assert client_address("::ffff:203.0.113.7", forwarded_for, LOOPBACK) == "203.0.113.7"
    assert client_address("127.0.0.1", "::FFFF:203.0.113.7", LOOPBACK) == "203.0.113.7"


@pytest.mark.parametrize("entry", ["::ffff:10.0.0.5", "::ffff:10.0.0.0/104", "10.0.0.5"])
def test_a_trusted_proxy_written_ipv4_mapped_still_trusts_it(entry: str) -> None:
    """Behind a dual-stack socket an operator may have written the proxy as it was reported."""
    trusted = parse_networks([entry])

    assert client_address("::ffff:10.0.0.5", "203.0.113.7", trusted) == "203.0.113.7"
    assert client_address("10.0.0.5", "203.0.113.7", trusted) == "203.0.113.7"


@pytest.mark.parametrize("entry", ["::ffff:0:0/96", "::/0"])
def test_an_ipv6_network_holding_every_mapped_address_trusts_every_ipv4_peer(entry: str) -> None:
    assert client_address("10.0.0.5", "203.0.113.7", parse_networks([entry])) == "203.0.113.7"


def test_mapped_entries_are_read_as_ipv4_networks() -> None:
    assert parse_networks(["::ffff:10.0.0.0/104", "fd00::/8"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )


def test_a_mapped_peer_inside_a_trusted_range_is_trusted() -> None:
    """The case Hypothesis found in CI: ``::ffff:10.0.0.0`` is 10.0.0.0, inside 10.0.0.0/8."""
    assert client_address("::ffff:a00:0", "198.51.100.20", PROXIES) == "198.51.100.20"
