"""Capture the real terminal output of a few commands for the docs.

Runs ``versioned-tasks demo``, ``lock``, ``check``, ``census`` and ``dlq list``
against a small SQLite app in a temporary directory and writes each command
line and its output to ``docs/generated/<name>.txt``, which the pages include
(pymdownx.snippets). The docs build runs it (``scripts/mkdocs_hooks.py``); run it
by hand with ``python scripts/capture_output.py``. It needs no network and no
server, and takes a few seconds, most of them the demo's scheduled message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "generated"
COLUMNS = 90

#: The app as yesterday's release declared it: the lock is taken from it.
APP_V1 = """
from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("billing", filename="billing.db")


@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> str:
    return f"invoice {invoice_id} sent"


@huey.versioned_task(version=1, name="notifications.send_sms")
def send_sms(phone: str, text: str) -> None: ...
"""

#: Today's release: a currency with its upcaster, and send_sms deleted.
APP_V2 = """
from typing import Any

from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("billing", filename="billing.db")


@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str) -> str:
    return f"invoice {invoice_id} sent in {currency}"


@huey.upcaster("billing.send_invoice", from_version=1)
def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "currency": "EUR"}
"""

#: Yesterday's producers fill the queue.
ENQUEUE_V1 = """
from app import send_invoice, send_sms

send_sms("+32 470 12 34 56", "Your invoice is ready")
for invoice_id in (1, 2, 3):
    send_invoice(invoice_id)
"""
#: A worker of today takes the oldest message, whose task is gone: it dead-letters
#: it and runs the next one; today's producers enqueue at version 2.
TAKE_ONE = """
from app import huey, send_invoice

huey.execute(huey.dequeue())
assert len(huey.dead_letters) == 1
send_invoice(4, currency="USD")
"""


@dataclass(frozen=True)
class Command:
    """One captured command: its arguments and the exit code it must end with."""

    args: tuple[str, ...]
    exit_code: int = 0


def _env(cwd: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The package of this checkout first, then the app's directory.
    path = [str(ROOT), str(cwd), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        COLUMNS=str(COLUMNS),
        TERM="dumb",
        NO_COLOR="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("FORCE_COLOR", None)
    env.pop("VERSIONED_TASKS_APP", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _cli(args: tuple[str, ...]) -> list[str]:
    runner = "import sys; from versioned_tasks.cli import main; main(prog_name='versioned-tasks')"
    return [sys.executable, "-c", runner, *args]


def _run(command: Command, cwd: Path) -> str:
    done = subprocess.run(
        _cli(command.args),
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return _finish(command, done.returncode, done.stdout + done.stderr)


def _finish(command: Command, code: int, output: str) -> str:
    if code != command.exit_code:
        raise RuntimeError(
            f"`versioned-tasks {' '.join(command.args)}` exited {code}, "
            f"expected {command.exit_code}:\n{output}"
        )
    lines = [line.rstrip() for line in output.rstrip().splitlines()]
    text = "\n".join([f"$ versioned-tasks {' '.join(command.args)}", *lines])
    if command.exit_code:
        text += f"\n$ echo $?\n{command.exit_code}"
    return text + "\n"


def _python(code: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=_env(cwd),
        check=True,
        timeout=60,
    )


def capture(out: Path = OUT) -> dict[str, str]:
    """Run the commands; write and return ``{name: text}``."""
    outputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="versioned-tasks-docs-") as tmp:
        work = Path(tmp)
        # The demo waits for a scheduled message: it runs while the rest does.
        demo = Command(("demo",))
        demo_dir = work / "demo"
        demo_dir.mkdir()
        demo_process = subprocess.Popen(
            _cli((*demo.args, "--dir", str(demo_dir))),
            cwd=work,
            env=_env(work),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            outputs.update(_capture_app(work / "app"))
            stdout, _ = demo_process.communicate(timeout=120)
        finally:
            if demo_process.poll() is None:
                demo_process.kill()
                demo_process.wait()
        outputs["demo"] = _finish(demo, demo_process.returncode, stdout).replace(
            str(demo_dir), "/tmp/versioned-tasks-demo"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name, text in outputs.items():
        path = out / f"{name}.txt"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return outputs


def _capture_app(app: Path) -> dict[str, str]:
    """lock, check, census and dlq list of a small app across one deploy."""
    app.mkdir()
    (app / "app.py").write_text(APP_V1, encoding="utf-8")
    outputs = {
        "lock": _run(Command(("lock", "--app", "app.huey")), app),
        "check-ok": _run(Command(("check", "--frozen", "--app", "app.huey")), app),
    }
    _python(ENQUEUE_V1, app)
    (app / "app.py").write_text(APP_V2, encoding="utf-8")
    outputs["check-problems"] = _run(Command(("check", "--app", "app.huey"), exit_code=1), app)
    _python(TAKE_ONE, app)
    outputs["census"] = _run(Command(("census", "--app", "app.huey")), app)
    outputs["dlq-list"] = _run(Command(("dlq", "list", "--app", "app.huey")), app)
    return outputs


if __name__ == "__main__":
    for name, text in capture().items():
        print(f"--- docs/generated/{name}.txt\n{text}")
