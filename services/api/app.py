"""The FastAPI application: thin routes over the reactors' loops, tees and the audit chain.

``create_app(settings=..., reactors=..., audit=...)`` builds the app; ``bpcontrol serve``
runs it with uvicorn next to the loops. Reads come from loop snapshots, the record tee and
the historian file; writes are operator commands submitted to the loop
(``ControlLoop.submit_*``), carried out by the supervisor at its next tick, and answered
with its verdict: accepted (200), refused (422, the reason names the limit; for an alarm
acknowledgement 404 for an unknown alarm, 409 for one acknowledged already), or pending
(202, when the loop did not answer within ``write_timeout_s``). Every write attempt,
whatever its outcome (401, 403, 404, 409, 422, 429 too), is appended to the audit chain;
those the loop never saw also go to the reactor's historian (as chained, with their
``seq`` and hashes). The loop's state is read through public names only (its snapshot).
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import OAuth2PasswordBearer
from starlette.middleware.cors import CORSMiddleware

from bpcontrol.alarms import ALARM_KINDS
from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    MeasurementRecord,
    SetpointRecord,
    storable_text,
)
from services.api.audit import AuditChain
from services.api.auth import AuthError, Role, TokenIssuer, User
from services.api.convert import fin, fin_map, record_json
from services.api.middleware import SecurityHeaders
from services.api.ratelimit import RateLimiter
from services.api.reactors import END, ReactorHandle, StreamClient
from services.api.schemas import (
    AckIn,
    AlarmOut,
    AuditOut,
    ErrorOut,
    EstimateOut,
    EventOut,
    HistoryOut,
    LimitsIn,
    LimitsOut,
    MeasurementOut,
    ModeIn,
    ModeName,
    PlanOut,
    ReactorOut,
    ReactorStateOut,
    SeriesOut,
    SetpointIn,
    SetpointsOut,
    TokenOut,
    ValueSigma,
    WriteOut,
)
from services.api.settings import ApiSettings

__all__ = ["PREFIX", "create_app"]

PREFIX = "/api/v1"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_RATE_PER_S = 0.2
LOGIN_BURST = 20
"""Login attempts per user name: 20 at once, then one per 5 s (password guessing)."""
KEEPALIVE_S = 15.0
"""A stream sends a comment line after this long (wall s) without records."""

_oauth2 = OAuth2PasswordBearer(tokenUrl=f"{PREFIX}/token", auto_error=False)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422, 429)
}


def _now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class ApiContext:
    """What the routes share: settings, reactors, token issuer, audit chain, rate limiter."""

    settings: ApiSettings
    reactors: dict[str, ReactorHandle]
    tokens: TokenIssuer
    audit: AuditChain
    limiter: RateLimiter
    logins: RateLimiter

    def user_of(self, request: Request) -> User | None:
        """The user a request's bearer token names, or None (never raises)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            return self.tokens.check(token.strip(), self.settings.users)
        except AuthError:
            return None

    async def record_refusal(
        self,
        request: Request,
        status: int,
        detail: str,
        *,
        who: str | None = None,
        why: str = "",
        action: str | None = None,
        old: str = "",
        new: str | None = None,
    ) -> AuditRecord:
        """Audit a write the loop never saw (in the chain and the reactor's historian)."""
        handle = self.reactors.get(str(request.path_params.get("rid", "")))
        if new is None:
            body = await request.body()
            new = storable_text(body[:500].decode("utf-8", errors="replace"))
        if who is None:
            user = self.user_of(request)
            who = user.name if user else "(unauthenticated)"
        snap = handle.loop.snapshot() if handle else None
        record = AuditRecord(
            snap.t_h if snap else 0.0,
            storable_text(who),
            storable_text(why),
            storable_text(action or f"{request.method} {request.url.path}"),
            False,
            storable_text(detail),
            run=snap.run if snap else None,
            wall_utc=request.state.wall_utc,
            old_value=old,
            new_value=new,
            result=f"refused ({status})",
        )
        chained = await asyncio.to_thread(self.audit.append, record)
        if handle is not None:
            handle.tee.write(chained)
        return chained

    async def refuse(self, request: Request, status: int, detail: str, **audit: Any) -> None:
        """Audit the refused write, then raise the HTTP error."""
        await self.record_refusal(request, status, detail, **audit)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, detail, headers=headers)


async def _ctx(request: Request) -> ApiContext:  # async: a sync one costs a thread hop
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(_ctx)]


def need(role: Role) -> Any:
    """A dependency giving the user when their token is valid and their role >= ``role``
    (401 / 403 otherwise; refused writes are audited; writes are rate-limited)."""

    async def dependency(
        request: Request, ctx: Ctx, token: Annotated[str | None, Depends(_oauth2)]
    ) -> User:
        request.state.wall_utc = getattr(request.state, "wall_utc", _now_utc())
        write = request.method in WRITE_METHODS
        if not token:
            if write:
                await ctx.refuse(request, 401, "not authenticated", who="(unauthenticated)")
            raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
        try:
            user = ctx.tokens.check(token, ctx.settings.users)
        except AuthError as exc:
            if write:
                await ctx.refuse(request, 401, str(exc), who="(unauthenticated)")
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        if user.role < role:
            detail = f"needs role {role.name.lower()}; {user.name} is {user.role.name.lower()}"
            if write:
                await ctx.refuse(request, 403, detail, who=user.name)
            raise HTTPException(403, detail)
        if write and not ctx.limiter.allow(user.name):
            rate = ctx.settings.write_rate_per_s
            await ctx.refuse(request, 429, f"too many writes (limit {rate:g}/s)", who=user.name)
        return user

    return Depends(dependency)


Viewer = Annotated[User, need(Role.VIEWER)]
Operator = Annotated[User, need(Role.OPERATOR)]
Engineer = Annotated[User, need(Role.ENGINEER)]
Admin = Annotated[User, need(Role.ADMIN)]


def _reactor(ctx: ApiContext, rid: str) -> ReactorHandle:
    handle = ctx.reactors.get(rid)
    if handle is None:
        raise HTTPException(404, f"no reactor {rid!r}; reactors are {sorted(ctx.reactors)}")
    return handle


async def _write_reactor(ctx: ApiContext, request: Request, rid: str, why: str) -> ReactorHandle:
    """The reactor of a write (404 when unknown, 409 when its batch ended; both audited)."""
    handle = ctx.reactors.get(rid)
    if handle is None:
        detail = f"no reactor {rid!r}; reactors are {sorted(ctx.reactors)}"
        await ctx.refuse(request, 404, detail, who=_who(request, ctx), why=why)
    assert handle is not None
    if handle.loop.snapshot().done:
        detail = f"the batch of {rid} has ended; nothing was changed"
        await ctx.refuse(request, 409, detail, who=_who(request, ctx), why=why)
    return handle


def _who(request: Request, ctx: ApiContext) -> str:
    user = ctx.user_of(request)
    return user.name if user else "(unauthenticated)"


def _reactor_out(handle: ReactorHandle) -> ReactorOut:
    snap = handle.loop.snapshot()
    run = snap.run
    return ReactorOut(
        id=handle.id,
        site=run.site if run else None,
        batch=run.batch_id if run else None,
        run_id=run.run_id if run else None,
        t_h=snap.t_h,
        phase=snap.phase,
        mode=ModeName(snap.mode.value),
        done=snap.done,
    )


def _limits_out(handle: ReactorHandle) -> dict[str, LimitsOut]:
    return {
        name: LimitsOut(
            lower=lim.lower,
            upper=lim.upper,
            rate_per_h=lim.rate_per_h if math.isfinite(lim.rate_per_h) else None,
        )
        for name, lim in handle.limits().items()
    }


def _estimate_out(est: EstimateRecord | None) -> EstimateOut | None:
    if est is None:
        return None
    return EstimateOut(
        t_h=est.t_h,
        healthy=est.healthy,
        states={
            k: ValueSigma(value=fin(v), sigma=fin(est.x_sigma.get(k))) for k, v in est.x.items()
        },
        parameters={
            k: ValueSigma(value=fin(v), sigma=fin(est.parameter_sigma.get(k)))
            for k, v in est.parameters.items()
        },
        nis=fin(est.nis),
    )


def _measurement_out(m: MeasurementRecord) -> MeasurementOut:
    return MeasurementOut(sensor=m.sensor, value=fin(m.value), t_h=m.t_h, t_sample_h=m.t_sample_h)


def _setpoints_out(handle: ReactorHandle) -> SetpointsOut:
    snap = handle.loop.snapshot()
    sp: SetpointRecord | None = snap.setpoint
    return SetpointsOut(
        t_h=sp.t_h if sp else None,
        source=sp.source.value if sp else None,
        values=fin_map(sp.values) if sp else {},
        clamped=list(sp.clamped) if sp else [],
        applied=fin_map(snap.applied),
        operator=fin_map(handle.operator_setpoints()),
    )


def _fmt(value: float) -> str:
    return repr(float(value))


def create_app(
    *, settings: ApiSettings, reactors: Sequence[ReactorHandle], audit: AuditChain
) -> FastAPI:
    """The API over ``reactors`` (see the module docstring)."""
    app = FastAPI(
        title="bpcontrol live API",
        version="1",
        summary="Watch and steer running batches; every write is audited.",
        docs_url=None,
        redoc_url=None,
    )
    ids = [r.id for r in reactors]
    if len(set(ids)) != len(ids):
        raise ValueError(f"reactor ids must be unique, got {ids}")
    app.state.ctx = ApiContext(
        settings=settings,
        reactors={r.id: r for r in reactors},
        tokens=TokenIssuer(settings.secret, settings.token_ttl_s),
        audit=audit,
        limiter=RateLimiter(settings.write_rate_per_s, settings.write_burst),
        logins=RateLimiter(LOGIN_RATE_PER_S, LOGIN_BURST),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders, tls=settings.tls)
    _install_errors(app)
    _routes_reads(app)
    _routes_writes(app)
    _routes_stream(app)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        detail = "invalid request: " + "; ".join(parts)
        if request.method in WRITE_METHODS:
            ctx: ApiContext = request.app.state.ctx
            request.state.wall_utc = getattr(request.state, "wall_utc", _now_utc())
            await ctx.record_refusal(request, 422, detail)
        return JSONResponse({"detail": detail}, status_code=422)


def _routes_reads(app: FastAPI) -> None:
    @app.get(f"{PREFIX}/health", tags=["meta"])
    async def health() -> dict[str, str]:
        """Liveness (no authentication)."""
        return {"status": "ok"}

    @app.post(
        f"{PREFIX}/token",
        response_model=TokenOut,
        responses={code: {"model": ErrorOut} for code in (401, 422, 429)},
        tags=["auth"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["username", "password"],
                            "properties": {
                                "grant_type": {"type": "string", "enum": ["password"]},
                                "username": {"type": "string", "maxLength": 200},
                                "password": {"type": "string", "maxLength": 500},
                            },
                        }
                    }
                },
            }
        },
    )
    async def token(request: Request, ctx: Ctx) -> TokenOut:
        """OAuth2 password flow: a bearer token for a user name and password."""
        body = await request.body()
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
        username = form.get("username", [""])[0]
        password = form.get("password", [""])[0]
        grant = form.get("grant_type", ["password"])[0]
        if grant != "password" or not username or not password:
            raise HTTPException(422, "send grant_type=password, username and password (form)")
        if len(username) > 200 or len(password) > 500:
            raise HTTPException(422, "username or password too long")
        if not ctx.logins.allow(username):
            raise HTTPException(429, f"too many login attempts for {username!r}; wait")
        try:
            user = await asyncio.to_thread(ctx.settings.users.authenticate, username, password)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        return TokenOut(
            access_token=ctx.tokens.issue(user),
            expires_in=int(ctx.settings.token_ttl_s),
            role=user.role.name.lower(),
        )

    @app.get(f"{PREFIX}/reactors", responses=_ERRORS, tags=["read"])
    async def reactors(ctx: Ctx, user: Viewer) -> list[ReactorOut]:
        """Every reactor with its batch, phase and mode."""
        return [_reactor_out(h) for h in ctx.reactors.values()]

    @app.get(f"{PREFIX}/reactors/{{rid}}", responses=_ERRORS, tags=["read"])
    async def reactor_state(rid: str, ctx: Ctx, user: Viewer) -> ReactorStateOut:
        """Latest measurements, estimates with sigma, setpoints with their source, limits."""
        handle = _reactor(ctx, rid)
        return ReactorStateOut(
            reactor=_reactor_out(handle),
            measurements=[_measurement_out(m) for m in list(handle.tee.measurements.values())],
            estimate=_estimate_out(handle.loop.snapshot().estimate),
            setpoints=_setpoints_out(handle),
            limits=_limits_out(handle),
        )

    @app.get(f"{PREFIX}/reactors/{{rid}}/plan", responses=_ERRORS, tags=["read"])
    async def plan(rid: str, ctx: Ctx, user: Viewer) -> PlanOut | None:
        """The current NMPC plan (predicted states, planned inputs); null before the first."""
        rec = _reactor(ctx, rid).loop.snapshot().plan
        if rec is None:
            return None
        return PlanOut(
            t_h=rec.t_h,
            status=rec.status.value,
            solve_time_s=fin(rec.solve_time_s),
            t_nodes_h=[fin(v) for v in rec.t_nodes_h],
            x_pred={k: [fin(v) for v in vs] for k, vs in rec.x_pred.items()},
            u_plan={k: [fin(v) for v in vs] for k, vs in rec.u_plan.items()},
            message=rec.message,
        )

    @app.get(f"{PREFIX}/reactors/{{rid}}/events", responses=_ERRORS, tags=["read"])
    async def events(
        rid: str,
        ctx: Ctx,
        user: Viewer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[EventOut]:
        """The latest events (newest last), alarms marked."""
        handle = _reactor(ctx, rid)
        recent = list(handle.tee.events)[-limit:]
        return [
            EventOut(
                id=seq,
                t_h=e.t_h,
                kind=e.kind.value,
                message=e.message,
                source=e.source,
                alarm=e.kind in ALARM_KINDS,
            )
            for seq, e in recent
        ]

    @app.get(f"{PREFIX}/alarms", responses=_ERRORS, tags=["read"])
    async def alarms(ctx: Ctx, user: Viewer, unacknowledged: bool = False) -> list[AlarmOut]:
        """Alarms of every reactor, as each loop holds them (optionally only those not
        acknowledged); ``id`` is the alarm's number in its reactor's loop."""
        out: list[AlarmOut] = []
        for handle in ctx.reactors.values():
            book = handle.loop.snapshot().alarms
            chosen = book.unacknowledged() if unacknowledged else book.alarms
            out.extend(
                AlarmOut(
                    id=alarm.id,
                    reactor=handle.id,
                    t_h=alarm.event.t_h,
                    kind=alarm.event.kind.value,
                    message=alarm.event.message,
                    acked_by=alarm.acked_by,
                    acked_utc=alarm.acked_utc,
                    acked_why=alarm.acked_why,
                    acked_t_h=alarm.acked_t_h,
                )
                for alarm in chosen
            )
        return out

    @app.get(f"{PREFIX}/reactors/{{rid}}/history", responses=_ERRORS, tags=["read"])
    def history(
        rid: str,
        ctx: Ctx,
        user: Viewer,
        series: Annotated[list[str], Query(min_length=1, max_length=20)],
        t_from: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        t_to: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    ) -> HistoryOut:
        """Chosen series (sensors, estimated states, inputs) over a process-time range (h),
        read back from the reactor's historian file."""
        handle = _reactor(ctx, rid)
        return _history(handle, series, t_from, t_to)

    @app.get(f"{PREFIX}/audit", responses=_ERRORS, tags=["read"])
    async def audit_trail(
        ctx: Ctx,
        user: Admin,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        """Audit entries after ``after_seq`` (admin)."""
        entries = await asyncio.to_thread(ctx.audit.entries)
        chosen = [e for e in entries if e.seq > after_seq][:limit]
        return [
            AuditOut(
                seq=e.seq,
                wall_utc=e.wall_utc,
                t_h=e.t_h,
                reactor=e.run.reactor if e.run else None,
                who=e.who,
                action=e.action,
                old_value=e.old_value,
                new_value=e.new_value,
                why=e.why,
                accepted=e.accepted,
                result=e.result,
                reason=e.reason,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in chosen
        ]


def _history(
    handle: ReactorHandle, names: list[str], t_from: float | None, t_to: float | None
) -> HistoryOut:
    from services.historian import read_records

    if t_from is not None and t_to is not None and t_from > t_to:
        raise HTTPException(422, f"t_from {t_from} is after t_to {t_to}")
    if handle.records_path is None:
        raise HTTPException(404, f"reactor {handle.id} keeps no historian file")
    inputs, states = set(handle.input_names), set(handle.state_names)
    sensors = set(handle.tee.measurements)
    known = inputs | states | sensors
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HTTPException(422, f"unknown series {unknown}; known: {sorted(known)}")
    kinds = {
        "setpoint" if n in inputs else ("estimate" if n in states else "measurement") for n in names
    }
    try:
        records = read_records(handle.records_path, sorted(kinds), t_from, t_to)
    except FileNotFoundError:
        records = []
    out = {
        n: SeriesOut(
            kind="setpoint" if n in inputs else ("estimate" if n in states else "measurement"),
            t_h=[],
            value=[],
            sigma=[] if n in states and n not in inputs else None,
        )
        for n in names
    }
    for rec in records:
        if isinstance(rec, MeasurementRecord) and rec.sensor in out:
            s = out[rec.sensor]
            if s.kind == "measurement":
                s.t_h.append(rec.t_h)
                s.value.append(fin(rec.value))
        elif isinstance(rec, EstimateRecord):
            for n in names:
                if out[n].kind == "estimate" and n in rec.x:
                    out[n].t_h.append(rec.t_h)
                    out[n].value.append(fin(rec.x[n]))
                    sigma = out[n].sigma
                    if sigma is not None:
                        sigma.append(fin(rec.x_sigma.get(n)))
        elif isinstance(rec, SetpointRecord):
            for n in names:
                if out[n].kind == "setpoint" and n in rec.values:
                    out[n].t_h.append(rec.t_h)
                    out[n].value.append(fin(rec.values[n]))
    return HistoryOut(t_from=t_from, t_to=t_to, series=out)


async def _submit(
    ctx: ApiContext,
    request: Request,
    handle: ReactorHandle,
    user: User,
    response: Response,
    *,
    submit: Any,
    old: str,
    new: str,
    why: str,
    refused_status: Callable[[AuditRecord], int] = lambda _audit: 422,
) -> WriteOut:
    """Submit a command to the loop, wait for its verdict, audit it, answer.

    ``refused_status`` gives the HTTP status of a refusal (default 422). The old and new
    values the loop put in its audit record win over ``old`` and ``new`` (read before
    submitting, so possibly a tick stale)."""
    future = submit()
    wrapped = asyncio.wrap_future(future)
    wall = request.state.wall_utc

    def status_of(audit: AuditRecord) -> int:
        return 200 if audit.accepted else refused_status(audit)

    async def chain(audit: AuditRecord) -> AuditRecord:
        status = status_of(audit)
        result = "accepted" if status == 200 else f"refused ({status})"
        full = replace(
            audit,
            wall_utc=wall,
            old_value=audit.old_value or old,
            new_value=audit.new_value or new,
            result=result,
        )
        return await asyncio.to_thread(ctx.audit.append, full)

    try:
        audit = await asyncio.wait_for(asyncio.shield(wrapped), ctx.settings.write_timeout_s)
    except TimeoutError:

        async def later() -> None:
            await chain(await wrapped)

        task = asyncio.get_running_loop().create_task(later())
        request.app.state.pending = getattr(request.app.state, "pending", set()) | {task}
        response.status_code = 202
        return WriteOut(
            result="pending",
            action="",
            old_value=old,
            new_value=new,
            t_h=handle.loop.snapshot().t_h,
            audit_seq=None,
        )
    chained = await chain(audit)
    if not audit.accepted:
        raise HTTPException(status_of(audit), audit.reason)
    return WriteOut(
        result="accepted",
        action=chained.action,
        old_value=chained.old_value,
        new_value=chained.new_value,
        t_h=chained.t_h,
        audit_seq=chained.seq,
    )


def _routes_writes(app: FastAPI) -> None:
    write_responses: dict[int | str, dict[str, Any]] = {**_ERRORS, 202: {"model": WriteOut}}

    @app.post(f"{PREFIX}/reactors/{{rid}}/mode", responses=write_responses, tags=["write"])
    async def set_mode(
        rid: str, body: ModeIn, request: Request, response: Response, ctx: Ctx, user: Operator
    ) -> WriteOut:
        """Switch the mode (operator): auto, manual, hold or fallback."""
        handle = await _write_reactor(ctx, request, rid, body.reason)
        old = handle.loop.snapshot().mode.name
        return await _submit(
            ctx,
            request,
            handle,
            user,
            response,
            submit=lambda: handle.loop.submit_mode(body.mode.value, who=user.name, why=body.reason),
            old=old,
            new=body.mode.name,
            why=body.reason,
        )

    @app.put(
        f"{PREFIX}/reactors/{{rid}}/setpoints/{{name}}",
        responses=write_responses,
        tags=["write"],
    )
    async def set_setpoint(
        rid: str,
        name: str,
        body: SetpointIn,
        request: Request,
        response: Response,
        ctx: Ctx,
        user: Operator,
    ) -> WriteOut:
        """Set an operator setpoint (operator; MANUAL only; inside the limits)."""
        handle = await _write_reactor(ctx, request, rid, body.reason)
        if name not in handle.input_names:
            detail = f"no input {name!r}; inputs are {list(handle.input_names)}"
            await ctx.refuse(request, 404, detail, who=user.name, why=body.reason)
        old = _fmt(handle.operator_setpoints()[name])
        return await _submit(
            ctx,
            request,
            handle,
            user,
            response,
            submit=lambda: handle.loop.submit_setpoint(
                name, body.value, who=user.name, why=body.reason
            ),
            old=old,
            new=_fmt(body.value),
            why=body.reason,
        )

    @app.put(
        f"{PREFIX}/reactors/{{rid}}/limits/{{name}}", responses=write_responses, tags=["write"]
    )
    async def set_limits(
        rid: str,
        name: str,
        body: LimitsIn,
        request: Request,
        response: Response,
        ctx: Ctx,
        user: Engineer,
    ) -> WriteOut:
        """Change an input's limits (engineer)."""
        handle = await _write_reactor(ctx, request, rid, body.reason)
        if name not in handle.input_names:
            detail = f"no input {name!r}; inputs are {list(handle.input_names)}"
            await ctx.refuse(request, 404, detail, who=user.name, why=body.reason)
        lim = handle.limits()[name]
        rate = math.inf if body.rate_per_h is None else body.rate_per_h
        return await _submit(
            ctx,
            request,
            handle,
            user,
            response,
            submit=lambda: handle.loop.submit_limits(
                name,
                lower=body.lower,
                upper=body.upper,
                rate_per_h=rate,
                who=user.name,
                why=body.reason,
            ),
            old=f"[{lim.lower!r}, {lim.upper!r}] rate {lim.rate_per_h!r}/h",
            new=f"[{body.lower!r}, {body.upper!r}] rate {rate!r}/h",
            why=body.reason,
        )

    @app.post(
        f"{PREFIX}/reactors/{{rid}}/alarms/{{alarm_id}}/ack",
        responses=write_responses,
        tags=["write"],
    )
    async def acknowledge(
        rid: str,
        alarm_id: int,
        body: AckIn,
        request: Request,
        response: Response,
        ctx: Ctx,
        user: Operator,
    ) -> WriteOut:
        """Acknowledge an alarm of the reactor's loop (operator): 404 when the loop has no
        such alarm, 409 when it was acknowledged already. Also after the batch ended."""
        handle = ctx.reactors.get(rid)
        if handle is None:
            detail = f"no reactor {rid!r}; reactors are {sorted(ctx.reactors)}"
            await ctx.refuse(request, 404, detail, who=user.name, why=body.reason)
        assert handle is not None

        def refused_status(audit: AuditRecord) -> int:
            # the loop refreshed its snapshot before answering; ids are never reused and
            # an acknowledgement is never undone, so the book says why it was refused
            alarm = handle.loop.snapshot().alarms.get(alarm_id)
            if alarm is None:
                return 404
            return 409 if alarm.acknowledged else 422

        return await _submit(
            ctx,
            request,
            handle,
            user,
            response,
            submit=lambda: handle.loop.submit_ack(
                alarm_id, who=user.name, why=body.reason, wall_utc=request.state.wall_utc
            ),
            old="",
            new="acknowledged",
            why=body.reason,
            refused_status=refused_status,
        )


def _routes_stream(app: FastAPI) -> None:
    @app.get(
        f"{PREFIX}/reactors/{{rid}}/stream",
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
        response_class=StreamingResponse,
        tags=["stream"],
    )
    async def stream(rid: str, ctx: Ctx, user: Viewer) -> StreamingResponse:
        """Server-sent events: every record of the reactor as it is written (``id``: its
        number, ``event``: its type); a client too slow for its queue gets ``dropped``."""
        handle = _reactor(ctx, rid)
        client = StreamClient(asyncio.get_running_loop(), ctx.settings.stream_queue)
        after = handle.tee.subscribe(client)
        return StreamingResponse(
            _sse(handle, client, after),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )


def _sse_event(event: str, data: object, seq: int | None = None) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {text}\n\n"


async def _sse(handle: ReactorHandle, client: StreamClient, after: int) -> AsyncIterator[str]:
    try:
        yield _sse_event("hello", {"reactor": handle.id, "after_seq": after})
        while True:
            chunk: list[str] = []
            ended = False
            for item in client.drain():
                if item is END:
                    ended = True
                    break
                seq, record = item
                data = record_json(record)
                chunk.append(_sse_event(str(data["type"]), data, seq))
            if client.dropped:
                chunk.append(
                    _sse_event(
                        "dropped",
                        {
                            "detail": f"this client fell {client.size} records behind and "
                            "was dropped (the loop never waits); reconnect and read the "
                            "history endpoint for the gap"
                        },
                    )
                )
                ended = True
            if ended:
                chunk.append(_sse_event("end", {"last_seq": handle.tee.seq}))
            if chunk:
                yield "".join(chunk)
            if ended:
                return
            before = handle.tee.seq
            await client.wait(KEEPALIVE_S)
            if handle.tee.seq == before and not client.dropped:
                yield ": keep-alive\n\n"
    finally:
        handle.tee.unsubscribe(client)
