"""The ``versioned-tasks`` command: the demo, and the dead-letter store of an app.

::

    versioned-tasks demo [--dir PATH] [--keep]
    versioned-tasks dlq list    --app module.attr [--limit N] [--reason R] [--task NAME]
                                [--version N] [--json]
    versioned-tasks dlq show    ID --app module.attr [--json]
    versioned-tasks dlq replay  (ID | --all [--reason R]) --app module.attr [--dry-run]
                                [--legacy-pickle] [--require-worker]
    versioned-tasks dlq edit    ID --app module.attr [--set FIELD=VALUE ...] [--require-worker]
    versioned-tasks dlq delete  ID... --app module.attr
    versioned-tasks dlq purge   --app module.attr [--reason R] [--task NAME] [--version N]
                                [--older-than AGE] [--yes]
    versioned-tasks dlq recount --app module.attr
    versioned-tasks web    --app module.attr [--host 127.0.0.1] [--port 8090] [--token T]
    versioned-tasks migrate-queue --app module.attr [--dry-run] [--legacy-pickle]
    versioned-tasks lock   --app module.attr [--lock PATH]
    versioned-tasks check  --app module.attr [--lock PATH] [--frozen]
    versioned-tasks schema --app module.attr [--task NAME] [--out DIR] [--lock PATH]
    versioned-tasks makemigrations --app module.attr [--task NAME] [--name SLUG]
                  [--rename-field TASK:OLD=NEW] [--write-version] [--dry-run]
    versioned-tasks census --app module.attr [--json]
    versioned-tasks fleet  --app module.attr [--json]

``--app`` names the app like ``huey_consumer`` does: ``package.module.attribute``
or ``package.module:attribute``; the current directory is importable.
``VERSIONED_TASKS_APP`` gives every command its ``--app``. In a Django project
(``DJANGO_SETTINGS_MODULE`` set, or ``--django-settings MODULE``) the project is
set up and its apps' ``tasks`` modules imported first, and ``--app`` defaults to
djhuey's instance.

Exit codes: 0 when all went well, 1 when problems were found (a replay that
still fails, a declined purge, edited arguments that do not validate, a replay
refused by --require-worker), 2 when the command could not run (an app that
does not import, an unknown id, a bad option).
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, Group
from rich.json import JSON
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .._version import __version__
from ..app import declare as _declare
from ..app import fleet as _fleet
from ..app.huey import VersionedHuey
from ..app.loader import import_app
from ..exceptions import (
    ConfigurationError,
    DeadLetterNotFound,
    InvalidArguments,
    ReplayFailed,
    VersionedTaskError,
)
from ..messages import legacy as _legacy
from ..messages.readwrite import REASONS, Rejected
from ..ops import census as _census
from ..ops import dead_letters as _dead_letters
from ..ops import lock as _lock
from ..ops import makemigrations as _makemigrations
from ..ops import migrate_queue as _migrate_queue
from ..storage.deadletters import DeadLetter
from . import demo as _demo

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_PROBLEMS = 1
EXIT_CANNOT_RUN = 2

_PREVIEW_BYTES = 256
_HEX_BYTES = 64
_PIPED_WIDTH = 120


class CannotRun(click.ClickException):
    """The command could not do its job: one line on stderr, exit code 2."""

    exit_code = EXIT_CANNOT_RUN

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


def _storage_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        from redis.exceptions import RedisError
    except ImportError:
        pass
    else:
        errors.append(RedisError)
    return tuple(errors)


def _console() -> Console:
    # Created per command so that it writes to the sys.stdout of the moment. Piped
    # output (CI logs, `| less`) gets room for the tables rather than 80 columns.
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPED_WIDTH
    return console


def _line(console: Console, text: str) -> None:
    # One line of plain text, never wrapped, never read as markup: greppable.
    console.print(Text(text), soft_wrap=True)


# -- loading the app -------------------------------------------------------------------


APP_VARIABLE = "VERSIONED_TASKS_APP"
DJANGO_SETTINGS_VARIABLE = "DJANGO_SETTINGS_MODULE"


def load_app(path: str | None) -> VersionedHuey:
    """Import ``package.module.attribute`` or ``package.module:attribute``.

    In a Django project (``DJANGO_SETTINGS_MODULE`` set, or ``--django-settings``)
    the project is set up and its apps' ``tasks`` modules imported first, and
    ``path`` defaults to djhuey's instance.

    Raises:
        CannotRun: no path and no Django project; the path is malformed, does
            not import (an exception, or ``sys.exit()`` at import), or names no
            VersionedHuey; the Django project does not load.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if os.environ.get(DJANGO_SETTINGS_VARIABLE):
            return _load_django_app(path)
        if path is None:
            raise CannotRun(
                f"No app given: name it with --app package.module:attribute (or set "
                f"{APP_VARIABLE}); in a Django project, set {DJANGO_SETTINGS_VARIABLE} or "
                f"pass --django-settings to use djhuey's instance."
            )
        return import_app(path, label=f"--app {path!r}")
    except ConfigurationError as exc:
        raise CannotRun(str(exc)) from None


def _load_django_app(path: str | None) -> VersionedHuey:
    # Django is imported by contrib only, and only when a project is asked for.
    from ..contrib.djhuey.project import project_app, setup_project

    setup_project()
    if path is None:
        return project_app()
    try:
        return import_app(path, label=f"--app {path!r}")
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc} In a Django project, leave out --app (and {APP_VARIABLE}) to use "
            f"djhuey's instance, settings.HUEY."
        ) from None


def _use_django_settings(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # As manage.py's --settings: the variable is what Django reads.
    if value:
        os.environ[DJANGO_SETTINGS_VARIABLE] = value


def _app_option(func: F) -> F:
    app = click.option(
        "--app",
        "app_path",
        envvar=APP_VARIABLE,
        show_envvar=True,
        metavar="MODULE.ATTR",
        help=(
            "The VersionedHuey app: 'package.module.attribute' or 'package.module:attribute' "
            "(default in a Django project: djhuey's instance)."
        ),
    )
    settings = click.option(
        "--django-settings",
        metavar="MODULE",
        expose_value=False,
        callback=_use_django_settings,
        help=(
            f"Set up this Django settings module first (as {DJANGO_SETTINGS_VARIABLE} does) "
            f"and import the apps' tasks modules."
        ),
    )
    return app(settings(func))


def _handles_errors(func: F) -> F:
    errors = _storage_errors()

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VersionedTaskError as exc:
            raise CannotRun(str(exc)) from None
        except errors as exc:
            raise CannotRun(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


# -- the command group -------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="versioned-tasks")
def main() -> None:
    """Typed, versioned Huey tasks: the demo, and tools for the dead-letter store."""


@main.command(short_help="Run the end-to-end story on a SQLite queue.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the demo's SQLite file (default: a temporary directory).",
)
@click.option("--keep", is_flag=True, help="Keep the SQLite file afterwards.")
def demo(directory: Path | None, keep: bool) -> None:
    """Tell the story: old messages upcast, renamed, retired or dead-lettered, then replayed."""
    code = _demo.run(_console(), directory=directory, keep=keep)
    sys.exit(code)


@main.group()
def dlq() -> None:
    """Inspect, replay and purge an app's dead-letter store."""


# -- dlq list ------------------------------------------------------------------------------


_EVERYTHING = sys.maxsize


def _filter_options(func: F) -> F:
    func = click.option(
        "--version",
        "version",
        type=click.IntRange(min=0),
        help="Only entries of this schema version on the wire.",
    )(func)
    func = click.option(
        "--task", "task", metavar="NAME", help="Only entries of this task (its name on the wire)."
    )(func)
    return click.option(
        "--reason", type=click.Choice(REASONS), help="Only entries with this reason."
    )(func)


@dataclass(frozen=True)
class _Filter:
    reason: str | None = None
    task: str | None = None
    version: int | None = None
    before: datetime.datetime | None = None

    def describe(self) -> str:
        parts = []
        if self.reason:
            parts.append(f"reason {self.reason!r}")
        if self.task:
            parts.append(f"task {self.task!r}")
        if self.version is not None:
            parts.append(f"version {self.version}")
        if self.before is not None:
            parts.append(f"created before {self.before:%Y-%m-%d %H:%M:%S} UTC")
        return f" with {' and '.join(parts)}" if parts else ""

    def kwargs(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "task": self.task,
            "version": self.version,
            "before": self.before,
        }


@dlq.command("list")
@_app_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N entries.")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handles_errors
def list_command(
    app_path: str,
    limit: int | None,
    reason: str | None,
    task: str | None,
    version: int | None,
    as_json: bool,
) -> None:
    """List dead letters, newest first."""
    app = load_app(app_path)
    flt = _Filter(reason, task, version)
    entries = _select(app, flt, limit=limit)
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    console = _console()
    if not entries:
        _line(console, f"No dead letters{flt.describe()} in queue {app.name!r}.")
        return
    console.print(_entries_table(entries, title=f"Dead letters of {app.name!r}"))
    _line(console, f"{len(entries)} shown of {len(app.dead_letters)} in the store.")


def _select(app: VersionedHuey, flt: _Filter, *, limit: int | None) -> list[DeadLetter]:
    """The newest ``limit`` entries that match (all of them when None), page by page."""
    selected: list[DeadLetter] = []
    cursor = None
    while limit is None or len(selected) < limit:
        size = 500 if limit is None else min(500, limit - len(selected))
        page = app.dead_letters.page(
            limit=size, cursor=cursor, scan_limit=_EVERYTHING, **flt.kwargs()
        )
        selected.extend(page.entries)
        cursor = page.next_cursor
        if cursor is None:
            break
    return selected


def _for_reason(reason: str | None) -> str:
    return f" with reason {reason!r}" if reason else ""


def _entries_table(entries: Iterable[DeadLetter], *, title: str) -> Table:
    table = Table(title=title, show_lines=True)
    table.add_column("id / created (UTC)", no_wrap=True, min_width=32)
    table.add_column("reason", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("error", ratio=1)
    for entry in entries:
        version = f" v{entry.version}" if entry.version is not None else ""
        table.add_row(
            Text(f"{entry.id}\n{entry.created_at:%Y-%m-%d %H:%M:%S}"),
            f"{entry.reason}\n(corrupt entry)" if entry.corrupt else entry.reason,
            Text(f"{entry.task}{version}" if entry.task else "?"),
            Text(_shorten(entry.error.split("; ")[0], 160)),
        )
    return table


def _entry_json(entry: DeadLetter) -> dict[str, Any]:
    return {
        "id": entry.id,
        "reason": entry.reason,
        "task": entry.task,
        "version": entry.version,
        "error": entry.error,
        "created_at": entry.created_at.isoformat(),
        "size": len(entry.raw),
        "corrupt": entry.corrupt,
    }


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# -- dlq show ------------------------------------------------------------------------------


_decode = _dead_letters.decode


@dlq.command("show")
@click.argument("entry_id", metavar="ID")
@_app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (raw bytes as base64).")
@_handles_errors
def show_command(entry_id: str, app_path: str, as_json: bool) -> None:
    """Show one dead letter in full: header, body and a safe preview of its bytes."""
    app = load_app(app_path)
    entry = app.dead_letters.get(entry_id)
    decoded = _decode(entry.raw, app)
    if as_json:
        data = _entry_json(entry)
        data.update(
            header=decoded.header,
            body=decoded.body,
            problem=decoded.problem,
            raw_base64=base64.b64encode(entry.raw).decode("ascii"),
        )
        click.echo(json.dumps(data, indent=2))
        return
    console = _console()
    console.print(_entry_summary(entry))
    if decoded.header is not None:
        console.print(Panel(JSON.from_data(decoded.header), title="envelope header"))
    if decoded.body is not None:
        console.print(Panel(JSON.from_data(decoded.body), title="envelope body"))
    if decoded.problem is not None and decoded.header is not None:
        _line(console, decoded.problem)
    elif decoded.problem is not None:
        _line(console, f"Not readable as an envelope: {decoded.problem}")
    console.print(Panel(_raw_preview(entry.raw), title=f"raw bytes ({len(entry.raw)})"))
    _line(console, f"Replay today: {_check(app, entry).text}")


def _entry_summary(entry: DeadLetter) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    rows = [
        ("id", entry.id),
        ("reason", entry.reason),
        ("task", entry.task or "?"),
        ("version", "?" if entry.version is None else str(entry.version)),
        ("created", entry.created_at.isoformat()),
        ("error", entry.error),
    ]
    if entry.corrupt:
        rows.insert(2, ("corrupt", "yes: the store cannot read this entry's metadata"))
    for key, value in rows:
        table.add_row(key, Text(value))
    return table


def _raw_preview(raw: bytes) -> Group:
    head = raw[:_PREVIEW_BYTES]
    more = f" ... ({len(raw) - _PREVIEW_BYTES} more bytes)" if len(raw) > _PREVIEW_BYTES else ""
    lines = [Text(repr(head) + more), Text("")]
    for offset in range(0, min(len(raw), _HEX_BYTES), 16):
        chunk = raw[offset : offset + 16]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        ascii_ = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(Text(f"{offset:08x}  {hexes:<47}  {ascii_}"))
    if len(raw) > _HEX_BYTES:
        lines.append(Text("..."))
    return Group(*lines)


# -- dlq replay ----------------------------------------------------------------------------


_check = _dead_letters.preview


def _worker_options(func: F) -> F:
    return click.option(
        "--require-worker",
        is_flag=True,
        help="Refuse (exit 1) when no live worker is known to run the replayed task version.",
    )(func)


@dlq.command("replay")
@click.argument("entry_id", metavar="[ID]", required=False)
@_app_option
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry, oldest first.")
@click.option(
    "--reason", type=click.Choice(REASONS), help="With --all: only entries with this reason."
)
@click.option("--dry-run", is_flag=True, help="Only report what would happen; change nothing.")
@click.option(
    "--legacy-pickle",
    "unpickle",
    is_flag=True,
    help="Unpickle legacy pickled entries to replay them, even though the app has "
    "legacy_pickle off (unpickling runs code).",
)
@_worker_options
@_handles_errors
def replay_command(
    entry_id: str | None,
    app_path: str,
    replay_all: bool,
    reason: str | None,
    dry_run: bool,
    unpickle: bool,
    require_worker: bool,
) -> None:
    """Run dead letters through today's pipeline and enqueue the ones that now work.

    An entry that still fails keeps its id and gets the new reason; the exit
    code is then 1. Before enqueueing, the fleet's heartbeats are read: when no
    live worker runs the task at the version replayed, a warning says so, and
    --require-worker refuses (exit 1).
    """
    if (entry_id is None) == (not replay_all):
        raise click.UsageError("Give either a dead-letter ID or --all.")
    if reason is not None and not replay_all:
        raise click.UsageError("--reason only applies with --all.")
    app = load_app(app_path)
    app.check_schemas()
    if entry_id is not None:
        entries = [app.dead_letters.get(entry_id)]
    else:
        # Oldest first, so that the replayed messages keep their order on the queue.
        entries = _select(app, _Filter(reason), limit=None)[::-1]
    console = _console()
    if not entries:
        _line(console, f"No dead letters{_for_reason(reason)} to replay.")
        return
    if not dry_run:
        _check_fleet(console, app, entries, require=require_worker)
    converter = _converter(app, unpickle)
    if dry_run:
        failed = sum(not _dry_replay(console, app, entry) for entry in entries)
    else:
        failed = sum(not _replay(console, app, entry, converter) for entry in entries)
    if replay_all or dry_run:
        _line(console, _summary(len(entries), failed, dry_run=dry_run))
    if failed:
        sys.exit(EXIT_PROBLEMS)


def _converter(app: VersionedHuey, unpickle: bool) -> _legacy.LegacyConverter | None:
    """The legacy converter --legacy-pickle asks for (None when the app reads
    legacy pickle itself, or when not asked)."""
    if not unpickle or app.legacy_converter is not None:
        return None
    return _legacy.build_converter(True, app.schema, app.task_classes, app.message_writer)


def _check_fleet(
    console: Console, app: VersionedHuey, entries: list[DeadLetter], *, require: bool
) -> None:
    warning = _dead_letters.worker_warning(app, entries)
    if warning is None:
        return
    if require:
        click.echo(f"Refused (--require-worker): {warning}", err=True)
        sys.exit(EXIT_PROBLEMS)
    click.echo(f"Warning: {warning}", err=True)


def _dry_replay(console: Console, app: VersionedHuey, entry: DeadLetter) -> bool:
    verdict = _check(app, entry)
    _line(console, f"{entry.id} ({_identity(entry)}): {verdict.text}")
    return verdict.ok


def _replay(
    console: Console,
    app: VersionedHuey,
    entry: DeadLetter,
    converter: _legacy.LegacyConverter | None = None,
) -> bool:
    try:
        if converter is not None and _legacy.is_legacy(entry.raw):
            result = _replay_legacy(app, entry, converter)
        else:
            result = app.dead_letters.replay(entry.id)
    except DeadLetterNotFound:
        _line(console, f"{entry.id} ({_identity(entry)}): no longer in the store; skipped.")
        return True
    except ReplayFailed as exc:
        _line(
            console, f"{entry.id} ({_identity(entry)}): failed again ({exc.reason}): {exc.error}"
        )
        return False
    enqueued = f"enqueued as task {result.id}" if result is not None else "enqueued"
    _line(console, f"{entry.id} ({_identity(entry)}): replayed, {enqueued}.")
    return True


def _replay_legacy(
    app: VersionedHuey, entry: DeadLetter, converter: _legacy.LegacyConverter
) -> Any:
    """Unpickle a legacy entry (asked for by --legacy-pickle) and replay its envelope."""
    converted = converter.convert(entry.raw)
    if isinstance(converted, Rejected):
        raise ReplayFailed(
            id=entry.id,
            reason=converted.reason,
            task=converted.task,
            version=converted.version,
            error=f"Legacy pickle: {converted.error}",
        )
    return app.dead_letters.replay_as(entry.id, converted)


def _identity(entry: DeadLetter) -> str:
    if entry.corrupt:
        return "corrupt entry"
    version = f" v{entry.version}" if entry.version is not None else ""
    return f"{entry.task or 'unreadable'}{version}, was {entry.reason}"


def _summary(total: int, failed: int, *, dry_run: bool) -> str:
    if dry_run:
        return (
            f"Dry run: {total - failed} of {total} would be replayed, {failed} would fail; "
            f"nothing was changed."
        )
    return f"Replayed {total - failed} of {total}; {failed} still fail and were kept."


# -- dlq purge -----------------------------------------------------------------------------


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _older_than(value: str | None) -> datetime.datetime | None:
    """``--older-than``: a duration (``90s``, ``30m``, ``12h``, ``7d``, ``2w``) or an
    ISO 8601 time (UTC when it names no zone)."""
    if value is None:
        return None
    now = datetime.datetime.now(datetime.UTC)
    match = _DURATION.fullmatch(value.strip())
    if match:
        return now - datetime.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (90s, 30m, 12h, 7d, 2w) nor an ISO 8601 time.",
            param_hint="--older-than",
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


@dlq.command("purge")
@_app_option
@_filter_options
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    help="Only entries older than AGE (90s, 30m, 12h, 7d, 2w) or created before an ISO 8601 time.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_handles_errors
def purge_command(
    app_path: str,
    reason: str | None,
    task: str | None,
    version: int | None,
    older_than: str | None,
    yes: bool,
) -> None:
    """Delete the dead letters of the app's queue: all of them, or those matching
    --reason, --task, --version and --older-than. Says how many and asks first."""
    app = load_app(app_path)
    flt = _Filter(reason, task, version, _older_than(older_than))
    count = app.dead_letters.count(**flt.kwargs())
    if count == 0:
        click.echo(f"No dead letters{flt.describe()} in queue {app.name!r}.")
        return
    every = "all " if not flt.describe() else ""
    if not yes and not click.confirm(
        f"Delete {every}{count} dead letters{flt.describe()} of queue {app.name!r}? "
        f"Their bytes are lost."
    ):
        click.echo("Nothing was deleted.")
        sys.exit(EXIT_PROBLEMS)
    removed = app.dead_letters.purge_matching(**flt.kwargs())
    click.echo(f"Deleted {removed} dead letters{flt.describe()} from queue {app.name!r}.")


# -- dlq delete ----------------------------------------------------------------------------


@dlq.command("delete")
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
@_app_option
@_handles_errors
def delete_command(entry_ids: tuple[str, ...], app_path: str) -> None:
    """Delete dead letters by id. An unknown id deletes nothing and exits 2."""
    app = load_app(app_path)
    store = app.dead_letters
    unknown = [id for id in entry_ids if not _exists(store, id)]
    if unknown:
        raise CannotRun(
            f"No dead letter with id {', '.join(map(repr, unknown))} in queue {app.name!r}; "
            f"nothing was deleted (`versioned-tasks dlq list` shows the ids)."
        )
    for id in dict.fromkeys(entry_ids):
        if store.delete(id):
            click.echo(f"Deleted {id}.")
        else:
            click.echo(f"{id} was already gone.")


@dlq.command("recount")
@_app_option
@_handles_errors
def recount_command(app_path: str) -> None:
    """Rebuild the counts by reason, task and version a Redis store keeps.

    Every write keeps them, and a store written before they existed is
    recounted at its first count: run this after a rolling deploy from a
    release without them, once the last old worker is gone.
    """
    app = load_app(app_path)
    store = app.dead_letters
    if not store.keeps_counts:
        click.echo(
            f"The dead letters of queue {app.name!r} are counted from the entries "
            f"themselves on this storage: there are no kept counts to rebuild."
        )
        return
    read = store.recount()
    by_reason = store.counts().by_reason
    summary = ", ".join(f"{n:,} {reason}" for reason, n in sorted(by_reason.items()))
    ending = f": {summary}." if summary else "."
    click.echo(f"Recounted {read:,} dead letters of queue {app.name!r}{ending}")


def _exists(store: Any, id: str) -> bool:
    try:
        store.get(id)
    except DeadLetterNotFound:
        return False
    return True


# -- dlq edit ------------------------------------------------------------------------------


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set field=value``: the value read as JSON when it is JSON, else as text."""
    changes: dict[str, Any] = {}
    for item in items:
        field, equals, text = item.partition("=")
        if not equals or not field:
            raise click.BadParameter(f"{item!r} is not field=value.", param_hint="--set")
        try:
            changes[field] = json.loads(text)
        except json.JSONDecodeError:
            changes[field] = text
    return changes


@dlq.command("edit")
@click.argument("entry_id", metavar="ID")
@_app_option
@click.option(
    "--set",
    "settings",
    metavar="FIELD=VALUE",
    multiple=True,
    help="Set one argument (VALUE read as JSON, else as text) instead of opening $EDITOR; "
    "repeat for several.",
)
@_worker_options
@_handles_errors
def edit_command(
    entry_id: str, app_path: str, settings: tuple[str, ...], require_worker: bool
) -> None:
    """Fix a dead letter's arguments, then replay it.

    Opens $EDITOR on the arguments as JSON (upcast to the task's current
    version), or applies --set. The edited arguments are validated against the
    task's current model before anything is enqueued; the message keeps its id,
    scheduling fields and callbacks. The entry is removed only once the edited
    message is on the queue. Invalid arguments exit 1 and change nothing.
    """
    app = load_app(app_path)
    app.check_schemas()
    entry = app.dead_letters.get(entry_id)
    current = _dead_letters.editable(app, entry)
    console = _console()
    if current.note:
        _line(console, current.note)
    if settings:
        arguments: Any = {**current.arguments, **_parse_set(settings)}
    else:
        arguments = _edit_in_editor(current)
        if arguments is None:
            _line(console, "No change: nothing was replayed.")
            sys.exit(EXIT_PROBLEMS)
    try:
        raw = _dead_letters.edited_message(app, entry, arguments)
    except InvalidArguments as exc:
        _line(console, f"{entry.id}: not replayed, the entry is unchanged. {exc}")
        sys.exit(EXIT_PROBLEMS)
    _check_fleet(console, app, [entry], require=require_worker)
    try:
        result = app.dead_letters.replay_as(entry.id, raw)
    except ReplayFailed as exc:
        _line(console, f"{entry.id}: edited message still fails ({exc.reason}): {exc.error}")
        sys.exit(EXIT_PROBLEMS)
    enqueued = f"enqueued as task {result.id}" if result is not None else "enqueued"
    _line(
        console,
        f"{entry.id} ({current.task} v{current.version}): edited and replayed, {enqueued}.",
    )


def _edit_in_editor(current: _dead_letters.Editable) -> Any:
    """The arguments as edited in $EDITOR; None when unchanged or left empty."""
    text = json.dumps(current.arguments, indent=2, ensure_ascii=False) + "\n"
    edited = click.edit(text, extension=".json")
    if edited is None or not edited.strip() or edited == text:
        return None
    try:
        return json.loads(edited)
    except json.JSONDecodeError as exc:
        raise CannotRun(
            f"The edited arguments are not JSON: {exc}; nothing was replayed."
        ) from None


# -- web ------------------------------------------------------------------------------------


@main.command("web", short_help="Serve the operations console in the browser.")
@_app_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8090,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@click.option(
    "--token",
    envvar="VERSIONED_TASKS_WEB_TOKEN",
    metavar="SECRET",
    help="Secret that allows replay, edit, delete and purge (env VERSIONED_TASKS_WEB_TOKEN); "
    "without it the console is read-only.",
)
@click.option(
    "--history-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Seconds between the overview's samples of dead letters by reason (0: no history).",
)
@click.option(
    "--history-size",
    default=1440,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples the overview keeps in memory, newest first.",
)
@_handles_errors
def web_command(
    app_path: str,
    host: str,
    port: int,
    token: str | None,
    history_interval: float,
    history_size: int,
) -> None:
    """Dead letters, census and fleet in the browser (read-only without a token).

    Binds to 127.0.0.1 by default: put it behind your own authentication
    before exposing it further.
    """
    try:
        import uvicorn

        from ..web import create_app
    except ImportError as exc:
        raise CannotRun(
            f"The console needs the web extra ({exc.name} is missing): "
            f"pip install 'versioned-tasks[web]'"
        ) from None
    app = load_app(app_path)
    mode = "token required for changes" if token else "read-only (no --token)"
    click.echo(f"Console of queue {app.name!r} on http://{host}:{port}/ ({mode}).", err=True)
    console = create_app(
        app, token=token, history_interval=history_interval, history_size=history_size
    )
    uvicorn.run(console, host=host, port=port, log_level="warning")


# -- migrate-queue --------------------------------------------------------------------------


@main.command("migrate-queue", short_help="Rewrite legacy pickled messages as envelopes.")
@_app_option
@click.option("--dry-run", is_flag=True, help="Only count what would change; write nothing.")
@click.option(
    "--legacy-pickle",
    "unpickle",
    is_flag=True,
    help="Unpickle even though the app has legacy_pickle off (unpickling runs code).",
)
@_handles_errors
def migrate_queue_command(app_path: str, dry_run: bool, unpickle: bool) -> None:
    """Rewrite the legacy pickled messages of the queue and the schedule as envelopes.

    In place, on a live queue: each message keeps its id, its place, its
    priority and its eta. Envelopes already there are left untouched; a
    message that cannot be converted goes to the dead-letter store with its
    original bytes. The exit code is 1 when any message was (or, with
    --dry-run, would be) dead-lettered.
    """
    app = load_app(app_path)
    converter = app.legacy_converter or (
        _legacy.build_converter(True, app.schema, app.task_classes, app.message_writer)
        if unpickle
        else None
    )
    if converter is None:
        raise CannotRun(
            f"migrate-queue unpickles the legacy messages of {app.name!r}, which runs code "
            f"named by their bytes; construct the app with legacy_pickle=True, or pass "
            f"--legacy-pickle."
        )
    app.check_schemas()
    report = _migrate_queue.migrate(app, converter, dry_run=dry_run)
    console = _console()
    for line in _migration_lines(app.name, report):
        _line(console, line)
    if report.dead_lettered:
        sys.exit(EXIT_PROBLEMS)


def _migration_lines(name: str, report: _migrate_queue.MigrationReport) -> list[str]:
    lines = [
        _tally_line(f"Queue {name!r}", report.queue, report.dry_run),
        _tally_line(f"Schedule {name!r}", report.schedule, report.dry_run),
    ]
    for moved in report.moved:
        version = f" v{moved.version}" if moved.version is not None else ""
        entry = f" as entry {moved.entry_id}" if moved.entry_id else ""
        verb = "would dead-letter" if report.dry_run else "dead-lettered"
        lines.append(
            f"{moved.area}: {verb} {moved.task or 'unreadable'}{version} ({moved.reason})"
            f"{entry}: {moved.error}"
        )
    keys = report.legacy_values
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        lines.append(
            f"Result store: {len(keys)} legacy pickled values ({shown}), left as they are; "
            f"they are readable while legacy_pickle is on."
        )
    else:
        lines.append("Result store: no legacy pickled values.")
    if report.dry_run:
        legacy = report.queue.converted + report.schedule.converted + report.dead_lettered
        if not legacy and not keys:
            lines.append(
                "Nothing legacy is left in the queue, the schedule or the result store: "
                "legacy_pickle can be turned off."
            )
        lines.append("Dry run: nothing was changed.")
    return lines


def _tally_line(area: str, tally: _migrate_queue.Tally, dry_run: bool) -> str:
    if dry_run:
        return (
            f"{area}: {tally.converted} to convert, {tally.envelopes} already envelopes, "
            f"{tally.dead_lettered} to dead-letter."
        )
    taken = f", {tally.taken} taken by a worker meanwhile" if tally.taken else ""
    return (
        f"{area}: {tally.converted} converted, {tally.envelopes} already envelopes, "
        f"{tally.dead_lettered} dead-lettered{taken}."
    )


# -- lock, check, schema ----------------------------------------------------------------------


def _lock_option(func: F) -> F:
    return click.option(
        "--lock",
        "lock_path",
        type=click.Path(path_type=Path),
        default=_lock.DEFAULT_LOCK_PATH,
        show_default=True,
        help="The schema lock file.",
    )(func)


def _allow_empty_option(func: F) -> F:
    return click.option(
        "--allow-empty",
        is_flag=True,
        help="Accept an app that declares no versioned task, rename or tombstone (otherwise "
        "exit 2).",
    )(func)


def _require_tasks(app: VersionedHuey, app_path: str | None, allow_empty: bool) -> None:
    # A gate over an app with no task passes whatever changed: most often --app
    # names the wrong instance, or the modules declaring the tasks were not imported.
    schema = app.schema
    if schema.specs or schema.renames or schema.tombstones or allow_empty:
        return
    where = f"--app {app_path!r}" if app_path else "djhuey's instance (settings.HUEY)"
    raise CannotRun(
        f"The app {app.name!r} ({where}) declares no versioned task (nor rename or "
        f"tombstone), so there is nothing to lock or check. Point --app (or "
        f"{APP_VARIABLE}) at the instance your tasks are declared on, in the module that "
        f"declares them or imports them; in a Django project, set "
        f"{DJANGO_SETTINGS_VARIABLE} or pass --django-settings so that the apps' tasks "
        f"modules are imported. Pass --allow-empty if the app has no task on purpose."
    )


@main.command("lock", short_help="Write the app's schema lock file.")
@_app_option
@_lock_option
@_allow_empty_option
@_handles_errors
def lock_command(app_path: str | None, lock_path: Path, allow_empty: bool) -> None:
    """Record every versioned task's version, argument schema and upcasters.

    An existing lock keeps its history: the entries of older versions stay, the
    current version's entry is refreshed. Commit the file; `check` compares the
    app against it. An app that declares no versioned task is refused (exit 2)
    unless --allow-empty is given.
    """
    app = load_app(app_path)
    _require_tasks(app, app_path, allow_empty)
    previous = _lock.read_lock(lock_path) if lock_path.exists() else None
    lock = _lock.build_lock(app, previous)
    console = _console()
    counts = (
        f"{_lock.live_task_count(lock)} tasks, {len(lock['renames'])} renames, "
        f"{len(lock['tombstones'])} tombstones"
    )
    if previous is not None and _lock.dump_lock(previous) == _lock.dump_lock(lock):
        _line(console, f"{lock_path} is up to date ({counts}).")
        return
    _lock.write_lock(lock_path, lock)
    for change in _lock.describe_changes(previous, lock):
        _line(console, change)
    _line(console, f"{'Wrote' if previous is not None else 'Created'} {lock_path} ({counts}).")


@main.command("check", short_help="Check the app against its schema lock file.")
@_app_option
@_lock_option
@click.option(
    "--frozen",
    is_flag=True,
    help="Also fail when `versioned-tasks lock` would change the lock file (for CI).",
)
@_allow_empty_option
@_handles_errors
def check_command(app_path: str | None, lock_path: Path, frozen: bool, allow_empty: bool) -> None:
    """Fail (exit 1) when a task changed in a way queued messages would not survive.

    One line per problem, with its fix: a schema changed without a version
    bump, a version bump without an upcaster chain from every locked version,
    a locked task gone without a rename or tombstone, a version gone down.
    With --frozen, a lock file that `versioned-tasks lock` would change (a new
    task, a harmless change not recorded yet) is a problem too. An app that
    declares no versioned task is refused (exit 2) unless --allow-empty is given.
    """
    lock = _lock.read_lock(lock_path)
    app = load_app(app_path)
    _require_tasks(app, app_path, allow_empty)
    review = _lock.review_lock(app, lock, frozen=frozen)
    console = _console()
    for note in review.notes:
        _line(console, f"note: {note}")
    for problem in review.problems:
        _line(console, problem.message)
    checked = f"{len(app.schema.specs)} tasks checked against {lock_path}"
    if review.problems:
        _line(console, f"{len(review.problems)} problem(s); {checked}.")
        if any(p.kind in ("schema_changed", "missing_upcaster") for p in review.problems):
            # In a Django project the app is djhuey's, found without --app.
            django = app_path is None or bool(os.environ.get(DJANGO_SETTINGS_VARIABLE))
            command = "makemigrations" if django else f"makemigrations --app {app_path}"
            _line(console, f"Run `versioned-tasks {command}` to write the missing steps.")
        sys.exit(EXIT_PROBLEMS)
    _line(console, f"No problems; {checked}.")


@main.command("schema", short_help="Write the JSON Schema of every task and version.")
@_app_option
@click.option("--task", "task", metavar="NAME", help="Only this task (its logical name).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Write DIR/<task>/v<N>.schema.json files instead of printing one JSON document.",
)
@click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path),
    help=f"Lock file with the older versions (default: {_lock.DEFAULT_LOCK_PATH}, if present).",
)
@_handles_errors
def schema_command(
    app_path: str, task: str | None, out_dir: Path | None, lock_path: Path | None
) -> None:
    """Export JSON Schemas: today's version from the model, older ones from the lock."""
    app = load_app(app_path)
    if lock_path is None and Path(_lock.DEFAULT_LOCK_PATH).exists():
        lock_path = Path(_lock.DEFAULT_LOCK_PATH)
    lock = _lock.read_lock(lock_path) if lock_path is not None else None
    exported = _lock.export_schemas(app, lock, task=task)
    documents = {
        name: {version: _schema_document(schema) for version, schema in versions.items()}
        for name, versions in exported.items()
    }
    if out_dir is None:
        click.echo(json.dumps(documents, indent=2, sort_keys=True, ensure_ascii=False))
        return
    written = [
        _write_schema(out_dir, name, version, document)
        for name, versions in documents.items()
        for version, document in versions.items()
    ]
    console = _console()
    for path in written:
        _line(console, f"Wrote {path}")
    _line(console, f"{len(written)} schema files for {len(documents)} tasks in {out_dir}.")


_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _schema_document(schema: Any) -> Any:
    if isinstance(schema, dict) and "$schema" not in schema:
        return {"$schema": _DIALECT, **schema}
    return schema


def _write_schema(out_dir: Path, task: str, version: int, document: Any) -> Path:
    if not _lock.is_directory_name(task):
        raise CannotRun(
            f"Task {task!r} cannot name a directory under --out; export the other tasks "
            f"one by one with --task, or print this one without --out."
        )
    path = out_dir / task / f"v{version}.schema.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return path


# -- makemigrations ---------------------------------------------------------------------------


@main.command("makemigrations", short_help="Write the upcasters the lock diff asks for.")
@_app_option
@_lock_option
@click.option("--task", "task", metavar="NAME", help="Only this task (its logical name).")
@click.option(
    "--name",
    "slug",
    default=_makemigrations.DEFAULT_SLUG,
    show_default=True,
    metavar="SLUG",
    help="The corpus case's file name: <payloads>/<task>/v<N>/<SLUG>.json.",
)
@click.option(
    "--rename-field",
    "rename_fields",
    multiple=True,
    metavar="TASK:OLD=NEW",
    help="A field renamed between the locked version and today's (repeatable).",
)
@click.option(
    "--write-version",
    is_flag=True,
    help="Also raise the version in the task's decorator, when it is a literal.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Write the migration modules here (default: task_migrations/ beside each task).",
)
@click.option(
    "--payloads",
    "payloads",
    type=click.Path(path_type=Path),
    default=Path("tests/payloads"),
    show_default=True,
    help="The payload corpus the cases are written to.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@_handles_errors
def makemigrations_command(
    app_path: str | None,
    lock_path: Path,
    task: str | None,
    slug: str,
    rename_fields: tuple[str, ...],
    write_version: bool,
    out_dir: Path | None,
    payloads: Path,
    dry_run: bool,
) -> None:
    """Write the upcaster each changed task needs, its corpus case, and the version bump.

    For every task whose schema changed against the lock without the upcaster
    chain to match: a module task_migrations/<task>_v<N>_to_v<N+1>.py with a
    module-level @upcaster (complete for the mechanical changes, raising
    NotImplementedError where a person must decide), a corpus case from the
    locked schema, and the one-line version bump. Files that exist are never
    overwritten: the same content is left alone, other content is refused
    (exit 1). The app imports task_migrations packages when it checks its schemas.
    """
    lock = _lock.read_lock(lock_path)
    app = load_app(app_path)
    if _declare.default_app_or_none() is not app:
        raise CannotRun(
            f"makemigrations writes module-level @upcaster declarations, which bind to the "
            f"default app, and app {app.name!r} is not it; create it with "
            f"default=True, or call versioned_tasks.set_default_app(huey) where it is made."
        )
    steps = _makemigrations.plan_migrations(
        app,
        lock,
        task=task,
        slug=slug,
        field_renames=_makemigrations.parse_field_renames(rename_fields),
        out=out_dir,
        payloads=payloads,
    )
    console = _console()
    if not steps:
        _line(console, f"No missing steps: every upcaster chain matches {lock_path}.")
        return
    refused = 0
    verb = {"created": "Would write" if dry_run else "Wrote", "unchanged": "Unchanged"}
    for step in steps:
        _line(console, _step_line(step))
        if step.bump:
            _line(console, _bump_line(app, step, write_version and not dry_run))
        for written in _makemigrations.write_step(step, dry_run=dry_run):
            if written.status == "refused":
                refused += 1
                _line(
                    console,
                    f"  Refused {_shown(written.path)}: it exists with other content (edited "
                    f"by a person?); move it away to write it again.",
                )
            else:
                _line(console, f"  {verb[written.status]} {_shown(written.path)}")
        for note in step.notes:
            _line(console, f"  note: {note}")
    person = sum(not step.complete for step in steps)
    _line(
        console,
        f"{len(steps)} step(s): {len(steps) - person} complete, {person} left for a person"
        + (" (check fails until they are written)" if person else "")
        + "; review them, then run `versioned-tasks check` and `versioned-tasks lock`.",
    )
    if refused:
        sys.exit(EXIT_PROBLEMS)


def _shown(path: Path) -> Path:
    """``path`` relative to the current directory when it is under it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _step_line(step: _makemigrations.Step) -> str:
    where = f"Task {step.task!r} version {step.from_version} -> {step.from_version + 1}"
    summary = _makemigrations.summary(step)
    if step.complete:
        return f"{where}: {summary} (complete)."
    fields = ", ".join(repr(c.name) for c in step.changes if c.kind == "needs_person")
    return f"{where}: {summary} (left for a person: {fields})."


def _bump_line(app: VersionedHuey, step: _makemigrations.Step, write: bool) -> str:
    spec = app.schema.specs[step.task]
    edit = _makemigrations.edit_version(spec, step.from_version + 1, write=write)
    if edit.path is None:
        return (
            f"  Raise the version of {step.task!r} to {step.from_version + 1} in its "
            f"decorator (its source was not found)."
        )
    where = f"{_shown(edit.path)}:{edit.line}"
    if edit.new is None:
        return (
            f"  Raise the version of {step.task!r} to {step.from_version + 1} by hand at "
            f"{where} (version= is not a literal there)."
        )
    done = "Raised the version" if write else "Raise the version (--write-version does it)"
    return f"  {done} at {where}: {edit.old.strip()}  ->  {edit.new.strip()}"


# -- census --------------------------------------------------------------------------------


_PLACES = {"queue": "queued", "schedule": "scheduled", "dead_letters": "dead-lettered"}


@main.command("census", short_help="Count messages by task and version; what is safe to remove.")
@_app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_handles_errors
def census_command(app_path: str, as_json: bool) -> None:
    """Count the queue, the schedule and the dead-letter store by task and version.

    Reads message headers only, in chunks (a progress bar on a terminal), and
    says which upcasters, renames and tombstones of the app a message still
    needs. The exit code is 1 when the queue or the schedule holds messages
    this app cannot run at all: unreadable bytes (junk, legacy pickle) or
    tasks it does not know.
    """
    app = load_app(app_path)
    census = _census_with_progress(app, show=not as_json)
    if as_json:
        click.echo(json.dumps({"queue": app.name, **census.to_json()}, indent=2))
    else:
        _print_census(_console(), app, census)
    if _census_problems(census):
        sys.exit(EXIT_PROBLEMS)


def _census_with_progress(app: VersionedHuey, *, show: bool) -> _census.Census:
    errors = Console(stderr=True)
    if not (show and errors.is_terminal):
        return _census.take_census(app)
    sizes = _census.census_sizes(app)
    labels = {"queue": "queue", "schedule": "schedule", "dead_letters": "dead letters"}
    with Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as progress:
        bars = {
            where: progress.add_task(labels[where], total=sizes[where]) for where in _census.WHERES
        }
        return _census.take_census(app, progress=lambda where, n: progress.advance(bars[where], n))


def _census_problems(census: _census.Census) -> int:
    unknown = sum(row["count"] for row in census.unknown if row["where"] != "dead_letters")
    return census.unreadable("queue") + census.unreadable("schedule") + unknown


def _version_text(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _print_census(console: Console, app: VersionedHuey, census: _census.Census) -> None:
    counts: dict[tuple[str | None, int | None], dict[str, int]] = {}
    for row in census.rows:
        counts.setdefault((row["task"], row["version"]), {})[row["where"]] = row["count"]
    totals = ", ".join(f"{census.total(w):,} {_PLACES[w]}" for w in _census.WHERES)
    if not counts:
        _line(console, f"Queue {app.name!r}: no messages ({totals}).")
    else:
        table = Table(title=f"Census of queue {app.name!r}")
        table.add_column("task", overflow="fold")
        table.add_column("version", no_wrap=True)
        for where in _census.WHERES:
            table.add_column(_PLACES[where], justify="right", no_wrap=True)
        for (task, version), places in sorted(counts.items(), key=_by_task_and_version):
            cells = [f"{places.get(w, 0):,}" for w in _census.WHERES]
            table.add_row(Text(task or "(unreadable)"), _version_text(version), *cells)
        console.print(table)
        _line(console, f"Total: {totals}.")
    for line in _census_notes(census):
        _line(console, line)


def _by_task_and_version(item: tuple[tuple[str | None, int | None], Any]) -> tuple[Any, ...]:
    (task, version), _ = item
    return (task is None, task or "", version is None, version or 0)


def _census_notes(census: _census.Census) -> list[str]:
    lines = []
    unreadable = census.unreadable("queue") + census.unreadable("schedule")
    if unreadable:
        legacy = census.legacy.get("queue", 0) + census.legacy.get("schedule", 0)
        pickled = f", {legacy:,} of them legacy pickle (see migrate-queue)" if legacy else ""
        lines.append(
            f"Unreadable: {unreadable:,} queued or scheduled messages are no task envelope"
            f"{pickled}; a worker dead-letters them as undecodable."
        )
    for row in census.unknown:
        lines.append(
            f"Unknown to this app: {row['task']} {_version_text(row['version'])}: "
            f"{row['count']:,} {_PLACES[row['where']]}."
        )
    for row in census.newer:
        lines.append(
            f"Newer than this app: {row['task']} {_version_text(row['version'])}: "
            f"{row['count']:,} {_PLACES[row['where']]} (deferred until a newer worker "
            f"takes them)."
        )
    if census.removals:
        lines.append("Safe to remove:")
        lines.extend(f"  {removal.describe()}" for removal in census.removals)
    else:
        lines.append("Safe to remove: the app declares no upcasters, renames or tombstones.")
    return lines


# -- fleet ---------------------------------------------------------------------------------


@main.command("fleet", short_help="Show the live consumers and the versions they run.")
@_app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_handles_errors
def fleet_command(app_path: str, as_json: bool) -> None:
    """List the consumers of the app's queue that sent a heartbeat recently, the
    version of each task each one runs, and the highest version all of them read.

    The exit code is 1 when no live consumer is found.
    """
    app = load_app(app_path)
    workers = _fleet.live_workers(app)
    tasks = _fleet_tasks(app, workers)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queue": app.name,
                    "workers": [worker.to_json() for worker in workers],
                    "tasks": tasks,
                    "readable_versions": _fleet.versions_all_read(workers),
                },
                indent=2,
            )
        )
    else:
        _print_fleet(_console(), app, workers, tasks)
    if not workers:
        sys.exit(EXIT_PROBLEMS)


def _fleet_tasks(app: VersionedHuey, workers: list[_fleet.WorkerInfo]) -> dict[str, Any]:
    readable = _fleet.versions_all_read(workers)
    names = sorted({*app.schema.specs, *(name for w in workers for name in w.tasks)})
    tasks = {}
    for name in names:
        spec = app.schema.specs.get(name)
        tasks[name] = {
            "app": spec.version if spec is not None else None,
            "workers": {w.id: w.tasks[name] for w in workers if name in w.tasks},
            "all_read": readable.get(name),
        }
    return tasks


def _print_fleet(
    console: Console,
    app: VersionedHuey,
    workers: list[_fleet.WorkerInfo],
    tasks: dict[str, Any],
) -> None:
    publishing = "on" if app.fleet_enabled else "off"
    if not workers:
        _line(
            console,
            f"No live consumer of queue {app.name!r} (heartbeats are {publishing} in this app; "
            f"consumers publish with fleet on, the default on Redis).",
        )
        return
    table = Table(title=f"Live consumers of queue {app.name!r}")
    for column in ("id", "build", "library", "started (UTC)", "last seen (UTC)"):
        table.add_column(column, overflow="fold")
    for w in workers:
        table.add_row(
            Text(w.id),
            Text(w.build or "-"),
            Text(w.library or "-"),
            f"{w.started_at:%Y-%m-%d %H:%M:%S}",
            f"{w.last_seen:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)
    versions = Table(title="Task versions")
    for column in ("task", "this app", "consumers", "all read"):
        versions.add_column(column, overflow="fold")
    for name, info in tasks.items():
        by_version: dict[int, int] = {}
        for version in info["workers"].values():
            by_version[version] = by_version.get(version, 0) + 1
        running = ", ".join(f"v{v} x{n}" for v, n in sorted(by_version.items(), reverse=True))
        missing = len(workers) - len(info["workers"])
        if missing:
            running += f"{', ' if running else ''}unknown to {missing}"
        versions.add_row(
            Text(name),
            _version_text(info["app"]),
            Text(running),
            _version_text(info["all_read"]),
        )
    console.print(versions)
    _line(console, f"{len(workers)} live consumer(s) of queue {app.name!r}.")
