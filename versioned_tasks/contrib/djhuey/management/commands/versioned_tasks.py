"""``manage.py versioned_tasks <command> ...``: the ``versioned-tasks`` command in a
Django project, on djhuey's instance unless ``--app`` names another.

The same commands, options, output and exit codes as ``versioned-tasks``
(``lock``, ``check``, ``schema``, ``dlq``, ``census``, ``fleet``,
``migrate-queue``, ...). The apps' ``tasks`` modules are imported first, as
``manage.py run_huey`` does.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, ClassVar

import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....cli.main import EXIT_CANNOT_RUN
from .....cli.main import main as cli
from .....exceptions import VersionedTaskError
from ...project import load_tasks

#: The path of djhuey's instance, preset as every command's ``--app``.
DJANGO_APP = "versioned_tasks.contrib.djhuey:HUEY"

# Options of manage.py itself, already applied by the time the command runs.
_DJANGO_VALUE_OPTIONS = ("--settings", "--pythonpath")
_DJANGO_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")


class Command(BaseCommand):  # type: ignore[misc]
    """Run a ``versioned-tasks`` command on the project's Huey instance."""

    help = (
        "The versioned-tasks command on djhuey's instance: lock, check, schema, dlq, census, "
        "fleet, migrate-queue. `manage.py versioned_tasks --help` lists them."
    )
    # `check` reports schema problems itself; a failing system check must not stop it.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: CommandParser) -> None:
        """One positional list: the versioned-tasks command line (for ``call_command``)."""
        parser.add_argument("args", nargs="*", metavar="COMMAND")

    def run_from_argv(self, argv: list[str]) -> None:
        """From ``manage.py``: hand the command line to click, which exits with its code."""
        try:
            load_tasks()
        except VersionedTaskError as exc:
            self.stderr.write(f"Error: {exc}")
            sys.exit(EXIT_CANNOT_RUN)
        prog = f"{Path(argv[0]).name} {argv[1]}"
        cli.main(
            args=_without_django_options(argv[2:]),
            prog_name=prog,
            default_map=_preset_app(cli),
        )

    def handle(self, *args: str, **options: Any) -> None:
        """From ``call_command``: the output goes to the command's ``stdout`` and
        ``stderr``; an exit code other than 0 becomes ``CommandError(returncode=...)``."""
        try:
            load_tasks()
        except VersionedTaskError as exc:
            raise CommandError(str(exc), returncode=EXIT_CANNOT_RUN) from None
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = _run_in_process(list(args))
        finally:
            self.stdout.write(out.getvalue(), ending="")
            self.stderr.write(err.getvalue(), ending="")
        if isinstance(code, CommandError):
            raise code


def _run_in_process(args: list[str]) -> CommandError | None:
    try:
        cli.main(
            args=args,
            prog_name="versioned_tasks",
            default_map=_preset_app(cli),
            standalone_mode=False,
        )
    except click.ClickException as exc:
        return CommandError(exc.format_message(), returncode=exc.exit_code)
    except SystemExit as exc:
        if exc.code not in (0, None):
            code = exc.code if isinstance(exc.code, int) else 1
            return CommandError(
                f"versioned_tasks {' '.join(args)} exited with {code}.", returncode=code
            )
    return None


def _preset_app(command: click.Command) -> dict[str, Any]:
    """A click ``default_map`` giving every command's ``--app`` djhuey's instance."""
    defaults: dict[str, Any] = {}
    if any(param.name == "app_path" for param in command.params):
        defaults["app_path"] = DJANGO_APP
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            nested = _preset_app(sub)
            if nested:
                defaults[name] = nested
    return defaults


def _without_django_options(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg in _DJANGO_VALUE_OPTIONS:
            skip_value = True
        elif arg.startswith(tuple(f"{o}=" for o in _DJANGO_VALUE_OPTIONS)):
            pass
        elif arg not in _DJANGO_FLAGS:
            kept.append(arg)
    return kept
