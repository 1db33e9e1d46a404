"""Every endpoint with every role and with no, expired, wrong-signature and forged tokens;
every refused write is in the audit trail."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from services.api.app import PREFIX
from services.api.auth import Role, TokenIssuer, User
from tests.api.conftest import SECRET, Live

# (method, path, body, lowest role)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, Role]] = [
    ("GET", "/reactors", None, Role.VIEWER),
    ("GET", "/reactors/R1", None, Role.VIEWER),
    ("GET", "/reactors/R1/plan", None, Role.VIEWER),
    ("GET", "/reactors/R1/events", None, Role.VIEWER),
    ("GET", "/alarms", None, Role.VIEWER),
    ("GET", "/reactors/R1/history?series=DO_probe", None, Role.VIEWER),
    ("GET", "/reactors/R1/stream", None, Role.VIEWER),
    ("GET", "/audit", None, Role.ADMIN),
    ("POST", "/reactors/R1/mode", {"mode": "fallback"}, Role.OPERATOR),
    ("PUT", "/reactors/R1/setpoints/F", {"value": 0.01}, Role.OPERATOR),
    ("PUT", "/reactors/R1/limits/F", {"lower": 0.0, "upper": 0.5}, Role.ENGINEER),
    ("POST", "/reactors/R1/alarms/1/ack", {}, Role.OPERATOR),
]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(live: Live) -> dict[str, str | None]:
    """Tokens that must all be refused with 401."""
    admin = User("admin", Role.ADMIN, "")
    viewer_token = live.tokens["viewer"]
    head, _, sig = viewer_token.split(".")
    claims = jwt.decode(viewer_token, options={"verify_signature": False})
    return {
        "none": None,
        "garbage": "not-a-jwt",
        "expired": TokenIssuer(SECRET, 60).issue(admin, now=time.time() - 3600),
        "wrong-signature": TokenIssuer("another-secret-" + "y" * 40, 600).issue(admin),
        "alg-none": _b64({"alg": "none", "typ": "JWT"})
        + "."
        + _b64({**claims, "role": "admin"})
        + ".",
        "payload-swapped": head
        + "."
        + _b64({**claims, "role": "admin", "sub": "admin"})
        + "."
        + sig,
        "unknown-user": TokenIssuer(SECRET, 600).issue(User("ghost", Role.ADMIN, "")),
        "hs512": jwt.encode({**claims, "role": "admin"}, SECRET, algorithm="HS512"),
    }


def _call(c: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> int:
    if path.endswith("/stream"):
        with c.stream(method, path) as reply:
            return reply.status_code
    return c.request(method, path, json=body).status_code


def test_the_role_matrix(live: Live) -> None:
    marks: dict[str, int] = {}  # reason text of each write -> status it got
    k = 0
    for who in [*bad_tokens(live), *(r.name.lower() for r in Role)]:
        token = bad_tokens(live)[who] if who not in live.tokens else live.tokens[who]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=live.base + PREFIX, headers=headers, timeout=30) as c:
            for method, path, body, lowest in ENDPOINTS:
                k += 1
                reason = f"matrix-{k}-{who}"
                status = _call(
                    c, method, path, None if body is None else {**body, "reason": reason}
                )
                where = f"{who} {method} {path}"
                if who not in live.tokens:
                    assert status == 401, where
                elif Role.parse(who) < lowest:
                    assert status == 403, where
                else:
                    assert status not in (401, 403), where
                    assert status < 500, where
                if body is not None:
                    marks[reason] = status
    entries = [json.loads(line) for line in live.audit_path.read_text().splitlines()]
    by_mark: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        for mark in marks:
            if mark == e["why"] or f'"{mark}"' in e["new_value"]:
                by_mark.setdefault(mark, []).append(e)
    for mark, status in marks.items():
        found = by_mark.get(mark, [])
        assert len(found) == 1, f"write {mark} ({status}) has {len(found)} audit entries"
        entry = found[0]
        if status in (401, 403, 404, 409, 422, 429):
            assert not entry["accepted"] and entry["result"] == f"refused ({status})", mark
        if status == 401:
            assert entry["who"] == "(unauthenticated)"


def test_expired_and_forged_tokens_say_why(live: Live) -> None:
    tokens = bad_tokens(live)
    with httpx.Client(base_url=live.base + PREFIX, timeout=30) as c:
        expired = c.get("/reactors", headers={"Authorization": f"Bearer {tokens['expired']}"})
        assert expired.json()["detail"] == "token expired; log in again"
        assert expired.headers["www-authenticate"] == "Bearer"
        forged = c.get("/reactors", headers={"Authorization": f"Bearer {tokens['alg-none']}"})
        assert forged.status_code == 401 and "invalid token" in forged.json()["detail"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_a_lower_role_cannot_read_the_audit_trail(live: Live, role: str) -> None:
    with live.client(role) as c:
        assert c.get("/audit").status_code == 403
    with live.client("admin") as c:
        trail = c.get("/audit", params={"limit": 1000}).json()
        assert trail and trail[0]["seq"] == 1 and all(e["hash"] for e in trail)
