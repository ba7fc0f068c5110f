"""The network parsers and roam detection under the hostile inputs of test_parser_fuzz.py: mutated real captures
(tests/fixtures/network/ and tests/fixtures/wifi/), junk and random bytes. Nothing raises, and every log built
from the results passes the wire contract's schema."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from atlas.agent import widgets
from atlas.agent.collectors import network, ping, wifi
from atlas.agent.collectors.roam import RoamTracker

from .test_parser_fuzz import FUZZ, JUNK, NOW, WIFI_PARSERS, fixtures, mutated, valid_log

SCUTIL = fixtures("network/scutil_*")
ROUTE = fixtures("network/route_*")
WIFI_TEXTS = [(parse, text) for _, parse, texts in WIFI_PARSERS for text in texts]


def _addresses(found: list[str]) -> None:
    assert len(found) == len(set(found))
    for value in found:
        ipaddress.ip_address(value.split("%", 1)[0])


@FUZZ
@given(text=mutated(SCUTIL + ROUTE) | JUNK)
def test_resolver_parsers_never_raise_and_give_addresses(text: str) -> None:
    _addresses(network.parse_scutil_dns(text))
    _addresses(network.parse_resolv_conf(text))


@FUZZ
@given(text=mutated(ROUTE) | JUNK)
def test_the_route_capture_mutated_gives_an_address_or_none(text: str) -> None:
    gateway = ping.parse_default_gateway(text, "darwin")
    assert gateway is None or ipaddress.ip_address(gateway)
    valid_log(widgets.network_log(network.check_gateway(None)))


@FUZZ
@given(packet=st.binary(max_size=64), ident=st.integers(0, 0xFFFF))
def test_dns_answer_header_never_raises(packet: bytes, ident: int) -> None:
    header = network.parse_answer_header(packet, ident)
    assert header is None or (isinstance(header[0], str) and 0 <= header[1] <= 0xFFFF)


@FUZZ
@given(name=JUNK, ident=st.integers(0, 0xFFFF))
def test_dns_query_builder_takes_a_name_or_refuses_it(name: str, ident: int) -> None:
    try:
        query = network.build_query(name, ident)
    except (ValueError, UnicodeError):
        return
    assert network.parse_answer_header(query, ident) is None  # a question is never taken for an answer
    assert len(query) <= 12 + 255 + 4


@FUZZ
@given(value=JUNK)
def test_resolver_setting_splits_or_refuses(value: str) -> None:
    try:
        host, port = network.split_resolver(value)
    except ValueError:
        return
    assert isinstance(host, str)
    assert isinstance(port, int)


@FUZZ
@given(
    readings=st.lists(
        st.sampled_from(WIFI_TEXTS).flatmap(lambda pt: mutated([pt[1]]).map(lambda t: pt[0](t))),
        min_size=2,
        max_size=6,
    )
)
def test_roams_and_link_checks_over_mutated_readings_give_valid_logs(readings: list[wifi.WifiReading]) -> None:
    tracker = RoamTracker()
    for i, reading in enumerate(readings):
        event = tracker.observe(reading, NOW + timedelta(minutes=i))
        if event is not None:
            valid_log(widgets.roam_log(event))
        valid_log(widgets.network_log(network.check_wifi_link(reading, 1.0, tracker.take_period_count())))
    assert tracker.count <= len(readings) - 1
