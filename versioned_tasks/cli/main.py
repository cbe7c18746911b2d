"""The ``versioned-tasks`` command: the demo, and the dead-letter store of an app.

::

    versioned-tasks demo [--dir PATH] [--keep]
    versioned-tasks dlq list    --app module.attr [--limit N] [--reason R] [--json]
    versioned-tasks dlq show    ID --app module.attr [--json]
    versioned-tasks dlq replay  (ID | --all [--reason R]) --app module.attr [--dry-run]
    versioned-tasks dlq purge   --app module.attr [--yes]
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
still fails, a declined purge), 2 when the command could not run (an app that
does not import, an unknown id, a bad option).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
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
from ..app.serializer import VersionedSerializer
from ..exceptions import (
    ConfigurationError,
    DeadLetterNotFound,
    DecodeError,
    MessageRejected,
    ReplayFailed,
    VersionedTaskError,
)
from ..messages import legacy as _legacy
from ..messages.readwrite import REASONS
from ..ops import census as _census
from ..ops import lock as _lock
from ..ops import makemigrations as _makemigrations
from ..ops import migrate_queue as _migrate_queue
from ..storage.deadletters import DeadLetter
from ..wire import envelope as _envelope
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


@dlq.command("list")
@_app_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N entries.")
@click.option("--reason", type=click.Choice(REASONS), help="Only entries with this reason.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handles_errors
def list_command(app_path: str, limit: int | None, reason: str | None, as_json: bool) -> None:
    """List dead letters, newest first."""
    app = load_app(app_path)
    entries = _select(app, reason=reason, limit=limit)
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    console = _console()
    if not entries:
        _line(console, f"No dead letters{_for_reason(reason)} in queue {app.name!r}.")
        return
    console.print(_entries_table(entries, title=f"Dead letters of {app.name!r}"))
    _line(console, f"{len(entries)} shown of {len(app.dead_letters)} in the store.")


def _select(app: VersionedHuey, *, reason: str | None, limit: int | None) -> list[DeadLetter]:
    store = app.dead_letters
    if reason is None:
        return store.list(limit)
    selected = []
    for entry in store:
        if entry.reason == reason:
            selected.append(entry)
            if limit is not None and len(selected) >= limit:
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


@dataclass(frozen=True)
class _Decoded:
    header: dict[str, Any] | None
    body: Any
    problem: str | None


def _decode(raw: bytes, app: Any) -> _Decoded:
    # Only the envelope is ever parsed: anything else is shown as bytes. The
    # app's own serializer checks signatures; an envelope whose signature does
    # not check is still shown, marked as unverified.
    # (With legacy_pickle, app.serializer wraps the VersionedSerializer and
    # passes unpack through.)
    unpack = getattr(app.serializer, "unpack", None) or VersionedSerializer().unpack
    problem = None
    try:
        header, body = unpack(raw)
    except DecodeError as exc:
        inner = _envelope.signed_content(raw)
        if inner is None:
            return _Decoded(None, None, str(exc))
        try:
            limit = max(len(inner), _envelope.DEFAULT_MAX_SIZE)
            header, body = VersionedSerializer(max_size=limit).unpack(inner)
        except DecodeError:
            return _Decoded(None, None, str(exc))
        problem = f"Signature not verified, shown as written: {exc}"
    try:
        return _Decoded(header, orjson.loads(body), problem)
    except orjson.JSONDecodeError as exc:
        return _Decoded(header, None, f"Envelope body is not valid JSON: {exc}")


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


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    text: str


def _check(app: VersionedHuey, entry: DeadLetter) -> _Verdict:
    """What a replay would do now, without enqueueing or changing anything."""
    if entry.corrupt:
        return _Verdict(False, "would fail: the stored entry is corrupt; recover it by hand")
    if _legacy.is_legacy(entry.raw):
        # Reading it would unpickle it, even with legacy_pickle on: only a
        # real replay, asked for by name, may do that.
        return _Verdict(
            False,
            "not checked: legacy pickle, which is unpickled only by a replay of this "
            "entry on an app with legacy_pickle=True",
        )
    try:
        task = app.deserialize_task(entry.raw)
    except MessageRejected as exc:
        if exc.reason == "retired" and _has_tombstone_handler(app, exc.task):
            return _Verdict(True, f"would go to the tombstone handler of {exc.task!r}")
        return _Verdict(False, f"would fail again ({exc.reason}): {exc.error}")
    return _Verdict(True, f"would run as {_describe_task(entry, task)}")


def _has_tombstone_handler(app: VersionedHuey, task: str | None) -> bool:
    if task is None:
        return False
    tomb = app.schema.tombstones.get(app.schema.resolve(task))
    return tomb is not None and tomb.handler is not None


def _describe_task(entry: DeadLetter, task: Any) -> str:
    spec = getattr(type(task), "_vt_spec", None)
    if spec is None:  # a plain @huey.task(): its registry key is its name on the wire
        name, version = f"{type(task).__module__}.{type(task).__name__}", None
    else:
        name, version = spec.name, spec.version
    steps = [f"{name} v{version}" if version is not None else name]
    if entry.task is not None and entry.task != name:
        steps.append(f"renamed from {entry.task}")
    if version is not None and entry.version is not None and entry.version < version:
        steps.append(f"upcast {entry.version}->{version}")
    arguments = ", ".join(
        [*(repr(a) for a in task.args), *(f"{k}={v!r}" for k, v in task.kwargs.items())]
    )
    return f"{', '.join(steps)} with ({_shorten(arguments, 200)})"


@dlq.command("replay")
@click.argument("entry_id", metavar="[ID]", required=False)
@_app_option
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry, oldest first.")
@click.option(
    "--reason", type=click.Choice(REASONS), help="With --all: only entries with this reason."
)
@click.option("--dry-run", is_flag=True, help="Only report what would happen; change nothing.")
@_handles_errors
def replay_command(
    entry_id: str | None, app_path: str, replay_all: bool, reason: str | None, dry_run: bool
) -> None:
    """Run dead letters through today's pipeline and enqueue the ones that now work.

    An entry that still fails keeps its id and gets the new reason; the exit
    code is then 1.
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
        entries = _select(app, reason=reason, limit=None)[::-1]
    console = _console()
    if not entries:
        _line(console, f"No dead letters{_for_reason(reason)} to replay.")
        return
    replay = _dry_replay if dry_run else _replay
    failed = sum(not replay(console, app, entry) for entry in entries)
    if replay_all or dry_run:
        _line(console, _summary(len(entries), failed, dry_run=dry_run))
    if failed:
        sys.exit(EXIT_PROBLEMS)


def _dry_replay(console: Console, app: VersionedHuey, entry: DeadLetter) -> bool:
    verdict = _check(app, entry)
    _line(console, f"{entry.id} ({_identity(entry)}): {verdict.text}")
    return verdict.ok


def _replay(console: Console, app: VersionedHuey, entry: DeadLetter) -> bool:
    try:
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


@dlq.command("purge")
@_app_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_handles_errors
def purge_command(app_path: str, yes: bool) -> None:
    """Delete every dead letter of the app's queue."""
    app = load_app(app_path)
    count = len(app.dead_letters)
    if count == 0:
        click.echo(f"No dead letters in queue {app.name!r}.")
        return
    if not yes and not click.confirm(
        f"Delete all {count} dead letters of queue {app.name!r}? Their bytes are lost."
    ):
        click.echo("Nothing was deleted.")
        sys.exit(EXIT_PROBLEMS)
    removed = app.dead_letters.purge()
    click.echo(f"Deleted {removed} dead letters from queue {app.name!r}.")


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
