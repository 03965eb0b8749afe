"""The dashboard's pages (FastAPI + Jinja2, server-rendered), mounted on the fleet service's app: same process,
same database. A thin shell: sessions and roles come from accounts.py, reads and writes from data.py.

Every page needs a session (a logged-out browser is sent to /login); every POST needs the session's CSRF token
(form field `csrf_token`); the login form uses a double-submit cookie. Live alerts: server-sent events.

No `from __future__ import annotations` here: FastAPI reads the route annotations at run time."""

import asyncio
import json
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from qc_cloud.dashboard import accounts, data, dataset, review
from qc_cloud.fleet import queries, rollout, rules
from qc_cloud.fleet.samples import SampleStore

HERE = Path(__file__).parent
COOKIE = "qc_session"
LOGIN_COOKIE = "qc_login_csrf"
CHART_JS = (Path("/usr/share/javascript/chart.js/chart.min.js"),)  # Debian libjs-chart.js (offline, no CDN)
NAME = r"[A-Za-z0-9_.-]{1,64}"
SEVERITIES = ("INFO", "WARN", "ERROR", "CRITICAL")
SSE_LIFETIME_S = 15.0  # a stream ends after this; EventSource reconnects with Last-Event-ID (nothing lost)
SSE_POLL_S = 0.2


class LoginRequiredError(Exception):
    pass


def _fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _fmt_time(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v).replace("T", " ")[:19]


def mount(app: FastAPI, engine: Engine, samples: SampleStore, export_dir: Path, secure_cookies: bool | None = None):
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = _fmt_pct
    templates.env.filters["t"] = _fmt_time
    templates.env.globals["quote"] = lambda s: quote(str(s), safe="")
    templates.env.globals["shadow_summary"] = rollout.shadow_summary
    throttle = accounts.LoginThrottle(engine)  # in the database: shared by all API workers
    timings: dict[str, list[float]] = {}
    app.state.dashboard_timings = timings

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" if secure_cookies is None else secure_cookies

    def current(request: Request) -> dict | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        with engine.connect() as conn:
            user = accounts.session_user(conn, token)
        if user:
            user["csrf"] = accounts.csrf_token(token)
            user["token"] = token
        return user

    def require(request: Request, permission: str = "view") -> dict:
        user = current(request)
        if user is None:
            raise LoginRequiredError()
        if not accounts.allows(user["role"], permission):
            raise HTTPException(403, f"your role ({user['role']}) cannot {permission}")
        return user

    async def form_of(request: Request, user: dict) -> Any:
        form = await request.form()
        if not accounts.csrf_ok(user["token"], form.get("csrf_token")):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return form

    def render(request: Request, name: str, user: dict | None, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(
            request,
            name,
            {"user": user, "can": (lambda p: user is not None and accounts.allows(user["role"], p)), **context},
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(LoginRequiredError)
    async def _login_required(request: Request, exc: LoginRequiredError) -> Response:
        if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return Response("login required", status_code=401)

    @app.middleware("http")
    async def _timing(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        key = request.scope.get("route").path if request.scope.get("route") else request.url.path
        series = timings.setdefault(f"{request.method} {key}", [])
        if len(series) < 100000:
            series.append((time.perf_counter() - started) * 1000)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # --- assets (public: library code and style, no data) ---

    @app.get("/static/app.css", include_in_schema=False)
    def css() -> FileResponse:
        return FileResponse(HERE / "static" / "app.css", media_type="text/css")

    @app.get("/static/app.js", include_in_schema=False)
    def js() -> FileResponse:
        return FileResponse(HERE / "static" / "app.js", media_type="text/javascript")

    @app.get("/static/chart.min.js", include_in_schema=False)
    def chart_js() -> Response:
        for path in CHART_JS:
            if path.exists():
                return FileResponse(path, media_type="text/javascript")
        raise HTTPException(404, "Chart.js is not installed (apt-get install libjs-chart.js: scripts/setup.sh)")

    # --- login ---

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/fleet", error: str = "") -> Response:
        token = secrets.token_urlsafe(24)
        response = render(
            request, "login.html", None, csrf=token, next=next if next.startswith("/") else "/fleet", error=error
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure(request), max_age=3600)
        return response

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        presented = str(form.get("csrf_token", ""))
        if not cookie or not presented or not secrets.compare_digest(cookie, presented):
            raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
        username = str(form.get("username", ""))[:64]
        nxt = str(form.get("next", "/fleet"))
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/fleet"
        wait = await asyncio.to_thread(throttle.blocked_for, username, rules.utcnow())
        if wait:
            raise HTTPException(429, f"too many failed log-ins for {username}: try again in {wait:.0f} s")
        token = await asyncio.to_thread(accounts.login, engine, username, str(form.get("password", ""))[:1024])
        if token is None:
            await asyncio.to_thread(throttle.failed, username, rules.utcnow())
            return RedirectResponse(f"/login?error=1&next={quote(nxt)}", status_code=303)
        await asyncio.to_thread(throttle.succeeded, username)
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="lax", secure=secure(request), max_age=accounts.SESSION_HOURS * 3600
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        user = require(request)
        await form_of(request, user)
        with engine.begin() as conn:
            accounts.logout(conn, user["token"])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        require(request)
        return RedirectResponse("/fleet", status_code=303)

    # --- fleet, cell, part ---

    @app.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
    def fleet_page(request: Request, hours: int = 24) -> Response:
        user = require(request)
        hours = min(max(hours, 1), 24 * 31)
        now = rules.utcnow()
        with engine.connect() as conn:
            fleet = data.fleet(conn, now, hours)
            open_alerts = data.alerts(conn, None, None, None, False, 20, 0)
        return render(request, "fleet.html", user, fleet=fleet, alerts=open_alerts, hours=hours, now=now)

    def cell_name(site: str, line: str, cell: str) -> str:
        import re

        for part in (site, line, cell):
            if not re.fullmatch(NAME, part):
                raise HTTPException(400, "bad cell name")
        return f"{site}/{line}/{cell}"

    @app.get("/cells/{site}/{line}/{cell}", response_class=HTMLResponse, include_in_schema=False)
    def cell_page(request: Request, site: str, line: str, cell: str, hours: int = 24) -> Response:
        user = require(request)
        name = cell_name(site, line, cell)
        hours = min(max(hours, 1), 24 * 90)
        end = rules.utcnow()
        start = end - timedelta(hours=hours)
        with engine.connect() as conn:
            if not queries.cell_exists(conn, name):
                raise HTTPException(404, f"no cell {name}")
            charts = data.cell_charts(conn, name, start, end)
            parts = data.recent_parts(conn, name)
            cloud = data.cloud_agreement(conn, name, start, end)
            drift_episodes = data.drift_episodes(conn, name)
            fleet_row = next(iter(data.fleet(conn, end, hours, only=name)["cells"]), None)
        return render(
            request,
            "cell.html",
            user,
            cell=name,
            row=fleet_row,
            hours=hours,
            charts=charts,
            charts_json=json.dumps(charts),
            parts=parts,
            cloud=cloud,
            drift_episodes=drift_episodes,
            start=start,
            end=end,
        )

    @app.get("/cells/{site}/{line}/{cell}/shadow", response_class=HTMLResponse, include_in_schema=False)
    def cell_shadow_page(
        request: Request,
        site: str,
        line: str,
        cell: str,
        version: str = "",
        since: str = "",
        hours: int = 168,
        reinspect: float = 0.5,
        defective: float = 0.8,
        bins: int = 20,
    ) -> Response:
        """The cell's shadow runs: per shadow version the figures of GET /api/v1/cells/.../shadow (the same
        queries.shadow_report), with the live verdict x shadow band table and the score histogram."""
        user = require(request)
        name = cell_name(site, line, cell)
        if not (0.0 <= reinspect <= defective <= 1.0):
            raise HTTPException(400, "bands: 0 <= reinspect <= defective <= 1")
        bins = min(max(bins, 1), 100)
        end = rules.utcnow()
        try:
            start = rules.parse_time(since) if since else end - timedelta(hours=min(max(hours, 1), 24 * 366))
        except rules.Refused as exc:
            raise HTTPException(400, f"since: {exc}") from None
        with engine.connect() as conn:
            if not queries.cell_exists(conn, name):
                raise HTTPException(404, f"no cell {name}")
            items = queries.shadow_report(conn, name, version[:256] or None, start, None, reinspect, defective, bins)
        for item in items:
            item["skip_share"] = queries.skip_share(item["cell_counts"])
            top = max(item["histogram"]["counts"]) or 1
            item["bars"] = [
                {"low": i / bins, "high": (i + 1) / bins, "n": n, "width": round(100 * n / top, 1)}
                for i, n in enumerate(item["histogram"]["counts"])
            ]
        return render(
            request,
            "shadow.html",
            user,
            cell=name,
            items=items,
            version=version,
            start=start,
            since=since,
            hours=hours,
            bands={"reinspect": reinspect, "defective": defective},
            verdicts=queries.LIVE_VERDICTS,
            shadow_bands=queries.SHADOW_BANDS,
        )

    @app.get("/parts/{site}/{line}/{cell}/{part_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def part_page(request: Request, site: str, line: str, cell: str, part_id: str) -> Response:
        user = require(request)
        name = cell_name(site, line, cell)
        with engine.connect() as conn:
            story = queries.part_story(conn, name, part_id[:256])
            labels = {}
            if story:
                for s in story["samples"]:
                    labels[s["record_id"]] = data.sample(conn, name, s["record_id"])["labels"]
        if story is None:
            raise HTTPException(404, f"no part {part_id} of {name}")
        return render(request, "part.html", user, story=story, labels=labels)

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search(request: Request, part_id: str = "") -> Response:
        user = require(request)
        part_id = part_id.strip()[:256]
        found = []
        if part_id:
            with engine.connect() as conn:
                found = data.find_parts(conn, part_id)
            cells = {f["cell"] for f in found}
            if len(cells) == 1:
                return RedirectResponse(f"/parts/{found[0]['cell']}/{quote(part_id, safe='')}", status_code=303)
        return render(request, "search.html", user, part_id=part_id, found=found)

    @app.get("/img/{sha256}", include_in_schema=False)
    def image(request: Request, sha256: str) -> Response:
        require(request)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise HTTPException(400, "bad image id")
        blob = samples.get(sha256)
        if blob is None:
            raise HTTPException(404, "no such image")
        return Response(blob, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    # --- re-inspection station ---

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_queue(request: Request, order: str = "newest", kind: str = "", offset: int = 0) -> Response:
        user = require(request)
        order = order if order in ("newest", "uncertain") else "newest"
        kind = kind if kind in ("reinspect", "rejected", "random") else ""
        offset = min(max(offset, 0), 1_000_000)
        with engine.connect() as conn:
            items = data.queue(conn, order, kind or None, 50, offset)
            figures = data.agreement(conn)
        return render(request, "review.html", user, items=items, figures=figures, order=order, kind=kind, offset=offset)

    @app.get("/review/{site}/{line}/{cell}/{record_id}", response_class=HTMLResponse, include_in_schema=False)
    def review_item(
        request: Request, site: str, line: str, cell: str, record_id: str, order: str = "newest", kind: str = ""
    ) -> Response:
        user = require(request)
        name = cell_name(site, line, cell)
        with engine.connect() as conn:
            item = data.sample(conn, name, record_id[:128])
            types = data.defect_types(conn)
            model_types = data.model_defect_types(conn, item["model_version"]) if item else []
        if item is None:
            raise HTTPException(404, f"no sample {record_id} of {name}")
        return render(
            request,
            "review_item.html",
            user,
            item=item,
            types=types,
            model_types=model_types,
            keys=review.KEYS,
            order=order,
            kind=kind,
        )

    @app.post("/review/{site}/{line}/{cell}/{record_id}", include_in_schema=False)
    async def label(request: Request, site: str, line: str, cell: str, record_id: str) -> Response:
        user = require(request, "label")
        form = await form_of(request, user)
        name = cell_name(site, line, cell)
        answer = str(form.get("answer", ""))
        defect_type = str(form.get("defect_type_other", "") or form.get("defect_type", "") or "")
        try:
            with engine.begin() as conn:
                stored = data.add_label(
                    conn,
                    name,
                    record_id[:128],
                    answer,
                    defect_type,
                    str(form.get("note", "")),
                    user["username"],
                    rules.utcnow(),
                )
                nxt = None
                if stored is not None and form.get("then") != "stay":
                    order, kind = str(form.get("order", "newest")), str(form.get("kind", ""))
                    queue = data.queue(
                        conn, order if order in ("newest", "uncertain") else "newest", kind or None, 1, 0
                    )
                    nxt = queue[0] if queue else None
        except review.LabelError as exc:
            raise HTTPException(400, str(exc)) from None
        if stored is None:
            raise HTTPException(404, f"no sample {record_id} of {name}")
        if form.get("then") == "stay":
            return RedirectResponse(f"/review/{name}/{quote(record_id)}", status_code=303)
        if nxt is None:
            return RedirectResponse("/review?done=1", status_code=303)
        return RedirectResponse(
            f"/review/{nxt['cell']}/{quote(nxt['record_id'])}"
            f"?order={quote(str(form.get('order', 'newest')))}&kind={quote(str(form.get('kind', '')))}",
            status_code=303,
        )

    # --- export ---

    @app.get("/export", response_class=HTMLResponse, include_in_schema=False)
    def export_page(request: Request) -> Response:
        user = require(request, "export")
        return render(request, "export.html", user, result=None)

    @app.post("/export", response_class=HTMLResponse, include_in_schema=False)
    async def export_post(request: Request) -> Response:
        user = require(request, "export")
        await form_of(request, user)
        folder = Path(export_dir) / f"labels-{rules.utcnow():%Y%m%dT%H%M%S%f}"
        result = await asyncio.to_thread(dataset.export, engine, samples, folder, user["username"])
        return render(request, "export.html", user, result=result)

    # --- alerts ---

    def alert_filter_values(cell: str, severity: str, code: str, state: str):
        return (
            cell[:200] or None,
            severity if severity in SEVERITIES else None,
            code[:256] or None,
            {"open": False, "acked": True}.get(state),
        )

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(
        request: Request, cell: str = "", severity: str = "", code: str = "", state: str = "open", offset: int = 0
    ) -> Response:
        user = require(request)
        f = alert_filter_values(cell, severity, code, state)
        offset = min(max(offset, 0), 1_000_000)
        with engine.connect() as conn:
            items = data.alerts(conn, *f, 100, offset)
            last = data.last_alert_id(conn)
            options = data.alert_filters(conn)
        return render(
            request,
            "alerts.html",
            user,
            items=items,
            last=last,
            options=options,
            severities=SEVERITIES,
            cell=cell,
            severity=severity,
            code=code,
            state=state,
            offset=offset,
        )

    @app.post("/alerts/{alert_id}/ack", include_in_schema=False)
    async def ack(request: Request, alert_id: int) -> Response:
        user = require(request, "ack")
        form = await form_of(request, user)
        with engine.begin() as conn:
            row = queries.ack_alert(conn, alert_id, user["username"], str(form.get("note", ""))[:1024], rules.utcnow())
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        back = str(form.get("back", "/alerts"))
        return RedirectResponse(
            back if back.startswith("/") and not back.startswith("//") else "/alerts", status_code=303
        )

    @app.get("/rollouts", response_class=HTMLResponse, include_in_schema=False)
    def rollouts_page(request: Request) -> Response:
        user = require(request)
        with engine.connect() as conn:
            items = rollout.list_rollouts(conn)
        return render(request, "rollouts.html", user, items=items)

    @app.get("/rollouts/{rollout_id}", response_class=HTMLResponse, include_in_schema=False)
    def rollout_page(request: Request, rollout_id: int) -> Response:
        user = require(request)
        with engine.connect() as conn:
            found = rollout.get_rollout(conn, min(max(rollout_id, 0), 2**62))
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        for stage in found["stages"]:  # the scores a shadow stage is judged on: from CLOCK_SKEW before its start
            started = rules.parse_time(stage["started_at"])
            stage["judged_since"] = queries.iso(started - rollout.CLOCK_SKEW) if started else None
        return render(request, "rollout.html", user, r=found, error=request.query_params.get("error", ""))

    @app.post("/rollouts/{rollout_id}/abort", include_in_schema=False)
    async def rollout_abort(request: Request, rollout_id: int) -> Response:
        user = require(request, "rollout")
        form = await form_of(request, user)
        try:
            with engine.begin() as conn:
                rollout.request_abort(conn, rollout_id, f"user:{user['username']}", str(form.get("note", ""))[:1024])
        except LookupError:
            raise HTTPException(404, f"no rollout {rollout_id}") from None
        except rollout.RolloutError as exc:
            return RedirectResponse(f"/rollouts/{rollout_id}?error={quote(str(exc))}", status_code=303)
        return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)

    @app.get("/alerts/stream", include_in_schema=False)
    async def alert_stream(
        request: Request, cell: str = "", severity: str = "", code: str = "", after: int = -1
    ) -> Response:
        require(request)
        f = alert_filter_values(cell, severity, code, "all")
        try:
            last = int(request.headers["last-event-id"]) if request.headers.get("last-event-id") else after
        except ValueError:
            raise HTTPException(400, "bad Last-Event-ID") from None

        def fetch(after_id: int) -> list[dict]:
            with engine.connect() as conn:
                return data.alerts(conn, *f, 100, 0, after_id=after_id)

        if last < 0:  # no position given: from now on
            with engine.connect() as conn:
                last = data.last_alert_id(conn)

        async def events():
            nonlocal last
            yield f"retry: 300\nid: {last}\n\n"
            ends = time.monotonic() + SSE_LIFETIME_S
            while time.monotonic() < ends:
                if await request.is_disconnected():
                    return
                rows = await asyncio.to_thread(fetch, last)
                for row in rows:
                    last = max(last, row["id"])
                    yield f"id: {row['id']}\nevent: alert\ndata: {json.dumps(row)}\n\n"
                await asyncio.sleep(SSE_POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # --- users (admin) ---

    @app.get("/users", response_class=HTMLResponse, include_in_schema=False)
    def users_page(request: Request, error: str = "") -> Response:
        user = require(request, "users")
        with engine.connect() as conn:
            users = accounts.list_users(conn)
        return render(request, "users.html", user, users=users, roles=accounts.ROLES, error=error)

    @app.post("/users", include_in_schema=False)
    async def users_post(request: Request) -> Response:
        user = require(request, "users")
        form = await form_of(request, user)
        action = form.get("action")
        try:
            with engine.begin() as conn:
                if action == "add":
                    accounts.add_user(
                        conn, str(form.get("username", "")), str(form.get("password", "")), str(form.get("role", ""))
                    )
                elif action == "role":
                    accounts.set_role(conn, str(form.get("username", "")), role=str(form.get("role", "")))
                elif action in ("disable", "enable"):
                    if form.get("username") == user["username"]:
                        raise accounts.AccountError("you cannot disable yourself")
                    accounts.set_role(conn, str(form.get("username", "")), disabled=action == "disable")
                else:
                    raise accounts.AccountError("unknown action")
        except accounts.AccountError as exc:
            return RedirectResponse(f"/users?error={quote(str(exc))}", status_code=303)
        return RedirectResponse("/users", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path in ("/metrics", "/healthz", "/readyz"):
            from fastapi.exception_handlers import http_exception_handler

            return await http_exception_handler(request, exc)
        return templates.TemplateResponse(
            request,
            "error.html",
            {"user": None, "status": exc.status_code, "detail": exc.detail, "can": lambda p: False},
            status_code=exc.status_code,
        )

    return app
