"""The fleet list's filters (model, OS, SSID, status, latest problem) and Mac product names, over HTTP
against the real dashboard and PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from atlas.dashboard import fleet, macmodels

from ..fix_dashboard import Browserless, Machine, insert_machine, unique, wifi_data

ROW = re.compile(r'<tr data-machine-id="([^"]+)">')


def listed(client: Browserless, **params: str) -> list[str]:
    """The machine ids the fleet list shows for ``params`` (one page)."""
    page = client.get("/", params=params)
    assert page.status_code == 200, page.text[-2000:]
    return ROW.findall(page.text)


def machines(db: psycopg.Connection, prefix: str, specs: list[dict[str, Any]]) -> list[Machine]:
    return [insert_machine(db, hostname=f"{prefix}-{i}.local", **spec) for i, spec in enumerate(specs)]


def test_model_and_os_filters_narrow_the_list(db: psycopg.Connection, viewer: Browserless):
    prefix = unique("filt")
    air, pro, air_old, vm = machines(
        db,
        prefix,
        [
            {"model": "Mac14,2", "os_version": "macOS 15.5 (24F74)"},
            {"model": "MacBookPro18,3", "os_version": "macOS 15.5 (24F74)"},
            {"model": "Mac14,2", "os_version": "macOS 14.7 (23H124)"},
            {"model": "VirtualMac2,1", "os_version": "macOS 15.5 (24F74)"},
        ],
    )
    assert set(listed(viewer, q=prefix)) == {m.machine_id for m in (air, pro, air_old, vm)}
    assert set(listed(viewer, q=prefix, model="Mac14,2")) == {air.machine_id, air_old.machine_id}
    assert set(listed(viewer, q=prefix, os="macOS 15.5 (24F74)")) == {air.machine_id, pro.machine_id, vm.machine_id}
    assert listed(viewer, q=prefix, model="Mac14,2", os="macOS 14.7 (23H124)") == [air_old.machine_id]
    assert listed(viewer, q=prefix, model="Mac99,9") == []

    page = viewer.get("/", params={"q": prefix, "model": "Mac14,2"}).text
    assert '<b class="count-all">2</b>' in page
    assert '<option value="Mac14,2" selected>MacBook Air (M2, 2022) (Mac14,2)' in page  # the filter's own menu
    assert re.search(r'href="/\?q=[^"]*model=Mac14%2C2[^"]*status=online"', page)  # status chips keep the filter


def test_product_names_beside_model_identifiers(db: psycopg.Connection, viewer: Browserless):
    prefix = unique("names")
    air, pro, vm = machines(db, prefix, [{"model": "Mac14,2"}, {"model": "MacBookPro18,3"}, {"model": "VirtualMac2,1"}])
    page = viewer.get("/", params={"q": prefix}).text
    cells = dict(
        re.findall(r'<tr data-machine-id="([^"]+)">.*?<td data-label="Model" class="model">(.*?)</td>', page, re.S)
    )
    assert cells[air.machine_id] == 'Mac14,2 <small class="product-name">MacBook Air (M2, 2022)</small>'
    assert cells[pro.machine_id] == 'MacBookPro18,3 <small class="product-name">MacBook Pro (14-inch, 2021)</small>'
    assert cells[vm.machine_id] == "VirtualMac2,1"  # unknown: as it is

    machine_page = viewer.get(f"/machines/{air.machine_id}").text
    assert '<td class="model">Mac14,2 <small class="product-name">MacBook Air (M2, 2022)</small></td>' in machine_page


def test_product_name_table():
    assert macmodels.product_name("Mac14,2") == "MacBook Air (M2, 2022)"
    assert macmodels.product_name(" MacBookPro18,3 ") == "MacBook Pro (14-inch, 2021)"
    assert macmodels.product_name("VirtualMac2,1") is None
    assert macmodels.product_name(None) is None
    for identifier, name in macmodels.PRODUCT_NAMES.items():
        assert re.fullmatch(r"(Mac|MacBook|MacBookAir|MacBookPro|iMac|iMacPro|Macmini|MacPro)\d+,\d+", identifier)
        assert re.fullmatch(r"(MacBook|MacBook Air|MacBook Pro|iMac|iMac Pro|Mac mini|Mac Studio|Mac Pro) \(.+\)", name)


def test_ssid_filter_reads_each_machines_latest_wifi_log(db: psycopg.Connection, viewer: Browserless):
    prefix = unique("ssid")
    now = datetime.now(UTC)
    office = unique("Office")

    def wifi(*ssids: str) -> list[tuple]:
        """Wi-Fi logs a minute apart, the last one newest."""
        return [
            (now - timedelta(minutes=len(ssids) - i), "INFO", "wifi", "WiFi status", wifi_data(ssid=s))
            for i, s in enumerate(ssids)
        ]

    at_office, moved_away, came_back, no_wifi = machines(
        db,
        prefix,
        [
            {"logs": wifi(office)},
            {"logs": wifi(office, "Guest")},
            {"logs": wifi("Guest", office)},
            {"logs": [(now, "INFO", "health", "Health check", {})]},
        ],
    )
    assert set(listed(viewer, q=prefix, ssid=office)) == {at_office.machine_id, came_back.machine_id}
    assert listed(viewer, q=prefix, ssid="Guest") == [moved_away.machine_id]
    assert listed(viewer, q=prefix, ssid=office.lower()) == []  # SSIDs are case-sensitive
    assert set(listed(viewer, ssid=office)) == {at_office.machine_id, came_back.machine_id}  # no search needed
    assert no_wifi.machine_id in listed(viewer, q=prefix)

    page = viewer.get("/", params={"q": prefix, "ssid": office}).text
    assert '<b class="count-all">2</b>' in page
    assert '<b class="count-online">2</b>' in page
    assert f'name="ssid" value="{office}"' in page


def test_latest_problem_filter_and_column(db: psycopg.Connection, viewer: Browserless):
    prefix = unique("prob")
    now = datetime.now(UTC)

    def logs(*levels: str) -> list[tuple]:
        return [
            (now - timedelta(minutes=len(levels) - i), level, "agent", f"event {i}", {})
            for i, level in enumerate(levels)
        ]

    erring, warned, recovered, quiet, old = machines(
        db,
        prefix,
        [
            {"logs": logs("INFO", "WARNING", "ERROR", "INFO")},
            {"logs": logs("ERROR", "WARNING", "INFO")},
            {"logs": logs("INFO", "INFO")},
            {"logs": logs("DEBUG")},
            {"logs": [(now - fleet.LATEST_LOOKBACK - timedelta(hours=1), "ERROR", "agent", "long ago", {})]},
        ],
    )
    assert listed(viewer, q=prefix, problem="error") == [erring.machine_id]
    assert listed(viewer, q=prefix, problem="warning") == [warned.machine_id]
    assert set(listed(viewer, q=prefix, problem="any")) == {erring.machine_id, warned.machine_id}
    assert set(listed(viewer, q=prefix, problem="none")) == {recovered.machine_id, quiet.machine_id, old.machine_id}
    assert set(listed(viewer, q=prefix, problem="bogus")) == {  # unknown values are ignored
        m.machine_id for m in (erring, warned, recovered, quiet, old)
    }

    page = viewer.get("/", params={"q": prefix}).text
    problem = dict(
        re.findall(
            r'<tr data-machine-id="([^"]+)">.*?<td data-label="Latest problem" class="problem">(.*?)</td>', page, re.S
        )
    )
    assert '<span class="level level-error">ERROR</span>' in problem[erring.machine_id]
    assert '<span class="level level-warning">WARNING</span>' in problem[warned.machine_id]
    assert problem[quiet.machine_id] == "\N{EM DASH}"


def test_filters_combine_with_status_and_paging(db: psycopg.Connection, viewer: Browserless):
    prefix = unique("combo")
    now = datetime.now(UTC)
    error = [(now - timedelta(minutes=5), "ERROR", "agent", "boom", {})]
    specs: list[dict[str, Any]] = [{"logs": error, "model": "Mac14,2"} for _ in range(fleet.PAGE_SIZE + 3)]
    specs += [{"logs": error, "model": "Mac14,2", "last_seen": now - timedelta(days=3)}]  # offline
    specs += [{"logs": error, "model": "MacBookPro18,3"}]
    made = machines(db, prefix, specs)
    first = listed(viewer, q=prefix, model="Mac14,2", problem="error", status="online")
    second = listed(viewer, q=prefix, model="Mac14,2", problem="error", status="online", page="2")
    assert len(first) == fleet.PAGE_SIZE
    assert len(second) == 3
    assert set(first) | set(second) == {m.machine_id for m in made[: fleet.PAGE_SIZE + 3]}
    assert listed(viewer, q=prefix, model="Mac14,2", problem="error", status="offline") == [made[-2].machine_id]
    page = viewer.get("/", params={"q": prefix, "model": "Mac14,2", "problem": "error"}).text
    assert f'<b class="count-all">{fleet.PAGE_SIZE + 4}</b>' in page
    assert '<b class="count-offline">1</b>' in page
    assert "Page 1 of 2" in page


def test_query_parameters_round_trip():
    query = fleet.FleetQuery.from_params(
        {"q": " a  b ", "model": "Mac14,2", "os": "macOS 15.5", "ssid": " Office ", "problem": "error", "page": "2"}
    )
    assert (query.q, query.model, query.os, query.ssid, query.problem, query.page) == (
        "a b",
        "Mac14,2",
        "macOS 15.5",
        "Office",
        "error",
        2,
    )
    assert query.scanned
    assert fleet.FleetQuery.from_params({"problem": "nonsense"}).problem == ""
    url = query.url(page=1)
    assert url == "/?q=a+b&model=Mac14%2C2&os=macOS+15.5&ssid=Office&problem=error"
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert fleet.FleetQuery.from_params(params) == replace(query, page=1)


def test_the_latest_problem_is_one_probe_of_the_partial_index(db: psycopg.Connection):
    """Each machine's latest WARNING or ERROR is read from ``widget_logs_machine_problem_idx``, which holds
    only those, never by filtering the machine's quieter logs."""
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in db.execute(
                psycopg.sql.SQL("EXPLAIN ") + fleet._SCAN,
                {"ids": ["a", "b"], "seen": [datetime.now(UTC)] * 2, "lookback": fleet.LATEST_LOOKBACK},
            ).fetchall()
        )
    partition_indexes = {
        row[0]
        for row in db.execute(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i"
            " WHERE i.inhparent = 'widget_logs_machine_problem_idx'::regclass"
        ).fetchall()
    }
    assert partition_indexes
    assert any(f"using {name} " in plan for name in partition_indexes), plan
    assert "level" not in plan  # the index's predicate, nothing left to filter


def test_an_ssid_search_past_the_scan_limit_says_so(db: psycopg.Connection, monkeypatch):
    prefix = unique("limit")
    now = datetime.now(UTC)
    ssid = unique("Net")
    made = machines(db, prefix, [{"logs": [(now, "INFO", "wifi", "WiFi", wifi_data(ssid=ssid))]} for _ in range(5)])
    monkeypatch.setattr(fleet, "SCAN_LIMIT", 3)
    online, stale = timedelta(minutes=15), timedelta(days=1)

    def load(**params: str) -> fleet.FleetPage:
        query = fleet.FleetQuery.from_params({"q": prefix, **params})
        return fleet.load_fleet(db, query, now=now, online_within=online, stale_within=stale)

    page = load(ssid=ssid)
    assert page.scan_truncated
    assert [r.machine["machine_id"] for r in page.rows] == [m.machine_id for m in made[:3]]  # by hostname
    assert page.total == 3
    assert not load().scan_truncated  # no SSID or problem filter: every match counted in SQL
    assert load().total == 5
