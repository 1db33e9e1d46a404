"""The live API over real loops: reads, writes through the supervisor, audit of every attempt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bpcontrol.records import EventKind
from services.api.app import PREFIX
from services.api.audit import verify_audit_file
from services.api.ratelimit import RateLimiter
from services.api.settings import SettingsError, demo_settings, load_settings
from tests.api.conftest import (
    SECRET,
    Live,
    login,
    make_settings,
    served_reactor,
    start_server,
    stop_server,
)


def _audit(live: Live) -> list[dict[str, Any]]:
    return [json.loads(line) for line in live.audit_path.read_text().splitlines()]


def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_reads_show_reactors_state_estimates_limits_and_history(live: Live) -> None:
    with live.client("viewer") as c:
        reactors = c.get("/reactors").json()
        assert [r["id"] for r in reactors] == ["R1", "R2"]
        assert reactors[0]["batch"] == "B-R1" and reactors[0]["mode"] == "fallback"
        _wait(lambda: c.get("/reactors/R1").json()["setpoints"]["source"] is not None)
        state = c.get("/reactors/R1").json()
        assert {m["sensor"] for m in state["measurements"]} >= {"DO_probe", "V_meas"}
        x = state["estimate"]["states"]["X"]
        assert x["value"] > 0 and x["sigma"] > 0  # biomass g/L with its standard deviation
        assert state["setpoints"]["source"] == "fallback"
        assert set(state["limits"]) == {"F"} or "F" in state["limits"]
        lim = state["limits"]["F"]
        assert lim["lower"] <= state["setpoints"]["applied"]["F"] <= lim["upper"]
        assert c.get("/reactors/R1/plan").json() is None  # recipe only: no NMPC plan
        events = c.get("/reactors/R1/events").json()
        assert any(e["kind"] == "phase" for e in events)
        t_now = state["reactor"]["t_h"]
        hist = c.get(
            "/reactors/R1/history",
            params={"series": ["DO_probe", "X", "F"], "t_from": 0.0, "t_to": t_now},
        ).json()["series"]
        assert hist["DO_probe"]["kind"] == "measurement" and len(hist["DO_probe"]["t_h"]) > 0
        assert hist["X"]["kind"] == "estimate" and len(hist["X"]["sigma"]) == len(hist["X"]["t_h"])
        assert hist["F"]["kind"] == "setpoint"
        assert all(0.0 <= t <= t_now for t in hist["DO_probe"]["t_h"])
        bad = c.get("/reactors/R1/history", params={"series": ["nope"]})
        assert bad.status_code == 422 and "unknown series ['nope']" in bad.json()["detail"]
        assert c.get("/reactors/R9").status_code == 404


def test_writes_go_through_the_supervisor_and_every_attempt_is_audited(live: Live) -> None:
    loop = live.served[1].handle.loop
    with live.client("operator") as op, live.client("engineer") as eng:
        early = op.put("/reactors/R2/setpoints/F", json={"value": 0.05, "reason": "too early"})
        assert early.status_code == 422 and "only in MANUAL" in early.json()["detail"]
        manual = op.post("/reactors/R2/mode", json={"mode": "manual", "reason": "feed test"})
        assert manual.status_code == 200, manual.text
        assert manual.json()["old_value"] == "FALLBACK" and manual.json()["new_value"] == "MANUAL"
        assert loop.snapshot().mode.value == "manual"
        high = op.put("/reactors/R2/setpoints/F", json={"value": 5.0, "reason": "typo"})
        assert high.status_code == 422
        assert "outside the limits of 'F'" in high.json()["detail"]
        before = live.served[1].handle.operator_setpoints()["F"]
        assert before != 5.0  # nothing changed
        ok = op.put("/reactors/R2/setpoints/F", json={"value": 0.02, "reason": "start feed"})
        assert ok.status_code == 200 and ok.json()["new_value"] == "0.02"
        assert live.served[1].handle.operator_setpoints()["F"] == 0.02
        no_reason = op.put("/reactors/R2/setpoints/F", json={"value": 0.03, "reason": "  "})
        assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
        nan = op.put(
            "/reactors/R2/setpoints/F",
            content='{"value": NaN, "reason": "x"}',
            headers={"content-type": "application/json"},
        )
        assert nan.status_code == 422
        not_engineer = op.put(
            "/reactors/R2/limits/F", json={"lower": 0, "upper": 0.3, "reason": "no"}
        )
        assert not_engineer.status_code == 403
        limits = eng.put(
            "/reactors/R2/limits/F",
            json={"lower": 0.0, "upper": 0.3, "rate_per_h": 0.5, "reason": "new pump"},
        )
        assert limits.status_code == 200, limits.text
        lim = live.served[1].handle.limits()["F"]
        assert (lim.lower, lim.upper, lim.rate_per_h) == (0.0, 0.3, 0.5)
        inverted = eng.put(
            "/reactors/R2/limits/F", json={"lower": 0.3, "upper": 0.1, "reason": "oops"}
        )
        assert inverted.status_code == 422 and "inverted limits" in inverted.json()["detail"]
        unknown = op.put("/reactors/R2/setpoints/Q", json={"value": 1, "reason": "x"})
        assert unknown.status_code == 404
    entries = [e for e in _audit(live) if e["run"] and e["run"]["reactor"] == "R2"]
    kinds = [(e["who"], e["result"]) for e in entries]
    assert kinds == [
        ("operator", "refused (422)"),
        ("operator", "accepted"),
        ("operator", "refused (422)"),
        ("operator", "accepted"),
        ("operator", "refused (422)"),
        ("operator", "refused (422)"),
        ("operator", "refused (403)"),
        ("engineer", "accepted"),
        ("engineer", "refused (422)"),
        ("operator", "refused (404)"),
    ]
    for e in entries:
        assert e["wall_utc"].endswith("+00:00") and e["t_h"] >= 0.0
    assert entries[3]["old_value"] == "0.0" and entries[3]["new_value"] == "0.02"
    assert entries[3]["why"] == "start feed" and entries[3]["action"] == "setpoint F = 0.02"
    assert entries[7]["old_value"].startswith("[0.0, 0.5]")
    assert verify_audit_file(live.audit_path) == []


def test_alarms_are_the_loops_and_acknowledged_once_through_its_commands(live: Live) -> None:
    handle = live.served[0].handle
    handle.loop.note(EventKind.PLANT_READ_FAILED, "probe cable pulled (test)", "test")
    with live.client("operator") as op, live.client("viewer") as viewer:
        _wait(lambda: viewer.get("/alarms", params={"unacknowledged": True}).json() != [])
        alarm = viewer.get("/alarms", params={"unacknowledged": True}).json()[0]
        assert alarm["reactor"] == "R1" and alarm["kind"] == "plant-read-failed"
        book = handle.loop.snapshot().alarms  # GET /alarms shows the loop's own book
        assert book.get(alarm["id"]) is not None
        assert book.get(alarm["id"]).event.message == alarm["message"]  # type: ignore[union-attr]
        flagged = [e for e in viewer.get("/reactors/R1/events").json() if e["alarm"]]
        assert [e["message"] for e in flagged] == [alarm["message"]]
        path = f"/reactors/R1/alarms/{alarm['id']}/ack"
        assert viewer.post(path, json={"reason": "seen"}).status_code == 403
        ack = op.post(path, json={"reason": "cable fixed"})
        assert ack.status_code == 200, ack.text
        assert ack.json()["old_value"] == "unacknowledged"
        assert ack.json()["new_value"] == "acknowledged (plant-read-failed)"
        # carried out by the loop at a tick: the core's book says who, why and when
        done = handle.loop.snapshot().alarms.get(alarm["id"])
        assert done is not None and done.acked_by == "operator" and done.acked_why == "cable fixed"
        assert done.acked_t_h == ack.json()["t_h"] and done.acked_utc.endswith("+00:00")
        again = op.post(path, json={"reason": "again"})
        assert again.status_code == 409 and "acknowledged by operator" in again.json()["detail"]
        unknown = op.post("/reactors/R1/alarms/999999/ack", json={"reason": "x"})
        assert unknown.status_code == 404 and "no alarm 999999" in unknown.json()["detail"]
        listed = next(a for a in viewer.get("/alarms").json() if a["id"] == alarm["id"])
        assert listed["acked_by"] == "operator" and listed["acked_why"] == "cable fixed"
        assert listed["acked_t_h"] == done.acked_t_h
        assert all(a["id"] != alarm["id"] for a in viewer.get("/alarms?unacknowledged=true").json())
    actions = {f"acknowledge alarm {alarm['id']}", "acknowledge alarm 999999"}
    mine = [e for e in _audit(live) if e["action"] in actions and e["run"]["reactor"] == "R1"]
    assert [(e["result"], e["why"]) for e in mine] == [
        ("accepted", "cable fixed"),
        ("refused (409)", "again"),
        ("refused (404)", "x"),
    ]
    # the loop audited each in its historian, as it does every command it carries out
    handle.tee.flush(10.0)
    from services.historian import read_records

    stored = [
        (r.action, r.accepted)
        for r in read_records(handle.records_path, "audit")  # type: ignore[arg-type]
        if r.action in actions  # type: ignore[union-attr]
    ]
    assert stored == [(e["action"], e["accepted"]) for e in mine]


def test_an_alarm_is_acknowledged_after_the_batch_ended(tmp_path: Path) -> None:
    served = served_reactor(tmp_path, "R7", speed_up=3600.0, duration_h=0.05)
    server, thread, base = start_server([served], tmp_path / "audit.jsonl", make_settings())
    try:
        served.handle.loop.note(EventKind.ESTIMATOR_FAILED, "filter diverged (test)", "test")
        served.start()
        assert served.thread is not None
        served.thread.join(30.0)  # 0.05 h = 4 ticks at 1 h per wall s
        assert served.handle.loop.snapshot().done
        token = login(base, "operator")
        with httpx.Client(
            base_url=base + PREFIX, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as op:
            (alarm,) = op.get("/alarms").json()
            assert alarm["kind"] == "estimator-failed" and alarm["reactor"] == "R7"
            mode = op.post("/reactors/R7/mode", json={"mode": "hold", "reason": "late"})
            assert mode.status_code == 409 and "has ended" in mode.json()["detail"]
            ack = op.post(f"/reactors/R7/alarms/{alarm['id']}/ack", json={"reason": "seen"})
            assert ack.status_code == 200, ack.text
            assert op.get("/alarms").json()[0]["acked_by"] == "operator"
    finally:
        stop_server(server, thread)
        served.stop("test over")


def test_security_headers_and_closed_cors(live: Live) -> None:
    with live.client("viewer") as c:
        reply = c.get("/reactors", headers={"Origin": "https://evil.example"})
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
        assert reply.headers["cache-control"] == "no-store"
        assert "access-control-allow-origin" not in reply.headers
        pre = c.options(
            "/reactors",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in pre.headers
        assert c.get("/health").json() == {"status": "ok"}
        schema = httpx.get(f"{live.base}/openapi.json").json()
        assert f"{PREFIX}/reactors/{{rid}}/setpoints/{{name}}" in schema["paths"]


def test_login_refuses_wrong_passwords(live: Live) -> None:
    with live.client() as c:
        assert c.post("/token", data={"username": "admin", "password": "guess"}).status_code == 401
        assert c.post("/token", data={"username": "nobody", "password": "x"}).status_code == 401
        assert c.post("/token", data={"username": "admin"}).status_code == 422


def test_settings_refuse_missing_or_unsafe_secrets(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        make_settings().__class__(users=make_settings().users, secret="short")
    from services.api.auth import UserStore

    with pytest.raises(SettingsError, match="no default credentials"):
        make_settings().__class__(users=UserStore({}), secret=SECRET)
    path = tmp_path / "api.toml"
    path.write_text('[api]\ntoken_ttl_s = 60\n[[users]]\nname = "a"\nrole = "operator"\n')
    with pytest.raises(SettingsError, match=r"api\.toml: api\.secret \(or api\.secret_file\)"):
        load_settings(path)
    path.write_text(
        f'[api]\nsecret = "{SECRET}"\n[[users]]\nname = "a"\nrole = "boss"\n'
        'password_hash = "$argon2id$v=19$m=65536,t=3,p=4$abc$def"\n'
    )
    with pytest.raises(SettingsError, match=r"users\[0\]\.role: unknown role 'boss'"):
        load_settings(path)
    path.write_text(f'[api]\nsecret = "{SECRET}"\ncors_origins = ["https://a.example"]\n')
    with pytest.raises(SettingsError, match=r"no \[\[users\]\] configured"):
        load_settings(path)
    with pytest.raises(SettingsError, match=r"'\*' is not allowed"):
        make_settings(cors_origins=("*",))
    demo = demo_settings()
    assert demo.demo and set(demo.demo_passwords) == {"viewer", "operator", "engineer", "admin"}
    assert demo_settings().secret != demo.secret  # random, never a default


def test_rate_limiter_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, now=lambda: now[0])
    assert [limiter.allow("ana") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("bo")  # per user
    now[0] = 0.5  # 0.5 s at 2/s: one more
    assert limiter.allow("ana") and not limiter.allow("ana")


def test_cors_opens_only_for_configured_origins_and_writes_are_rate_limited(
    live: Live, tmp_path: Path
) -> None:
    settings = make_settings(
        cors_origins=("https://ok.example",), write_burst=2, write_rate_per_s=0.01
    )
    audit = tmp_path / "audit.jsonl"
    server, thread, base = start_server(live.served, audit, settings)
    try:
        pre = {"Access-Control-Request-Method": "PUT"}
        ok = httpx.options(
            f"{base}{PREFIX}/reactors", headers={"Origin": "https://ok.example", **pre}
        )
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        evil = httpx.options(
            f"{base}{PREFIX}/reactors", headers={"Origin": "https://evil.example", **pre}
        )
        assert "access-control-allow-origin" not in evil.headers
        headers = {"Authorization": f"Bearer {login(base, 'operator')}"}
        url = f"{base}{PREFIX}/reactors/R1/mode"
        codes = [
            httpx.post(url, json={"mode": "fallback", "reason": f"r{k}"}, headers=headers)
            for k in range(3)
        ]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert "too many writes" in codes[2].json()["detail"]
    finally:
        stop_server(server, thread)
    results = [json.loads(line)["result"] for line in audit.read_text().splitlines()]
    assert results == ["accepted", "accepted", "refused (429)"]


def test_password_guessing_is_slowed_per_user_name(live: Live) -> None:
    with live.client() as c:
        codes = [
            c.post("/token", data={"username": "engineer", "password": f"guess{k}"}).status_code
            for k in range(22)
        ]
        assert set(codes[:18]) == {401} and codes[-1] == 429
        assert c.post("/token", data={"username": "viewer", "password": "x"}).status_code == 401
