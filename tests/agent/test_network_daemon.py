"""The daemon's layered checks and roams: on their own schedule, against loopback targets, through the contract,
and end to end through ingest and the worker into PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from atlas.agent.collectors.wifi import parse_airport_info, parse_wdutil_info
from atlas.agent.config import AgentConfigError, load_agent_config
from atlas.agent.daemon import Agent
from atlas.agent.live import serve
from atlas.contract import validate_content

from ..fix_services import API_KEY
from .network_servers import dns_responder, http_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def write_config(tmp_path: Path, **values) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "ping_targets": ["127.0.0.1"],
        "speedtest_interval_seconds": 0,
        "live_port": 0,
        "network_timeout_seconds": 2,
        **values,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def contract_valid(agent: Agent, entries: list[dict]) -> None:
    """The logs pass the server's validation of a batch, as the ingest runs it."""
    content = validate_content({"machine": agent.identity.as_machine(), "logs": entries})
    assert [log.widget_type for log in content.logs] == [e["widget_type"] for e in entries]


def test_config_keys(tmp_path) -> None:
    config = load_agent_config(
        write_config(tmp_path, dns_resolvers=["127.0.0.1:5353"], dns_names=["a.example"], http_targets=["https://x/"])
    )
    assert config.network_interval_seconds == 300
    assert config.dns_resolvers == ("127.0.0.1:5353",)
    assert config.dns_names == ("a.example",)
    assert config.http_targets == ("https://x/",)
    assert load_agent_config(None).dns_names == ("apple.com",)
    with pytest.raises(AgentConfigError, match="http_targets"):
        load_agent_config(write_config(tmp_path, http_targets=["ftp://x/"]))
    with pytest.raises(AgentConfigError, match="dns_resolvers"):
        load_agent_config(write_config(tmp_path, dns_resolvers="127.0.0.1"))
    with pytest.raises(AgentConfigError, match="network_timeout_seconds"):
        load_agent_config(write_config(tmp_path, network_timeout_seconds=0))


def test_a_round_has_a_log_per_layer_and_target(tmp_path) -> None:
    (tmp_path / "tls").mkdir()
    with (
        dns_responder({"intranet.example": "192.0.2.7"}) as dns,
        http_server() as (plain, _),
        http_server(tmp_path / "tls") as (secure, ca),
    ):
        path = write_config(
            tmp_path,
            ca_bundle=str(ca),  # the private CA is trusted beside the system's
            dns_resolvers=[dns.address],
            dns_names=["intranet.example", "nowhere.example"],
            http_targets=[f"{secure}/ok", f"{plain}/fail"],
        )
        agent = Agent(load_agent_config(path))
        agent.collect(store=False)
        entries = agent.run_network(store=False)
    contract_valid(agent, entries)
    assert {e["widget_type"] for e in entries} == {"network"}
    by_layer = [(e["data"]["layer"], e["data"]["target"], e["data"]["status"]) for e in entries]
    assert by_layer[0][0] == "wifi"
    assert by_layer[1][0] == "gateway"  # this machine's real default route, whatever its ping says
    assert by_layer[2:] == [
        ("dns", dns.address, "ok"),
        ("dns", dns.address, "dns_error"),
        ("http", f"{secure}/ok", "ok"),
        ("http", f"{plain}/fail", "http_error"),
    ]
    assert entries[4]["data"]["tls_ms"] > 0
    latest = agent.snapshot()["widgets"]
    assert f"network:dns:{dns.address}" in latest
    assert f"network:http:{secure}/ok" in latest


def test_roams_come_with_the_wifi_logs_and_are_counted_per_round(tmp_path) -> None:
    agent = Agent(load_agent_config(write_config(tmp_path, dns_resolvers=["127.0.0.1:9"], dns_names=["a.example"])))
    first = parse_airport_info((FIXTURES / "wifi/airport_I_mojave10.14.6_connected.txt").read_text())
    second = parse_wdutil_info((FIXTURES / "wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text())
    logs = agent.wifi_logs(first) + agent.wifi_logs(first) + agent.wifi_logs(second)
    assert [e["widget_type"] for e in logs] == ["wifi", "wifi", "wifi", "roam"]
    roam = logs[-1]
    assert roam["data"]["from_bssid"] == first.bssid
    assert roam["data"]["to_bssid"] == second.bssid
    assert roam["data"]["roam_count"] == 1
    network = agent.run_network(store=False)
    contract_valid(agent, logs + network)
    link = network[0]["data"]
    assert link["layer"] == "wifi"
    assert link["roams"] == 1
    assert link["bssid"] == second.bssid
    assert agent.run_network(store=False)[0]["data"]["roams"] == 0  # a new period


def test_a_slow_check_does_not_hold_up_collection(tmp_path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections, never answers: each HTTP check waits its whole timeout
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        path = write_config(
            tmp_path,
            collect_interval_seconds=1,
            network_interval_seconds=1,
            network_timeout_seconds=3,
            dns_resolvers=["127.0.0.1:9"],
            dns_names=["a.example"],
            http_targets=[url],
        )
        agent = Agent(load_agent_config(path))
        stop = threading.Event()
        collected: list[float] = []
        original = agent.collect

        def counting(**kw):
            collected.append(time.monotonic())
            return original(**kw)

        agent.collect = counting  # type: ignore[method-assign]
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and f"network:http:{url}" not in agent.snapshot()["widgets"]:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(15)
    widgets = agent.snapshot()["widgets"]
    assert widgets[f"network:http:{url}"]["data"]["status"] == "timeout"
    assert widgets["network:dns:127.0.0.1:9"]["data"]["status"] in ("error", "timeout")
    assert len(collected) >= 3  # collection went on, once a second, while the check waited out its 3 s
    stored = {log.widget_type for log in agent.store.iter_logs()}
    assert {"wifi", "ping", "network"} <= stored


def test_network_and_roam_logs_reach_postgresql(tmp_path, ingest, keys, drain, db) -> None:
    with dns_responder({"intranet.example": "192.0.2.7"}) as dns, http_server() as (base, _):
        path = write_config(
            tmp_path,
            fleet_server=ingest.url,
            api_key=API_KEY,
            encryption_key=keys["current"],
            machine_id=f"net-e2e-{tmp_path.name[-12:]}",
            dns_resolvers=[dns.address],
            dns_names=["intranet.example"],
            http_targets=[f"{base}/ok", f"{base}/fail"],
        )
        agent = Agent(load_agent_config(path))
        try:
            wifi = [
                parse_airport_info((FIXTURES / "wifi/airport_I_mojave10.14.6_connected.txt").read_text()),
                parse_wdutil_info((FIXTURES / "wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text()),
            ]
            roams = [e for r in wifi for e in agent.wifi_logs(r) if e["widget_type"] == "roam"]
            for entry in roams:
                agent.store.add(**entry)
            network = agent.run_network()
            agent.send()
        finally:
            agent.sender.close()
    assert len(roams) == 1
    drain()
    rows = db.execute(
        "SELECT widget_type, level, message, data FROM widget_logs WHERE machine_id = %s"
        " AND widget_type IN ('network', 'roam') ORDER BY id",
        (agent.identity.machine_id,),
    ).fetchall()
    assert [(r[0], r[2]) for r in rows] == [(e["widget_type"], e["message"]) for e in roams + network]
    stored = {(r[3].get("layer"), r[3].get("target")): r[3] for r in rows if r[0] == "network"}
    assert stored[("dns", dns.address)]["status"] == "ok"
    assert stored[("dns", dns.address)]["dns_ms"] == network[2]["data"]["dns_ms"]
    assert stored[("http", f"{base}/fail")]["status_code"] == 500
    assert stored[("http", f"{base}/ok")]["ttfb_ms"] is not None
    assert rows[0][3]["to_channel"] == 144


def test_the_live_page_serves_the_network_checks(tmp_path) -> None:
    with dns_responder({"intranet.example": "192.0.2.7"}) as dns:
        path = write_config(tmp_path, dns_resolvers=[dns.address], dns_names=["intranet.example"])
        agent = Agent(load_agent_config(path))
        agent.run_network(store=False)
    server = serve(agent, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        network = httpx.get(f"{base}/api/widgets/network", timeout=5).json()
        assert [e["data"]["layer"] for e in network] == ["wifi", "gateway", "dns"]
        assert network[2]["data"]["status"] == "ok"
        assert httpx.get(f"{base}/api/widgets/roam", timeout=5).json() == []
    finally:
        server.shutdown()
        server.server_close()
