"""Egress rule parsing and matching (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.egress import EgressRules, parse_entry, validate_entries


def test_each_kind_of_entry_is_recognised() -> None:
    assert parse_entry("*") == ("any", None)
    assert parse_entry("API.Example.com.") == ("name", "api.example.com")
    assert parse_entry("*.example.com") == ("suffix", "example.com")
    assert parse_entry("10.1.2.3") == ("network", ipaddress.ip_network("10.1.2.3/32"))
    assert parse_entry("10.1.0.0/16") == ("network", ipaddress.ip_network("10.1.0.0/16"))
    assert parse_entry("2001:db8::/32") == ("network", ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    "entry",
    [
        "",
        " example.com",
        "example.com ",
        "https://example.com",
        "example.com:443",
        "exa mple.com",
        "-bad.com",
        "bad-.com",
        "a..b",
        "**.example.com",
        "*example.com",
        "a.*.example.com",
        "*.",
        "*.*",
        "10.0.0.1/24",  # host bits set: ambiguous, refused
        "10.0.0.0/33",
        "1.2.3",  # all-numeric last label: neither an IP nor a name
        "300.1.1.1",
        "010.1.1.1",
        "x" * 64 + ".com",
        "ex_ample.com",
        "exämple.com",
    ],
)
def test_invalid_entries_raise_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_entry(entry)
    assert repr(entry) in str(info.value)


def test_validate_entries_names_every_bad_entry() -> None:
    with pytest.raises(ValueError) as info:
        validate_entries(["ok.com", "bad entry", "10.0.0.1/8"])
    assert "'bad entry'" in str(info.value) and "'10.0.0.1/8'" in str(info.value)
    validate_entries(["ok.com", "*.ok.com", "1.2.3.4", "*"])


def test_name_rules() -> None:
    rules = EgressRules.parse(["allowed.test", "*.wild.test"])
    assert rules.allows_name("allowed.test")
    assert rules.allows_name("ALLOWED.test.")
    assert not rules.allows_name("api.allowed.test")  # an exact name does not cover children
    assert rules.allows_name("api.wild.test")
    assert rules.allows_name("a.b.wild.test")
    assert not rules.allows_name("wild.test")  # `*.suffix` does not cover the suffix itself
    assert not rules.allows_name("evilwild.test")
    assert not rules.allows_name("wild.test.evil.com")
    assert not rules.allows_name("other.test")
    assert not rules.allows_name("not a name")
    assert rules.resolves_names


def test_address_rules() -> None:
    rules = EgressRules.parse(["10.1.2.3", "192.168.0.0/16", "allowed.test"])
    assert rules.allows_address("10.1.2.3")
    assert not rules.allows_address("10.1.2.4")
    assert rules.allows_address("192.168.44.5")
    assert not rules.allows_address("192.169.0.1")
    assert not rules.allows_address("::1")
    assert not rules.allows_address("garbage")


def test_star_allows_everything_and_empty_allows_nothing() -> None:
    star = EgressRules.parse(["*"])
    assert star.allows_name("anything.example") and star.allows_address("8.8.8.8")
    empty = EgressRules.parse([])
    assert not empty.allows_name("anything.example") and not empty.allows_address("8.8.8.8")
    assert not empty.resolves_names
    assert not EgressRules.parse(["10.0.0.0/8"]).resolves_names


_label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
_tld = st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,8}[a-z0-9])?\Z")
_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_label, min_size=0, max_size=4), _tld
)


@given(suffix=_domain, child=_label)
def test_suffix_matches_exactly_the_names_below_it(suffix: str, child: str) -> None:
    rules = EgressRules.parse([f"*.{suffix}"])
    assert rules.allows_name(f"{child}.{suffix}")
    assert rules.allows_name(f"{child}.{suffix}".upper())
    assert not rules.allows_name(suffix)
    # Glued onto the suffix without a dot it is another domain, never allowed.
    assert not rules.allows_name(f"{child}{suffix}")


@given(
    network=st.ip_addresses(v=4).flatmap(
        lambda ip: st.integers(0, 32).map(
            lambda prefix: ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        )
    ),
    probe=st.ip_addresses(v=4),
)
def test_cidr_matching_agrees_with_ipaddress(
    network: ipaddress.IPv4Network, probe: ipaddress.IPv4Address
) -> None:
    rules = EgressRules.parse([str(network)])
    assert rules.allows_address(str(probe)) == (probe in network)
    assert not rules.resolves_names


@given(name=_domain)
def test_parsed_names_round_trip(name: str) -> None:
    assert parse_entry(name) == ("name", name)
    assert parse_entry(name.upper() + ".") == ("name", name)
