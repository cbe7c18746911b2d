"""The console's routes: dead letters, census, fleet and an overview.

Every page is rendered on the server (Jinja2, autoescaped) and works without
JavaScript. Reads go through the dead-letter store's pages and counts, never
the whole store; writes (replay, edit, delete, purge) need the token and a CSRF
value (``security.py``). Nothing is ever unpickled: legacy pickled entries are
shown as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._version import __version__
from ..app import fleet as _fleet
from ..app.huey import VersionedHuey
from ..exceptions import DeadLetterNotFound, InvalidArguments, ReplayFailed
from ..messages.readwrite import REASONS
from ..ops import census as _census
from ..ops import dead_letters as _dead_letters
from ..storage.deadletters import DeadLetter
from ..storage.reason_counts import count_by_reason
from .history import ReasonHistory
from .security import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Guard

__all__ = ["create_app"]

#: Entries per page of the list.
PAGE_SIZE: Final = 50
#: Entries a filtered page reads at most where the store scans (Redis, memory,
#: files); its "Older" link carries on from there.
SCAN_LIMIT: Final = 50_000
#: Entries the counts by reason and task read at most where the store scans (the
#: list offers to count them all).
COUNT_LIMIT: Final = 20_000
#: Entries a dry-run preview or a "replay matching" shows or handles per request.
BATCH: Final = 200
#: Bytes of an entry shown as hex and as text.
HEX_BYTES: Final = 4096
TEXT_BYTES: Final = 16384

AGES: Final = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


@dataclass(frozen=True)
class Filter:
    """The list's filter, read from a query string or a form."""

    reason: str | None = None
    task: str | None = None
    version: int | None = None
    age: str | None = None

    @classmethod
    def read(cls, values: Mapping[str, Any]) -> Filter:
        """From request values; unknown or malformed values are ignored."""
        reason = values.get("reason") or None
        task = (values.get("task") or "").strip() or None
        version_text = (values.get("version") or "").strip()
        age = values.get("age") or None
        return cls(
            reason if reason in REASONS else None,
            task,
            int(version_text) if version_text.isdigit() else None,
            age if age in AGES else None,
        )

    @property
    def before(self) -> datetime.datetime | None:
        """Entries older than the age: created before now minus it."""
        if self.age is None:
            return None
        return datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=AGES[self.age])

    @property
    def empty(self) -> bool:
        return (
            self.reason is None
            and self.task is None
            and self.version is None
            and (self.age is None)
        )

    def store_kwargs(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "task": self.task,
            "version": self.version,
            "before": self.before,
        }

    def query(self, **extra: Any) -> str:
        """The filter (and ``extra``) as a query string, without empty values."""
        values = {
            "reason": self.reason,
            "task": self.task,
            "version": self.version,
            "age": self.age,
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def describe(self) -> str:
        parts = []
        if self.reason:
            parts.append(f"reason {self.reason}")
        if self.task:
            parts.append(f"task {self.task}")
        if self.version is not None:
            parts.append(f"version {self.version}")
        if self.age:
            parts.append(f"older than {self.age}")
        return ", ".join(parts) or "every entry"


class Console:
    """The console of one app: its routes and what they share."""

    def __init__(
        self,
        huey: VersionedHuey,
        *,
        token: str | None,
        title: str | None,
        history_interval: float = 60.0,
        history_size: int = 1440,
    ) -> None:
        self.huey = huey
        self.guard = Guard(token)
        self.history = ReasonHistory(
            lambda: count_by_reason(huey.dead_letters), history_interval, history_size
        )
        self.title = title or f"versioned-tasks console: {huey.name}"
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("versioned_tasks.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["hexdump"] = hexdump
        self.templates.filters["as_text"] = as_text

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Samples the dead letters by reason in the background while served."""
        self.history.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.history.stop)

    # -- rendering ----------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        self.history.tick()
        csrf, new = self.guard.csrf_value(request)
        html = self.templates.get_template(template).render(
            request=request,
            url=request.url_for,
            title=self.title,
            app_name=self.huey.name,
            version=__version__,
            read_only=self.guard.read_only,
            logged_in=self.guard.logged_in(request),
            csrf=csrf,
            csrf_field=CSRF_FIELD,
            reasons=REASONS,
            ages=list(AGES),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        if new:
            self.guard.set_cookie(response, CSRF_COOKIE, csrf, secure=_secure(request))
        return response

    def message(
        self,
        request: Request,
        heading: str,
        lines: list[str],
        status_code: int = 200,
        **extra: Any,
    ) -> HTMLResponse:
        context = {"warning": None, **extra}
        return self.render(
            request, "message.html", status_code, heading=heading, lines=lines, **context
        )

    async def refused(self, request: Request) -> tuple[Any, Response | None]:
        """The POSTed form, and a refusal page when the request may not change things."""
        form = await request.form()
        refusal = self.guard.refusal(request, _text(form.get(CSRF_FIELD)))
        if refusal is None:
            return form, None
        status, text = refusal
        return form, self.message(request, "Refused", [text], status)

    # -- overview -------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        huey = self.huey
        self.history.tick()
        counts = huey.dead_letters.counts(scan_limit=COUNT_LIMIT)
        return self.render(
            request,
            "overview.html",
            queued=huey.pending_count(),
            scheduled=huey.scheduled_count(),
            counts=counts,
            workers=len(_fleet.live_workers(huey)),
            history=self.history.view(),
        )

    # -- dead letters ---------------------------------------------------------------

    def dead_letters(self, request: Request) -> Response:
        params = request.query_params
        flt = Filter.read(params)
        cursor = params.get("cursor") or None
        offset = _int(params.get("offset"), 0)
        store = self.huey.dead_letters
        page = store.page(
            limit=PAGE_SIZE,
            cursor=cursor,
            offset=offset if cursor is None else 0,
            scan_limit=SCAN_LIMIT,
            **flt.store_kwargs(),
        )
        count_all = params.get("count") == "all"
        counts = store.counts(scan_limit=None if count_all else COUNT_LIMIT)
        return self.render(
            request,
            "dead_letters.html",
            flt=flt,
            page=page,
            counts=counts,
            total=counts.total,
            cursor=cursor,
            offset=offset,
            page_size=PAGE_SIZE,
            done=params.get("done"),
        )

    def _entry_or_404(self, request: Request) -> DeadLetter | Response:
        try:
            return self.huey.dead_letters.get(request.path_params["id"])
        except DeadLetterNotFound:
            return self.message(
                request,
                "Not found",
                [f"No dead letter with id {request.path_params['id']!r} (any more)."],
                404,
            )

    def entry(self, request: Request) -> Response:
        entry = self._entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        decoded = _dead_letters.decode(entry.raw, self.huey)
        try:
            editable: _dead_letters.Editable | None = _dead_letters.editable(self.huey, entry)
            not_editable = None
        except _dead_letters.NotEditable as exc:
            editable, not_editable = None, str(exc)
        return self.render(
            request,
            "entry.html",
            entry=entry,
            header=_pretty(decoded.header),
            body=_pretty(decoded.body),
            problem=decoded.problem,
            verdict=_dead_letters.preview(self.huey, entry),
            warning=_dead_letters.worker_warning(self.huey, [entry]),
            editable=editable,
            not_editable=not_editable,
            hex_bytes=HEX_BYTES,
            text_bytes=TEXT_BYTES,
        )

    def raw(self, request: Request) -> Response:
        entry = self._entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        return Response(
            entry.raw,
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{entry.id}.bin"'},
        )

    def preview(self, request: Request) -> Response:
        """The dry run: what a replay of the selected entries, or of the filter's, would do."""
        params = request.query_params
        ids = params.getlist("id")
        flt = Filter.read(params)
        entries, more = self._chosen(ids, flt)
        rows = [(entry, _dead_letters.preview(self.huey, entry)) for entry in entries]
        return self.render(
            request,
            "preview.html",
            rows=rows,
            ids=ids,
            flt=flt,
            more=more,
            batch=BATCH,
            warning=_dead_letters.worker_warning(self.huey, entries) if entries else None,
            would=sum(verdict.ok for _, verdict in rows),
        )

    def _chosen(self, ids: list[str], flt: Filter) -> tuple[list[DeadLetter], bool]:
        """The entries named by id, else the newest ``BATCH`` matching the filter, oldest first."""
        store = self.huey.dead_letters
        if ids:
            entries = []
            for id in ids[:BATCH]:
                try:
                    entries.append(store.get(id))
                except DeadLetterNotFound:
                    continue
            return entries, len(ids) > BATCH
        page = store.page(limit=BATCH, scan_limit=SCAN_LIMIT, **flt.store_kwargs())
        return page.entries[::-1], page.next_cursor is not None

    async def replay(self, request: Request) -> Response:
        """Replay the selected entries, or a batch of those matching the filter."""
        form, refusal = await self.refused(request)
        if refusal is not None:
            return refusal
        ids = [_text(v) or "" for v in form.getlist("id")]
        flt = Filter.read({k: _text(form.get(k)) for k in ("reason", "task", "version", "age")})
        if not ids and form.get("scope") != "filter":
            return self.message(request, "Nothing selected", ["Select entries to replay."], 400)
        entries, more = self._chosen(ids, flt)
        warning = _dead_letters.worker_warning(self.huey, entries) if entries else None
        lines = [self._replay_one(entry) for entry in entries]
        replayed = sum(line.startswith("replayed") for line in lines)
        summary = f"Replayed {replayed} of {len(entries)}; the others were kept."
        if more:
            summary += f" More entries match: this replays {BATCH} at a time; submit again."
        return self.message(
            request,
            "Replay",
            [summary, *(f"{e.id}: {line}" for e, line in zip(entries, lines, strict=True))],
            warning=warning,
        )

    def _replay_one(self, entry: DeadLetter) -> str:
        try:
            result = self.huey.dead_letters.replay(entry.id)
        except DeadLetterNotFound:
            return "no longer in the store; skipped."
        except ReplayFailed as exc:
            return f"failed again ({exc.reason}): {exc.error}"
        return "replayed" + (f", enqueued as task {result.id}." if result is not None else ".")

    async def replay_entry(self, request: Request) -> Response:
        _, refusal = await self.refused(request)
        if refusal is not None:
            return refusal
        entry = self._entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        warning = _dead_letters.worker_warning(self.huey, [entry])
        line = self._replay_one(entry)
        status = 200 if line.startswith(("replayed", "no longer")) else 409
        return self.message(request, "Replay", [f"{entry.id}: {line}"], status, warning=warning)

    async def delete(self, request: Request) -> Response:
        form, refusal = await self.refused(request)
        if refusal is not None:
            return refusal
        ids = [_text(v) or "" for v in form.getlist("id")]
        if "id" in request.path_params:
            ids = [request.path_params["id"]]
        if not ids:
            return self.message(request, "Nothing selected", ["Select entries to delete."], 400)
        removed = sum(self.huey.dead_letters.delete(id) for id in ids)
        return self._back_to_list(request, f"Deleted {removed} dead letter(s).")

    def _back_to_list(self, request: Request, done: str) -> Response:
        target = f"{request.url_for('dead_letters')}?{urlencode({'done': done})}"
        return RedirectResponse(target, status_code=303)

    def purge_confirm(self, request: Request) -> Response:
        flt = Filter.read(request.query_params)
        count = self.huey.dead_letters.count(**flt.store_kwargs())
        return self.render(request, "purge.html", flt=flt, count=count)

    async def purge(self, request: Request) -> Response:
        form, refusal = await self.refused(request)
        if refusal is not None:
            return refusal
        flt = Filter.read({k: _text(form.get(k)) for k in ("reason", "task", "version", "age")})
        if flt.empty and form.get("everything") != "yes":
            return self.message(
                request,
                "Not purged",
                ["Purging every entry needs the 'every entry' box ticked."],
                400,
            )
        removed = self.huey.dead_letters.purge_matching(**flt.store_kwargs())
        return self._back_to_list(request, f"Purged {removed} dead letter(s) ({flt.describe()}).")

    def edit_form(self, request: Request) -> Response:
        entry = self._entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        try:
            editable = _dead_letters.editable(self.huey, entry)
        except _dead_letters.NotEditable as exc:
            return self.message(request, "Cannot edit", [str(exc)], 409)
        text = json.dumps(editable.arguments, indent=2, ensure_ascii=False)
        return self.render(
            request, "edit.html", entry=entry, editable=editable, text=text, errors=None
        )

    async def edit(self, request: Request) -> Response:
        form, refusal = await self.refused(request)
        if refusal is not None:
            return refusal
        entry = self._entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        try:
            editable = _dead_letters.editable(self.huey, entry)
        except _dead_letters.NotEditable as exc:
            return self.message(request, "Cannot edit", [str(exc)], 409)
        text = _text(form.get("arguments")) or ""

        def again(errors: list[str]) -> Response:
            return self.render(
                request,
                "edit.html",
                422,
                entry=entry,
                editable=editable,
                text=text,
                errors=errors,
            )

        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as exc:
            return again([f"Not JSON: {exc}"])
        try:
            raw = _dead_letters.edited_message(self.huey, entry, arguments)
        except InvalidArguments as exc:
            return again(_field_errors(exc))
        warning = _dead_letters.worker_warning(self.huey, [entry])
        try:
            self.huey.dead_letters.replay_as(entry.id, raw)
        except ReplayFailed as exc:
            return again([f"The edited message still fails ({exc.reason}): {exc.error}"])
        except DeadLetterNotFound:
            return self.message(request, "Gone", [f"{entry.id} is no longer in the store."], 404)
        done = f"Edited and replayed {entry.id} ({editable.task} v{editable.version})."
        if warning:
            done += f" Warning: {warning}"
        return self._back_to_list(request, done)

    # -- census and fleet -------------------------------------------------------------

    def census(self, request: Request) -> Response:
        """Streams the page: a progress bar per chunk read, then the tables."""
        page = self.render(request, "census.html", streaming=True)
        head, _, tail = bytes(page.body).decode().partition("<!--census-->")
        response = StreamingResponse(self._census_stream(head, tail), media_type="text/html")
        for key, value in page.raw_headers:
            if key == b"set-cookie":
                response.raw_headers.append((key, value))
        return response

    def _census_stream(self, head: str, tail: str) -> Iterator[str]:
        yield head
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        huey = self.huey

        def run() -> None:
            try:
                result = _census.take_census(huey, progress=lambda w, n: events.put(("step", n)))
            except Exception as exc:
                events.put(("error", exc))
            else:
                events.put(("done", result))

        sizes = _census.census_sizes(huey)
        total = max(sum(sizes.values()), 1)
        threading.Thread(target=run, name="versioned-tasks-console-census", daemon=True).start()
        read = 0
        template = self.templates.get_template("census_result.html")
        while True:
            kind, value = events.get()
            if kind == "step":
                read = min(read + int(value), total)
                yield f'<progress value="{read}" max="{total}">{read} of {total}</progress>\n'
                continue
            if kind == "error":
                yield template.render(error=f"{type(value).__name__}: {value}", census=None)
            else:
                yield template.render(error=None, census=_census_view(value, huey))
            yield tail
            return

    def fleet(self, request: Request) -> Response:
        workers = _fleet.live_workers(self.huey)
        readable = _fleet.versions_all_read(workers)
        names = sorted({*self.huey.schema.specs, *(n for w in workers for n in w.tasks)})
        tasks = []
        for name in names:
            spec = self.huey.schema.specs.get(name)
            versions = {w.id: w.tasks.get(name) for w in workers}
            tasks.append(
                {
                    "name": name,
                    "app": spec.version if spec is not None else None,
                    "workers": versions,
                    "all_read": readable.get(name),
                    "behind": spec is not None
                    and any(v is None or v < spec.version for v in versions.values()),
                }
            )
        return self.render(
            request,
            "fleet.html",
            workers=workers,
            tasks=tasks,
            fleet_enabled=self.huey.fleet_enabled,
        )

    # -- logging in -------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if self.guard.read_only:
            return self.message(request, "Read-only", ["This console has no token."], 403)
        if not self.guard.csrf_ok(request, _text(form.get(CSRF_FIELD))):
            return self.message(request, "Refused", ["The form's CSRF check failed."], 403)
        if not self.guard.token_matches(_text(form.get("token")) or ""):
            return self.message(request, "Refused", ["Wrong token."], 403)
        response = RedirectResponse(str(request.url_for("dead_letters")), status_code=303)
        self.guard.set_cookie(
            response, SESSION_COOKIE, self.guard.session_value(), secure=_secure(request)
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not self.guard.csrf_ok(request, _text(form.get(CSRF_FIELD))):
            return self.message(request, "Refused", ["The form's CSRF check failed."], 403)
        response = RedirectResponse(str(request.url_for("overview")), status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _census_view(census: _census.Census, huey: VersionedHuey) -> dict[str, Any]:
    counts: dict[tuple[str | None, int | None], dict[str, int]] = {}
    for row in census.rows:
        counts.setdefault((row["task"], row["version"]), {})[row["where"]] = row["count"]
    rows = [
        {"task": task, "version": version, **{w: places.get(w, 0) for w in _census.WHERES}}
        for (task, version), places in sorted(
            counts.items(),
            key=lambda item: (item[0][0] is None, item[0][0] or "", item[0][1] or 0),
        )
    ]
    return {
        "rows": rows,
        "totals": {w: census.total(w) for w in _census.WHERES},
        "removals": [(r.needed, r.describe()) for r in census.removals],
        "unknown": census.unknown,
        "newer": census.newer,
        "unreadable": census.unreadable("queue") + census.unreadable("schedule"),
    }


def _field_errors(exc: InvalidArguments) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.get('loc', ())) or '(arguments)'}: "
        f"{error.get('msg', 'invalid')}"
        for error in exc.errors
    ] or [str(exc)]


def _pretty(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=repr)


def hexdump(raw: bytes, limit: int = HEX_BYTES) -> str:
    """Offset, hex and printable ASCII of the first ``limit`` bytes, 16 a line."""
    lines = []
    for offset in range(0, min(len(raw), limit), 16):
        chunk = raw[offset : offset + 16]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  {text}")
    if len(raw) > limit:
        lines.append(f"... ({len(raw) - limit} more bytes)")
    return "\n".join(lines)


def as_text(raw: bytes, limit: int = TEXT_BYTES) -> str:
    """The first ``limit`` bytes as UTF-8 text, undecodable bytes replaced."""
    text = raw[:limit].decode("utf-8", "replace")
    return text + (f"\n... ({len(raw) - limit} more bytes)" if len(raw) > limit else "")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def create_app(
    huey: VersionedHuey,
    *,
    token: str | None = None,
    title: str | None = None,
    history_interval: float = 60.0,
    history_size: int = 1440,
) -> Starlette:
    """The console of ``huey`` as an ASGI application (Starlette).

    Mount it in an existing Starlette or FastAPI app
    (``app.mount("/tasks", create_app(huey, token=...))``) or serve it with
    ``versioned-tasks web``.

    Args:
        huey: the app whose queue, dead letters, census and fleet are shown.
        token: the secret that allows changes (replay, edit, delete, purge);
            without one the console is read-only and says so.
        title: the page title (default: the queue's name).
        history_interval: seconds between two samples of the dead letters by
            reason that the overview draws over time (0: no history), taken
            in the background under the ASGI lifespan, and by pages served
            when the newest sample is older.
        history_size: samples kept, oldest dropped first (1440: a day at 60 s).
    """
    console = Console(
        huey,
        token=token,
        title=title,
        history_interval=history_interval,
        history_size=history_size,
    )
    routes = [
        Route("/", console.overview, name="overview"),
        Route("/dead-letters", console.dead_letters, name="dead_letters"),
        Route("/dead-letters/preview", console.preview, name="preview"),
        Route("/dead-letters/replay", console.replay, methods=["POST"], name="replay"),
        Route("/dead-letters/delete", console.delete, methods=["POST"], name="delete"),
        Route("/dead-letters/purge", console.purge_confirm, name="purge_confirm"),
        Route("/dead-letters/purge", console.purge, methods=["POST"], name="purge"),
        Route("/dead-letters/{id}", console.entry, name="entry"),
        Route("/dead-letters/{id}/raw", console.raw, name="raw"),
        Route(
            "/dead-letters/{id}/replay",
            console.replay_entry,
            methods=["POST"],
            name="replay_entry",
        ),
        Route("/dead-letters/{id}/delete", console.delete, methods=["POST"], name="delete_entry"),
        Route("/dead-letters/{id}/edit", console.edit_form, name="edit_form"),
        Route("/dead-letters/{id}/edit", console.edit, methods=["POST"], name="edit"),
        Route("/census", console.census, name="census"),
        Route("/fleet", console.fleet, name="fleet"),
        Route("/login", console.login, methods=["POST"], name="login"),
        Route("/logout", console.logout, methods=["POST"], name="logout"),
        Mount(
            "/static",
            StaticFiles(packages=[("versioned_tasks.web", "static")]),
            name="static",
        ),
    ]
    app = Starlette(routes=routes, lifespan=console.lifespan)
    app.state.console = console
    return app
