"""Fleet awareness: consumers publish the tasks and versions they run, with a
heartbeat; readers see the live ones and the highest version all of them read.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from helpers import REDIS_URL, MakeHuey, require_redis, running_consumer, wait_for
from huey.consumer import Consumer
from huey.storage import BlackHoleStorage

from versioned_tasks import (
    ConfigurationError,
    VersionedHuey,
    VersionedRedisHuey,
    live_workers,
    readable_versions,
)
from versioned_tasks.cli import main

INTERVAL = 0.5  # stale after 1.5 s: room for a starved heartbeat on a busy machine


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A unique Redis queue name; its keys are deleted afterwards."""
    require_redis()
    name = f"vt_test_{uuid.uuid4().hex[:12]}"
    yield name
    with redis.Redis.from_url(REDIS_URL) as conn:
        for key in conn.scan_iter(match=f"*{name}*"):
            conn.delete(key)


def app_at(name: str, version: int, *, build: str, **options: Any) -> VersionedRedisHuey:
    """An app whose send_invoice is at ``version``; v3 code also has a new task."""
    app = VersionedRedisHuey(
        name, url=REDIS_URL, blocking=False, app_build=build, fleet_interval=INTERVAL, **options
    )

    @app.versioned_task(version=version, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> None: ...

    @app.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int) -> None: ...

    if version >= 3:

        @app.versioned_task(version=1, name="audit.record")
        def record(event: str) -> None: ...

    return app


# -- Redis, on by default --------------------------------------------------------------------


def test_a_consumer_appears_with_its_tasks_and_is_removed_on_stop(redis_queue: str) -> None:
    """On Redis a consumer publishes by default: id, host, pid, build and task versions."""
    app = app_at(redis_queue, 2, build="2024.06.1")
    assert app.fleet_enabled
    assert app.fleet() == []
    with running_consumer(app, workers=1):
        [worker] = app.fleet()
        assert worker.pid == os.getpid()
        assert worker.id.startswith(f"{worker.host}:{os.getpid()}:")
        assert worker.build == "2024.06.1"
        assert dict(worker.tasks) == {"billing.send_invoice": 2, "shop.ship": 1}
        assert worker.started_at <= worker.last_seen
        first_seen = worker.last_seen
        wait_for(lambda: app.fleet()[0].last_seen > first_seen)
    assert app.fleet() == []
    with redis.Redis.from_url(REDIS_URL) as conn:
        assert conn.hlen(f"huey.fleet.{redis_queue}") == 0


def test_readable_versions_is_the_lowest_version_every_live_worker_runs(redis_queue: str) -> None:
    """An old worker (v2) and a new one (v3): all of them read v2; a task only the new
    one knows is left out. A producer without a consumer sees the same."""
    old, new = app_at(redis_queue, 2, build="old"), app_at(redis_queue, 3, build="new")
    producer = VersionedRedisHuey(redis_queue, url=REDIS_URL, fleet=False)
    with running_consumer(old, workers=1), running_consumer(new, workers=1):
        assert sorted(w.build for w in live_workers(producer)) == ["new", "old"]
        assert readable_versions(producer) == {"billing.send_invoice": 2, "shop.ship": 1}
    with running_consumer(new, workers=1):
        assert readable_versions(producer) == {
            "audit.record": 1,
            "billing.send_invoice": 3,
            "shop.ship": 1,
        }
    assert readable_versions(producer) == {}


CONSUMER_SCRIPT = """\
import sys
from versioned_tasks import VersionedRedisHuey

huey = VersionedRedisHuey(
    {name!r}, url={url!r}, blocking=False, app_build="subprocess", fleet_interval={interval}
)

@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> None: ...

consumer = huey.create_consumer(
    workers=1, worker_type="thread", periodic=False, initial_delay=0.02, max_delay=0.1
)
consumer.run()
"""


@pytest.fixture
def consumer_process(redis_queue: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer in its own process, run as huey_consumer runs one."""
    script = tmp_path / "consumer.py"
    source = CONSUMER_SCRIPT.format(name=redis_queue, url=REDIS_URL, interval=INTERVAL)
    script.write_text(textwrap.dedent(source))
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    assert process.stderr is not None
    process.stderr.close()


def test_a_consumer_stopped_by_sigint_removes_itself(
    redis_queue: str, consumer_process: subprocess.Popen[bytes]
) -> None:
    """Huey's own signal handling still works; a graceful stop removes the record at once."""
    reader = VersionedRedisHuey(redis_queue, url=REDIS_URL)
    wait_for(lambda: [w.pid for w in reader.fleet()] == [consumer_process.pid])
    consumer_process.send_signal(signal.SIGINT)
    assert consumer_process.wait(10) == 0
    with redis.Redis.from_url(REDIS_URL) as conn:
        assert conn.hlen(f"huey.fleet.{redis_queue}") == 0
    assert reader.fleet() == []


def test_a_killed_consumer_expires_and_its_record_is_pruned(
    redis_queue: str, consumer_process: subprocess.Popen[bytes]
) -> None:
    """No stop, no removal: after three missed heartbeats the record is ignored and deleted."""
    reader = VersionedRedisHuey(redis_queue, url=REDIS_URL)
    wait_for(lambda: len(reader.fleet()) == 1)
    consumer_process.kill()
    consumer_process.wait(10)
    with redis.Redis.from_url(REDIS_URL) as conn:
        assert conn.hlen(f"huey.fleet.{redis_queue}") == 1
        wait_for(lambda: reader.fleet() == [])
        assert conn.hlen(f"huey.fleet.{redis_queue}") == 0


# -- any backend, opt-in ------------------------------------------------------------------------


def test_fleet_true_publishes_on_every_backend(make_huey: MakeHuey) -> None:
    """With fleet=True a consumer publishes on any storage, and removes itself on stop."""
    app = make_huey(fleet=True, fleet_interval=INTERVAL, app_build="b7")

    @app.versioned_task(version=4, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> None: ...

    reader = make_huey()
    with running_consumer(app, workers=1):
        [worker] = reader.fleet()
        assert (worker.build, dict(worker.tasks)) == ("b7", {"billing.send_invoice": 4})
        assert readable_versions(reader) == {"billing.send_invoice": 4}
        first_seen = worker.last_seen
        wait_for(lambda: reader.fleet()[0].last_seen > first_seen)
    assert reader.fleet() == []


def test_fleet_is_off_by_default_except_on_redis(make_huey: MakeHuey, backend: str) -> None:
    """fleet=None: Redis consumers publish, the others run Huey's plain consumer."""
    app = make_huey()
    assert app.fleet_enabled is (backend == "redis")
    with running_consumer(app, workers=1) as consumer:
        assert (type(consumer) is Consumer) is (backend != "redis")
        assert len(app.fleet()) == (1 if backend == "redis" else 0)


def test_fleet_false_turns_publishing_off_on_redis(redis_queue: str) -> None:
    """fleet=False: no record, even on Redis."""
    app = VersionedRedisHuey(redis_queue, url=REDIS_URL, blocking=False, fleet=False)
    with running_consumer(app, workers=1):
        assert app.fleet() == []


def test_fleet_options_are_checked_at_construction() -> None:
    """A storage with nowhere to publish, or an interval that is not positive, is refused."""
    with pytest.raises(
        ConfigurationError, match="fleet=True is not supported on BlackHoleStorage"
    ):
        VersionedHuey("q", storage_class=BlackHoleStorage, fleet=True)
    assert not VersionedHuey("q", storage_class=BlackHoleStorage).fleet_enabled
    with pytest.raises(ConfigurationError, match="fleet_interval must be positive, got 0"):
        VersionedHuey("q", storage_class=BlackHoleStorage, fleet_interval=0)


# -- the command ---------------------------------------------------------------------------

APP_MODULE = """\
from versioned_tasks import VersionedRedisHuey

huey = VersionedRedisHuey({name!r}, url={url!r}, blocking=False, app_build="cli")

@huey.versioned_task(version=3, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> None: ...
"""


@pytest.fixture
def cli_app(redis_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(tmp_path))
    module = f"vt_fleet_app_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(APP_MODULE.format(name=redis_queue, url=REDIS_URL))
    importlib.invalidate_caches()
    yield importlib.import_module(module)
    sys.modules.pop(module, None)


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_fleet_lists_live_consumers_and_versions(cli_app: Any, redis_queue: str) -> None:
    """--json: the workers, per task the version each runs, and what all of them read."""
    old = app_at(redis_queue, 2, build="old")
    with running_consumer(cli_app.huey), running_consumer(old, workers=1):
        result = run("fleet", "--app", f"{cli_app.__name__}:huey", "--json")
        text = run("fleet", "--app", f"{cli_app.__name__}:huey")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["queue"] == redis_queue
    assert sorted(w["build"] for w in data["workers"]) == ["cli", "old"]
    invoice = data["tasks"]["billing.send_invoice"]
    assert (invoice["app"], invoice["all_read"]) == (3, 2)
    assert sorted(invoice["workers"].values()) == [2, 3]
    assert data["tasks"]["shop.ship"] == {
        "app": None,
        "workers": {w["id"]: 1 for w in data["workers"] if w["build"] == "old"},
        "all_read": None,
    }
    assert data["readable_versions"] == {"billing.send_invoice": 2}
    assert text.exit_code == 0, text.output
    assert "2 live consumer(s)" in text.output
    assert "v3 x1, v2 x1" in text.output


def test_cli_fleet_exit_code_1_without_live_consumers(cli_app: Any, redis_queue: str) -> None:
    """No consumer: a one-line note and exit code 1."""
    result = run("fleet", "--app", f"{cli_app.__name__}.huey")
    assert result.exit_code == 1
    assert f"No live consumer of queue {redis_queue!r}" in result.output
