"""Process workers forked while another thread of the consumer's main process
uses the storage (as the Prometheus ``/metrics`` server and the fleet heartbeat
do): every worker starts, every message runs once, and the consumer stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PG_DSN, require_postgres, wait_for

from versioned_tasks import VersionedHuey, VersionedPostgresHuey, VersionedSqliteHuey

APP = """
import os
import threading

from versioned_tasks import {cls}

huey = {cls}("forks-{suffix}", {options})


@huey.versioned_task(version=1, name="forks.record")
def record(n: int) -> None:
    # One file per run: a second run of the same message fails to create it.
    fd = os.open(os.path.join("ran", str(n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)


def keep_the_storage_busy() -> None:
    # The main process reads the storage without pause while it forks.
    while True:
        huey.pending_count()
        huey.dead_letters.count()


threading.Thread(target=keep_the_storage_busy, daemon=True).start()
"""

MESSAGES = 60
PROCESS_FLAGS = ("-k", "process", "-w", "4", "-d", "0.05")


def make_app(kind: str, tmp_path: Path) -> tuple[VersionedHuey, str]:
    """The test's producer app and the consumer module's source, on one storage."""
    suffix = tmp_path.name[-20:]
    if kind == "sqlite":
        db = str(tmp_path / "forks.db")
        source = APP.format(cls="VersionedSqliteHuey", suffix=suffix, options=f"filename={db!r}")
        return VersionedSqliteHuey(f"forks-{suffix}", filename=db), source
    require_postgres()
    source = APP.format(cls="VersionedPostgresHuey", suffix=suffix, options=f"dsn={PG_DSN!r}")
    return VersionedPostgresHuey(f"forks-{suffix}", dsn=PG_DSN), source


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VersionedHuey, str]]:
    huey, source = make_app(request.param, tmp_path)
    yield huey, source
    huey.flush()
    huey.dead_letters.purge()
    huey.storage.close()


def test_workers_forked_while_the_main_process_reads_the_storage_all_run(
    app: tuple[VersionedHuey, str], tmp_path: Path
) -> None:
    huey, source = app

    @huey.versioned_task(version=1, name="forks.record")
    def record(n: int) -> None: ...

    for n in range(MESSAGES):
        record(n)
    (tmp_path / "app.py").write_text(source)
    (tmp_path / "ran").mkdir()
    env: dict[str, Any] = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
    }
    log = tmp_path / "consumer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "app.huey", *PROCESS_FLAGS],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: len(os.listdir(tmp_path / "ran")) == MESSAGES, timeout=60)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    ran = sorted(int(name) for name in os.listdir(tmp_path / "ran"))
    assert ran == list(range(MESSAGES))
    assert huey.pending_count() == 0
    assert huey.dead_letters.count() == 0
    assert "FileExistsError" not in log.read_text()  # no message ran twice
