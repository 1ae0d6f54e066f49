"""The web app behind ``turnout serve``: pages for people, ``/api/`` for scripts.

Pages are rendered on the server (Jinja2, autoescaped) and refresh their live parts with the
vendored htmx; there is no JavaScript build. ``/api/`` returns what the CLI's ``--json``
returns, built by the same functions (:mod:`turnout.views`).

Read-only unless started with a token. With one, write actions (re-point a target, add or
remove a route, roll back) go through the same :class:`~turnout.runtime.Turnout` methods as
the CLI, so they are validated, preflighted and recorded in the target's history the same way.
Pages ask for the token once (``/login``) and keep a signed session cookie (``HttpOnly``,
``SameSite=Strict``); every form carries a CSRF token tied to that session, and a request from
another origin is refused. The API takes the token as ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from turnout import __version__, stats, views
from turnout.errors import (
    ConfigurationError,
    RegistryUnavailableError,
    StaleRevisionError,
    TurnoutError,
    UnknownTargetError,
    UsageError,
)
from turnout.models import utcnow
from turnout.registry import TargetChange, TargetSpec, changes
from turnout.releases import ReleaseRecord, Status
from turnout.routing import all_refs
from turnout.runtime import Turnout
from turnout.web import charts

HERE = Path(__file__).parent
WINDOWS = ("15m", "1h", "6h", "24h", "7d")
"""The windows the pages offer (any duration works in a URL: ``?since=90m``)."""
DEFAULT_WINDOW = "1h"
BUCKETS = 24
"""Slices per chart."""
REFRESH_SECONDS = 10
"""How often an open page fetches its live parts again."""
RELEASES_LIMIT = 50
SESSION_COOKIE = "turnout_session"
STATUSES = tuple(status.value for status in Status)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(
    handle: Turnout,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The dashboard and its API over ``handle``'s registry.

    Args:
        handle: Where targets and releases are read, and edits go.
        token: Enables write actions, which then require it; ``None``: read-only.
        allowed_hosts: ``Host`` headers to answer (``turnout serve`` passes the address it
            listens on, which stops DNS rebinding); ``None``: any.
    """
    if token is not None and len(token) < 16:
        raise UsageError("the dashboard token must be at least 16 characters")
    app = FastAPI(
        title="turnout",
        version=__version__,
        docs_url=None,  # its page loads scripts from a CDN: the schema is enough
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    state = _State(handle, token)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["seconds"] = views.seconds_text
    templates.env.filters["rate"] = views.rate_text
    templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
    templates.env.filters["when"] = _when
    templates.env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    templates.env.globals.update(
        version=__version__,
        windows=WINDOWS,
        refresh=REFRESH_SECONDS,
        buckets=BUCKETS,
        statuses=STATUSES,
        writable=token is not None,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")  # live data
        return response

    @app.exception_handler(TurnoutError)
    async def turnout_error(request: Request, exc: TurnoutError) -> Response:
        status = _status_of(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse(_error_body(exc), status_code=status)
        return templates.TemplateResponse(
            request, "error.html", {"error": str(exc), "kind": type(exc).__name__}, status
        )

    render = _Renderer(templates, state)
    _add_pages(app, state, render)
    _add_actions(app, state, render)
    _add_api(app, state)
    return app


class _Renderer:
    """Renders a page with what every page needs: the session and its CSRF token."""

    def __init__(self, templates: Jinja2Templates, state: _State) -> None:
        self.templates = templates
        self.state = state

    def __call__(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        session = self.state.session(request)
        context |= {"signed_in": session is not None, "csrf": self.state.csrf(session)}
        return self.templates.TemplateResponse(request, name, context, status)


def _add_pages(app: FastAPI, state: _State, page: _Renderer) -> None:
    """The pages people read."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request, since: str = DEFAULT_WINDOW) -> Response:
        return page(request, "overview.html", {"window": since, **state.overview(since)})

    @app.get("/targets/{name}", response_class=HTMLResponse, include_in_schema=False)
    def target_page(
        request: Request, name: str, since: str = DEFAULT_WINDOW, done: str = "", revision: int = 0
    ) -> Response:
        said = DONE[done].format(revision=revision) if done in DONE else ""
        return page(request, "target.html", state.target_context(name, since, said))

    @app.get("/releases", response_class=HTMLResponse, include_in_schema=False)
    def releases_page(request: Request) -> Response:
        query = _ReleaseQuery.from_params(request.query_params)
        records = state.handle.ledger.recent(**query.filters())
        return page(
            request,
            "releases.html",
            {"query": query, "records": records, "targets": state.target_names()},
        )

    @app.get("/releases/{release_id}", response_class=HTMLResponse, include_in_schema=False)
    def release_page(request: Request, release_id: str) -> Response:
        record = state.release(release_id)
        decision = views.decision_text(record.decision) if record.decision else ""
        return page(request, "release.html", {"record": record, "decision_text": decision})


def _add_actions(app: FastAPI, state: _State, page: _Renderer) -> None:
    """Signing in and out, and the changes the pages make (only with a token)."""

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        state.require_writable()
        return page(request, "login.html", {"next": _local(next), "failed": False})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        state.require_writable()
        _same_origin(request)
        form = await _form(request)
        target = _local(form.get("next", "/"))
        if not state.token_matches(form.get("token", "")):
            return page(request, "login.html", {"next": target, "failed": True}, 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            state.new_session(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await state.checked_form(request)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def act(request: Request, name: str, kind: str, data: dict[str, str]) -> Response:
        form = await state.checked_form(request)
        try:
            change = await run_in_threadpool(
                CHANGES[kind], state.handle, name, form | data, request
            )
        except TurnoutError as exc:
            context = await run_in_threadpool(state.target_context, name, DEFAULT_WINDOW, "")
            context["failure"] = str(exc)
            return page(request, "target.html", context, _status_of(exc))
        if change.dry_run:  # "Preview": what would change and who would move; nothing written
            context = await run_in_threadpool(state.target_context, name, DEFAULT_WINDOW, "")
            context["preview"] = _preview(change)
            return page(request, "target.html", context)
        said = urlencode({"done": kind, "revision": change.target.revision})
        return RedirectResponse(f"/targets/{_quote(name)}?{said}", status_code=303)

    @app.post("/targets/{name}/{kind}", include_in_schema=False)
    async def change_form(request: Request, name: str, kind: str) -> Response:
        if kind not in CHANGES or kind == "remove-route":
            raise NotFoundError(f"no change called {kind!r}")
        return await act(request, name, kind, {})

    @app.post("/targets/{name}/routes/{route_id}/remove", include_in_schema=False)
    async def remove_route_form(request: Request, name: str, route_id: str) -> Response:
        return await act(request, name, "remove-route", {"route": route_id})


def _add_api(app: FastAPI, state: _State) -> None:
    """``/api/``: what the CLI's ``--json`` prints, and the same changes for scripts."""

    @app.get("/api/targets")
    def api_targets() -> list[dict[str, Any]]:
        """Every target (``turnout target list --json``)."""
        return [views.target(spec) for spec in state.handle.registry.list_targets()]

    @app.get("/api/targets/{name}")
    def api_target(name: str) -> dict[str, Any]:
        """One target (``turnout target show NAME --json``)."""
        return views.target(state.handle.registry.get_target(name))

    @app.get("/api/targets/{name}/routes")
    def api_routes(name: str) -> dict[str, Any]:
        """A target's routes and default (``turnout route list NAME --json``)."""
        return views.routes(state.handle.registry.get_target(name))

    @app.get("/api/targets/{name}/history")
    def api_history(name: str) -> list[dict[str, Any]]:
        """Every revision, oldest first (``turnout history NAME --json``)."""
        rows = views.history(state.handle.registry, name)
        if not rows:
            raise UnknownTargetError(name)
        return rows

    @app.get("/api/releases")
    def api_releases(request: Request) -> list[dict[str, Any]]:
        """Releases, newest first (``turnout releases --json``): ``since``, ``target``,
        ``plugin`` (an id or ``id@version``), ``customer``, ``status`` (repeatable), ``limit``
        (default 20, as in the CLI)."""
        query = _ReleaseQuery.from_params(request.query_params, limit=20)
        return [r.to_dict() for r in state.handle.ledger.recent(**query.filters())]

    @app.get("/api/releases/{release_id}")
    def api_release(release_id: str) -> dict[str, Any]:
        """One release (``turnout releases show ID --json``)."""
        return state.release(release_id).to_dict()

    @app.get("/api/stats")
    def api_stats(request: Request) -> dict[str, Any]:
        """``turnout stats --json``: ``by`` (repeatable or comma-separated; default version),
        ``since`` (default 1h), ``target``, ``plugin``, ``customer``."""
        params = request.query_params
        filters = _ReleaseQuery.from_params(params, since=DEFAULT_WINDOW).release_filters()
        try:
            by = stats.dimensions(params.getlist("by"))
            groups, total = stats.summarize(state.handle.ledger.outcomes(by, **filters), by)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return views.stats(by, groups, total)

    @app.get("/api/overview")
    def api_overview(since: str = DEFAULT_WINDOW) -> dict[str, Any]:
        """What the overview page draws: each target's routing and, per version, releases,
        error rate and mean duration in the window and in each of its slices."""
        data = state.overview(since)
        return {
            "since": data["since"].isoformat(),
            "until": data["until"].isoformat(),
            "buckets": BUCKETS,
            "targets": [card.to_dict() for card in data["cards"]],
        }

    async def apply(request: Request, name: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        change = await run_in_threadpool(CHANGES[kind], state.handle, name, data, request)
        return views.change(change)

    @app.post("/api/targets/{name}/plugin")
    async def api_repoint(request: Request, name: str) -> dict[str, Any]:
        """Re-point a target (``turnout target set NAME PLUGIN@VERSION --json``); body
        ``{"plugin": ..., "reason": ...}`` and optionally ``expect_revision``, ``dry_run``."""
        return await apply(request, name, "plugin", await state.checked_api_body(request))

    @app.post("/api/targets/{name}/routes")
    async def api_add_route(request: Request, name: str) -> dict[str, Any]:
        """Add a route (``turnout route add``); body ``{"selector", "values", "plugin",
        "reason"}`` and optionally ``expect_revision``, ``dry_run``."""
        return await apply(request, name, "routes", await state.checked_api_body(request))

    @app.delete("/api/targets/{name}/routes/{route_id}")
    async def api_remove_route(request: Request, name: str, route_id: str) -> dict[str, Any]:
        """Remove a route by id (``turnout route remove``); ``reason``, ``expect_revision``,
        ``dry_run`` as query parameters."""
        state.check_bearer(request)
        data = {**request.query_params, "route": route_id}
        return await apply(request, name, "remove-route", data)

    @app.post("/api/targets/{name}/rollback")
    async def api_rollback(request: Request, name: str) -> dict[str, Any]:
        """Roll back (``turnout rollback NAME``); body ``{"reason": ...}`` and optionally
        ``to_revision`` (default: the revision before the current), ``expect_revision``."""
        return await apply(request, name, "rollback", await state.checked_api_body(request))


# The changes the pages and the API make: each takes a form or a JSON body --------------------

Change = Callable[[Turnout, str, Mapping[str, Any], Request], TargetChange]


def _repoint(handle: Turnout, name: str, data: Mapping[str, Any], request: Request) -> TargetChange:
    return handle.set_target(name, _required(data, "plugin"), **_edit(data, request))


def _add_route(
    handle: Turnout, name: str, data: Mapping[str, Any], request: Request
) -> TargetChange:
    return handle.add_route(
        name,
        _required(data, "selector"),
        _values(data.get("values")),
        _required(data, "plugin"),
        **_edit(data, request),
    )


def _remove_route(
    handle: Turnout, name: str, data: Mapping[str, Any], request: Request
) -> TargetChange:
    return handle.remove_route(name, _required(data, "route"), **_edit(data, request))


def _rollback(
    handle: Turnout, name: str, data: Mapping[str, Any], request: Request
) -> TargetChange:
    to_revision = _int(data.get("to_revision"), "to_revision")
    return handle.rollback(name, to_revision=to_revision, **_edit(data, request))


DONE = {
    "plugin": "default re-pointed: revision {revision}",
    "routes": "route added: revision {revision}",
    "remove-route": "route removed: revision {revision}",
    "rollback": "rolled back: revision {revision}",
}
"""What the target page says after each change (a fixed text: a link cannot make it say more)."""

CHANGES: dict[str, Change] = {
    "plugin": _repoint,
    "routes": _add_route,
    "remove-route": _remove_route,
    "rollback": _rollback,
}
"""Each change by the last part of its address (``/targets/NAME/plugin``, ...)."""


# What the pages show --------------------------------------------------------------------


@dataclass
class VersionLine:
    """One version of a target in the window: totals and one value per slice."""

    plugin_ref: str
    live: bool
    """Named by the target's routing now (its default, a route or a split)."""
    share: str = ""
    """How the routing uses it, in words: default, a route's rule, a split's weight."""
    releases: int = 0
    failed: int = 0
    ended: int = 0
    ran: int = 0
    """Releases that ran to an outcome here: what :attr:`mean_seconds` averages."""
    seconds: float = 0.0
    """Their durations, summed."""
    errors: list[float | None] = field(default_factory=lambda: [None] * BUCKETS)
    latency: list[float | None] = field(default_factory=lambda: [None] * BUCKETS)

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.ended if self.ended else None

    @property
    def mean_seconds(self) -> float | None:
        return self.seconds / self.ran if self.ran else None

    def error_chart(self) -> Any:
        return charts.bars(self.errors, ceiling=1.0, label=f"error rate of {self.plugin_ref}")

    def latency_chart(self, ceiling: float | None) -> Any:
        return charts.bars(
            self.latency, ceiling=ceiling, label=f"mean duration of {self.plugin_ref}", kind="time"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin_ref,
            "live": self.live,
            "share": self.share,
            "releases": self.releases,
            "failed": self.failed,
            "ended": self.ended,
            "error_rate": self.error_rate,
            "mean_duration": self.mean_seconds,
            "error_rate_by_bucket": self.errors,
            "mean_duration_by_bucket": self.latency,
        }


@dataclass
class TargetCard:
    """A target on the overview: its routing and its versions."""

    target: dict[str, Any]
    versions: list[VersionLine]

    @property
    def latency_ceiling(self) -> float | None:
        return max((v for line in self.versions for v in line.latency if v), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {**self.target, "versions": [line.to_dict() for line in self.versions]}


class _State:
    """The handle, the token and what the pages read."""

    def __init__(self, handle: Turnout, token: str | None) -> None:
        self.handle = handle
        self.token = token
        self._key = hashlib.sha256(b"turnout-serve\0" + token.encode()).digest() if token else b""

    # Reading --------------------------------------------------------------------------------

    def target_names(self) -> list[str]:
        return [spec.name for spec in self.handle.registry.list_targets()]

    def release(self, release_id: str) -> ReleaseRecord:
        record = self.handle.ledger.get(release_id)
        if record is None:
            raise NotFoundError(f"no release {release_id!r}; list them at /releases")
        return record

    def overview(self, since: str, spec: TargetSpec | None = None) -> dict[str, Any]:
        """Every target's versions over the window (or one target's: ``spec``)."""
        until = utcnow()
        start = until - views.duration(since, "since")
        specs = [spec] if spec is not None else self.handle.registry.list_targets()
        points = self.handle.ledger.timeline(
            since=start, until=until, buckets=BUCKETS, target=spec.name if spec else None
        )
        lines: dict[str, dict[str, VersionLine]] = {}
        for each in specs:
            shares = _shares(each)
            lines[each.name] = {
                str(ref): VersionLine(str(ref), True, shares.get(str(ref), ""))
                for ref in all_refs(each)
            }
        for point in points:
            by_version = lines.setdefault(point.target, {})
            line = by_version.get(point.plugin_ref)
            if line is None:
                line = by_version[point.plugin_ref] = VersionLine(point.plugin_ref, False)
            line.releases += point.releases
            line.failed += point.failed
            line.ended += point.ended
            line.errors[point.bucket] = point.error_rate
            if point.mean_seconds is not None:
                line.latency[point.bucket] = point.mean_seconds
                line.seconds += point.mean_seconds * point.ran
                line.ran += point.ran
        known = {each.name: views.target(each) for each in specs}
        cards = [
            TargetCard(
                known.get(name, {"name": name, "removed": True}),
                sorted(versions.values(), key=_version_order),
            )
            for name, versions in sorted(lines.items())
        ]
        return {"since": start, "until": until, "cards": cards}

    def target_context(self, name: str, since: str, done: str) -> dict[str, Any]:
        spec = self.handle.registry.get_target(name)
        history = list(reversed(views.history(self.handle.registry, name)))
        overview = self.overview(since, spec)
        breakdowns = {}
        for dimension in ("version", "customer"):
            rows = self.handle.ledger.outcomes([dimension], since=overview["since"], target=name)
            groups, _ = stats.summarize(rows, [dimension])
            breakdowns[dimension] = [group.to_dict() for group in groups]
        return {
            "target": views.target(spec),
            "card": overview["cards"][0] if overview["cards"] else None,
            "history": history,
            "breakdowns": breakdowns,
            "window": since,
            "done": done,
            "failure": "",
            "installed": self._installed(spec.plugin_ref.plugin_id),
        }

    def _installed(self, plugin_id: str) -> list[str]:
        return sorted(
            {
                f"{version.plugin_id}@{version.version}"
                for version in self.handle.registry.plugin_versions()
                if version.plugin_id == plugin_id
            }
        )

    # Writing ----------------------------------------------------------------------------------

    def require_writable(self) -> None:
        if self.token is None:
            raise ForbiddenError(
                "this dashboard is read-only; start it with a token to allow changes: "
                "TURNOUT_SERVE_TOKEN=... turnout serve"
            )

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, request: Request) -> str | None:
        """The signed-in session's nonce, if the cookie is valid."""
        if self.token is None:
            return None
        nonce, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
        if nonce and hmac.compare_digest(signature, self._sign("session", nonce)):
            return nonce
        return None

    def csrf(self, session: str | None) -> str:
        return self._sign("csrf", session) if session else ""

    async def checked_form(self, request: Request) -> dict[str, str]:
        """A write from a page: writable, same origin, signed in, with this session's CSRF
        token; returns the form."""
        self.require_writable()
        _same_origin(request)
        session = self.session(request)
        if session is None:
            raise UnauthorizedError("sign in with the dashboard's token first: /login")
        form = await _form(request)
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf(session)):
            raise ForbiddenError("the form's CSRF token is missing or stale; reload the page")
        return form

    def check_bearer(self, request: Request) -> None:
        self.require_writable()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.token_matches(given.strip()):
            raise UnauthorizedError("send the dashboard's token as: Authorization: Bearer TOKEN")

    async def checked_api_body(self, request: Request) -> dict[str, Any]:
        self.check_bearer(request)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise UsageError("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise UsageError("the request body must be a JSON object")
        return body

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


@dataclass
class _ReleaseQuery:
    """The release filters of a page or API URL, checked."""

    since: str = ""
    target: str = ""
    plugin: str = ""
    customer: str = ""
    statuses: list[str] = field(default_factory=list)
    limit: int = RELEASES_LIMIT

    @classmethod
    def from_params(
        cls, params: Any, *, limit: int = RELEASES_LIMIT, since: str = ""
    ) -> _ReleaseQuery:
        statuses = [s for s in params.getlist("status") if s]
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise UsageError(f"unknown status {unknown[0]!r}; use {', '.join(STATUSES)}")
        query = cls(
            since=params.get("since") or since,
            target=params.get("target") or "",
            plugin=params.get("plugin") or "",
            customer=params.get("customer") or "",
            statuses=statuses,
            limit=_int(params.get("limit"), "limit") or limit,
        )
        if not 1 <= query.limit <= 100_000:
            raise UsageError("limit must be between 1 and 100000")
        return query

    def release_filters(self) -> dict[str, Any]:
        """The window, target, plugin and customer, as ``Ledger.outcomes`` takes them."""
        return views.release_filters(
            since=self.since,
            target=self.target,
            plugin=self.plugin,
            customer=self.customer,
            option="since",
        )

    def filters(self) -> dict[str, Any]:
        """All of them, with the statuses and the limit, as ``Ledger.recent`` takes them."""
        statuses = [Status(s) for s in self.statuses] or None
        return {**self.release_filters(), "statuses": statuses, "limit": self.limit}

    def url(self, **changes: Any) -> str:
        """This query's page URL, with some filters changed."""
        data = {
            "since": self.since,
            "target": self.target,
            "plugin": self.plugin,
            "customer": self.customer,
            "status": self.statuses,
        } | changes
        pairs = [
            (key, value)
            for key, values in data.items()
            for value in (values if isinstance(values, list) else [values])
            if value
        ]
        return "/releases" + (f"?{urlencode(pairs)}" if pairs else "")


# Errors -------------------------------------------------------------------------------------


class NotFoundError(TurnoutError, LookupError):
    """Nothing at that address."""


class UnauthorizedError(TurnoutError):
    """A write without the token."""


class ForbiddenError(TurnoutError):
    """A write the dashboard refuses: read-only, another origin, a bad CSRF token."""


_STATUS_CODES: tuple[tuple[type[TurnoutError], int], ...] = (
    (UnknownTargetError, 404),
    (NotFoundError, 404),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (StaleRevisionError, 409),
    (RegistryUnavailableError, 503),
    (ConfigurationError, 422),
)


def _status_of(exc: TurnoutError) -> int:
    """The HTTP status for an error: the first that matches, else 400 (a bad request)."""
    return next((code for kind, code in _STATUS_CODES if isinstance(exc, kind)), 400)


def _error_body(exc: TurnoutError) -> dict[str, Any]:
    return {"error": str(exc), "type": type(exc).__name__}


# Small helpers ---------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (last value wins)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}


def _same_origin(request: Request) -> None:
    """Refuse a write whose ``Origin`` (or, without one, ``Referer``) is another site."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return  # not a browser's cross-site request: browsers send Origin with every POST
    parts = urlsplit(source)
    if parts.netloc != request.headers.get("host", ""):
        raise ForbiddenError(f"refused a change sent from another site ({parts.netloc or source})")


def _edit(data: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """The keyword arguments of :meth:`Turnout.edit_target` from a form or a JSON body."""
    dry_run = data.get("dry_run") in (True, "true", "1", "on")
    reason = str(data.get("reason") or "").strip()
    if not reason and not dry_run:
        raise UsageError("say why (reason): it is kept in the target's history")
    return {
        "expect_revision": _int(data.get("expect_revision"), "expect_revision"),
        "reason": reason[:500],
        "actor": f"web:{request.client.host if request.client else 'unknown'}",
        "dry_run": dry_run,
    }


def _required(data: Mapping[str, Any], name: str) -> str:
    value = str(data.get(name) or "").strip()
    if not value:
        raise UsageError(f"{name} is required")
    return value


def _values(raw: Any) -> list[str]:
    values = raw if isinstance(raw, list) else str(raw or "").split(",")
    cleaned = [str(v).strip() for v in values if str(v).strip()]
    if not cleaned:
        raise UsageError("values is required: one or more, comma-separated")
    return cleaned


def _int(raw: Any, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a whole number, got {raw!r}") from None


def _local(path: str) -> str:
    """A redirect target on this site only."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def _quote(name: str) -> str:
    return quote(name, safe="")


def _shares(spec: TargetSpec) -> dict[str, str]:
    """How a target's routing uses each version, in words."""
    uses: dict[str, list[str]] = {str(spec.plugin_ref): ["default"]}
    for route in spec.routes:
        if route.split is not None:
            for ref, weight in route.split.weights:
                where = f"{route.rule}: " if route.selector else ""
                uses.setdefault(str(ref), []).append(f"{where}{weight:g}% split")
        elif route.to is not None:
            uses.setdefault(str(route.to), []).append(route.rule)
    return {ref: "; ".join(words) for ref, words in uses.items()}


def _version_order(line: VersionLine) -> tuple[bool, int, str]:
    """Live versions first, then the busiest."""
    return (not line.live, -line.releases, line.plugin_ref)


def _preview(change: TargetChange) -> dict[str, Any]:
    """A dry run for the target page: the fields it would change and its blast radius."""
    before = change.before.snapshot() if change.before else None
    return {
        "changed": change.changed,
        "revision": change.target.revision,
        "changes": changes(before, change.target.snapshot()),
        "moves": [move.to_dict() for move in change.moves or ()],
    }


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:19].replace("T", " ")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
