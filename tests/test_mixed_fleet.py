"""A rolling deploy with two worker processes on one Redis queue.

An old release (it knows version 2 of ``mixed.charge``: whole euros) and a new
release (version 3: cents and a currency, with an upcaster 2 -> 3 and a
downcaster 3 -> 2) each run a real Huey consumer in a subprocess. The test
process produces as both releases would: version 3 messages, version 2 messages
of the old release, version 2 messages of a new producer pinned with
``emit_versions``, and of one on ``emit_versions="auto"``. Every message must
run exactly once, on a worker that understands it, with the shape that worker
expects; none may be lost or dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import REDIS_URL, require_redis

from versioned_tasks import VersionedRedisHuey, VersionedSerializer

TASK = "mixed.charge"

APP_HEAD = """\
import json
import logging
import os

import redis

from versioned_tasks import VersionedRedisHuey

QUEUE = os.environ["VT_MIXED_QUEUE"]
URL = os.environ["VT_MIXED_REDIS_URL"]
RUNS = redis.Redis.from_url(URL)

# Deferrals and dead letters in the log, beside Huey's own lines.
_handler = logging.StreamHandler()
_handler.setFormatter(
    logging.Formatter("[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s")
)
logging.getLogger("versioned_tasks").addHandler(_handler)
logging.getLogger("versioned_tasks").setLevel(logging.INFO)

huey = VersionedRedisHuey(
    QUEUE, url=URL, newer_version_delay=0.2, newer_version_max_delay=0.5, fleet_interval=1
)


def record(task, version, payload):
    RUNS.rpush(
        QUEUE + ":runs",
        json.dumps(
            {
                "worker": WORKER,
                "pid": os.getpid(),
                "id": task.id,
                "version": version,
                "payload": payload,
                "types": {key: type(value).__name__ for key, value in payload.items()},
            }
        ),
    )
"""

OLD_APP = (
    APP_HEAD
    + """
WORKER = "old"


@huey.versioned_task(version=2, name="mixed.charge", context=True)
def charge(order_id: int, amount: int, task=None) -> None:
    record(task, 2, {"order_id": order_id, "amount": amount})
"""
)

NEW_APP = (
    APP_HEAD
    + """
WORKER = "new"


@huey.versioned_task(version=3, name="mixed.charge", context=True)
def charge(order_id: int, amount_cents: int, currency: str = "EUR", task=None) -> None:
    record(task, 3, {"order_id": order_id, "amount_cents": amount_cents, "currency": currency})


@huey.upcaster("mixed.charge", from_version=2)
def to_cents(payload):
    return {"order_id": payload["order_id"], "amount_cents": payload["amount"] * 100}


@huey.downcaster("mixed.charge", from_version=3)
def to_euros(payload):
    if payload["currency"] != "EUR" or payload["amount_cents"] % 100:
        raise ValueError("version 2 has whole euros only")
    return {"order_id": payload["order_id"], "amount": payload["amount_cents"] // 100}
"""
)

CONSUMER_FLAGS = ["-k", "thread", "-s", "1", "-n", "-C", "-d", "0.05", "-m", "0.2"]


def declare_v2(app: VersionedRedisHuey) -> Any:
    @app.versioned_task(version=2, name=TASK)
    def charge(order_id: int, amount: int) -> None: ...

    return charge


def declare_v3(app: VersionedRedisHuey) -> Any:
    @app.versioned_task(version=3, name=TASK)
    def charge(order_id: int, amount_cents: int, currency: str = "EUR") -> None: ...

    @app.upcaster(TASK, from_version=2)
    def to_cents(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "amount_cents": payload["amount"] * 100}

    @app.downcaster(TASK, from_version=3)
    def to_euros(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["currency"] != "EUR" or payload["amount_cents"] % 100:
            raise ValueError("version 2 has whole euros only")
        return {"order_id": payload["order_id"], "amount": payload["amount_cents"] // 100}

    return charge


class Workers:
    """The two consumer subprocesses, with their logs kept for a failure report."""

    def __init__(self, tmp_path: Path, queue: str) -> None:
        (tmp_path / "mixed_old_app.py").write_text(OLD_APP)
        (tmp_path / "mixed_new_app.py").write_text(NEW_APP)
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "VT_MIXED_QUEUE": queue,
            "VT_MIXED_REDIS_URL": REDIS_URL,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str, workers: int) -> None:
        log = (self.tmp_path / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                f"{module}.huey",
                "-w",
                str(workers),
                *CONSUMER_FLAGS,
            ],
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"the {name} worker exited early:\n{self.log(name)}")

    def stop(self) -> dict[str, int | None]:
        """Stop both gracefully (SIGINT); their exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@pytest.fixture
def workers(tmp_path: Path, queue_name: str) -> Iterator[Workers]:
    require_redis()
    running = Workers(tmp_path, queue_name)
    try:
        yield running
    finally:
        running.stop()
        with redis.Redis.from_url(REDIS_URL) as conn:
            for key in conn.scan_iter(match=f"*{queue_name}*"):
                conn.delete(key)


def wait_for(condition: Callable[[], bool], workers: Workers, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        workers.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout} s\n--- old worker:\n{workers.log('old')}"
                f"\n--- new worker:\n{workers.log('new')}"
            )
        time.sleep(0.05)


def test_two_releases_consume_one_queue_and_every_message_runs_once_where_it_is_understood(
    workers: Workers, queue_name: str
) -> None:
    """A rolling deploy in two processes on one Redis queue. First only the old worker
    (v2) runs while new producers already write v3: it runs what it reads and defers
    the rest. Then the new worker (v3) joins, and both consume while producers write
    v3, v2, pinned v2 and auto messages. Each message runs exactly once, on a worker
    that reads its version, with that worker's shape; none is lost or dead-lettered."""
    new_producer = VersionedRedisHuey(queue_name, url=REDIS_URL)
    charge_v3 = declare_v3(new_producer)
    pinned_producer = VersionedRedisHuey(queue_name, url=REDIS_URL, emit_versions={TASK: 2})
    charge_pinned = declare_v3(pinned_producer)
    old_producer = VersionedRedisHuey(queue_name, url=REDIS_URL)
    charge_v2 = declare_v2(old_producer)
    auto_producer = VersionedRedisHuey(queue_name, url=REDIS_URL, emit_versions="auto")
    charge_auto = declare_v3(auto_producer)
    runs = redis.Redis.from_url(REDIS_URL)
    runs_key = f"{queue_name}:runs"

    # id -> (order_id, cents, currency, whether version 2 can carry it)
    expected: dict[str, tuple[int, int, str, bool]] = {}
    order = iter(range(1, 1000))

    def produce(v3: int, v3_usd: int, pinned: int, scheduled: int, old: int, auto: int) -> None:
        for _ in range(v3):  # version 3 that version 2 could express
            n = next(order)
            expected[charge_v3(n, n * 100).id] = (n, n * 100, "EUR", False)
        for _ in range(v3_usd):  # version 3 that version 2 cannot express
            n = next(order)
            expected[charge_v3(n, n * 100 + 5, "USD").id] = (n, n * 100 + 5, "USD", False)
        for _ in range(pinned):  # pinned to version 2, through the downcaster
            n = next(order)
            expected[charge_pinned(n, n * 100).id] = (n, n * 100, "EUR", True)
        for _ in range(scheduled):  # pinned, and due a second from now
            n = next(order)
            result = charge_pinned.schedule((n, n * 100), delay=1)
            expected[result.id] = (n, n * 100, "EUR", True)
        for _ in range(old):  # the old release's own producer
            n = next(order)
            expected[charge_v2(n, n).id] = (n, n * 100, "EUR", True)
        for _ in range(auto):  # emit_versions="auto"
            n = next(order)
            expected[charge_auto(n, n * 100).id] = (n, n * 100, "EUR", True)

    def auto_writes() -> int:
        probe = auto_producer.serialize_task(charge_auto.s(0, 100))
        version: int = VersionedSerializer().unpack(probe)[0]["v"]
        return version

    # 1. Only the old release consumes.
    workers.start("old", "mixed_old_app", 1)
    wait_for(lambda: len(new_producer.fleet()) == 1, workers, timeout=20)
    assert auto_writes() == 2
    produce(v3=3, v3_usd=1, pinned=0, scheduled=0, old=4, auto=2)
    deferred = [ident for ident, (*_, v2) in expected.items() if not v2]
    wait_for(
        lambda: (
            runs.llen(runs_key) == 6
            and all(f"id {ident} " in workers.log("old") for ident in deferred)
        ),
        workers,
        timeout=20,
    )

    # 2. The new release joins; both consume.
    workers.start("new", "mixed_new_app", 3)
    wait_for(lambda: len(new_producer.fleet()) == 2, workers, timeout=20)
    assert auto_writes() == 2  # the highest version both read
    produce(v3=3, v3_usd=1, pinned=8, scheduled=2, old=4, auto=2)
    wait_for(lambda: runs.llen(runs_key) >= len(expected), workers, timeout=60)
    codes = workers.stop()
    done = [json.loads(item) for item in runs.lrange(runs_key, 0, -1)]
    runs.close()

    assert codes == {"old": 0, "new": 0}
    counts = Counter(run["id"] for run in done)
    assert set(counts) == set(expected)  # none lost, nothing unexpected
    assert [ident for ident, count in counts.items() if count != 1] == []  # exactly once
    for run in done:
        order_id, cents, currency, v2_readable = expected[run["id"]]
        if run["worker"] == "old":
            assert v2_readable, run  # never a version 3 message on the old worker
            assert run["version"] == 2
            assert run["payload"] == {"order_id": order_id, "amount": cents // 100}
            assert run["types"] == {"order_id": "int", "amount": "int"}
        else:
            assert run["worker"] == "new"
            assert run["version"] == 3
            assert run["payload"] == {
                "order_id": order_id,
                "amount_cents": cents,
                "currency": currency,
            }
            assert run["types"] == {"order_id": "int", "amount_cents": "int", "currency": "str"}
    assert {run["id"] for run in done if run["worker"] == "new"} >= set(deferred)

    reader = VersionedRedisHuey(queue_name, url=REDIS_URL)
    declare_v3(reader)
    assert len(reader.dead_letters) == 0
    assert reader.pending_count() == 0
    assert reader.scheduled_count() == 0
    for name in ("old", "new"):
        log = workers.log(name)
        assert "Traceback" not in log, log
        assert "Dead-lettered" not in log, log
