"""Reliable fetch on Redis, through real consumers: in-process ones (thread
workers) and ``huey_consumer`` subprocesses killed with SIGKILL.

A message runs once; after a crash it runs again only when its worker died
during the task; a bad message is dead-lettered exactly once, with its exact
bytes; in-flight lists are empty once the queue is drained, and a live
consumer's list is never recovered by another.
"""

from __future__ import annotations

import os
import re
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
from helpers import REDIS_URL, require_redis, running_consumer, wait_for
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
    SqliteStorage,
)

from versioned_tasks import ConfigurationError, VersionedHuey, VersionedRedisHuey

#: Short heartbeats, so that a killed consumer is gone after about a second.
INTERVAL = 0.3

APP = """\
import os
import time

import redis

from versioned_tasks import VersionedRedisHuey

QUEUE = os.environ["VT_REL_QUEUE"]
URL = os.environ["VT_REL_URL"]
RUNS = redis.Redis.from_url(URL)

huey = VersionedRedisHuey(QUEUE, url=URL, fleet_interval=float(os.environ["VT_REL_INTERVAL"]))


def hold(flag):
    # Wait while the test holds the flag (at most a minute).
    deadline = time.monotonic() + 60
    while RUNS.exists(QUEUE + flag) and time.monotonic() < deadline:
        time.sleep(0.02)


@huey.versioned_task(version=1, name="rel.work")
def work(n: int, pause: float = 0.0) -> None:
    RUNS.rpush(QUEUE + ":started", f"{n}:{os.getpid()}")
    hold(":hold")
    time.sleep(pause)
    RUNS.rpush(QUEUE + ":done", n)


@huey.versioned_task(version=2, name="rel.convert")
def convert(n: int, unit: str) -> None:
    RUNS.rpush(QUEUE + ":done", n)


@huey.upcaster("rel.convert", from_version=1)
def slow_failing_upcast(payload):
    RUNS.rpush(QUEUE + ":upcasting", payload["n"])
    hold(":hold")
    raise ValueError("no unit to add")
"""

THREAD_FLAGS = ["-k", "thread", "-n", "-C", "-d", "0.05", "-m", "0.2", "-s", "1"]


class Consumers:
    """``huey_consumer`` subprocesses on one queue, with their logs."""

    def __init__(self, tmp_path: Path, queue: str) -> None:
        (tmp_path / "rel_app.py").write_text(APP)
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "VT_REL_QUEUE": queue,
            "VT_REL_URL": REDIS_URL,
            "VT_REL_INTERVAL": str(INTERVAL),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *flags: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"consumer-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "rel_app.huey", *flags],
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}:\n{path.read_text(errors='replace')}"
            for path in sorted(self.tmp_path.glob("consumer-*.log"))
        )

    def wait(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s\n{self.logs()}")
            time.sleep(0.02)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def conn(queue_name: str) -> Iterator[redis.Redis]:
    """A Redis connection; every key of the test's queue is deleted afterwards."""
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    for key in client.scan_iter(match=f"*{queue_name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def consumers(tmp_path: Path, queue_name: str, conn: redis.Redis) -> Iterator[Consumers]:
    running = Consumers(tmp_path, queue_name)
    try:
        yield running
    finally:
        running.stop()


def producer(queue: str) -> VersionedRedisHuey:
    """An app that writes ``rel.work`` and ``rel.convert`` (version 1), runs no consumer."""
    app = VersionedRedisHuey(queue, url=REDIS_URL)

    @app.versioned_task(version=1, name="rel.work")
    def work(n: int, pause: float = 0.0) -> None: ...

    @app.versioned_task(version=1, name="rel.convert")
    def convert(n: int) -> None: ...

    return app


def message(app: VersionedRedisHuey, name: str, n: int, **kwargs: Any) -> bytes:
    """The bytes of a call of the producer's task ``name`` with ``n``."""
    [wrapper] = [t for t in app._registry._registry.values() if t._vt_spec.name == name]
    return app.serialize_task(wrapper(args=(), kwargs={"n": n, **kwargs}))


def send(queue: str, name: str, n: int) -> bytes:
    """Enqueue a call of ``name`` on the queue; its bytes."""
    app = producer(queue)
    raw = message(app, name, n)
    app.storage.enqueue(raw)
    return raw


def recording_app(queue: str, **options: Any) -> VersionedRedisHuey:
    """An in-process app whose ``rel.work`` records runs as the subprocess app does."""
    app = VersionedRedisHuey(queue, url=REDIS_URL, fleet_interval=INTERVAL, **options)
    runs = redis.Redis.from_url(REDIS_URL)

    @app.versioned_task(version=1, name="rel.work")
    def work(n: int, pause: float = 0.0) -> None:
        runs.rpush(queue + ":started", f"{n}:{os.getpid()}")
        time.sleep(pause)
        runs.rpush(queue + ":done", n)

    @app.versioned_task(version=2, name="rel.convert")
    def convert(n: int, unit: str) -> None:
        runs.rpush(queue + ":done", n)

    @app.upcaster("rel.convert", from_version=1)
    def failing_upcast(payload: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no unit to add")

    return app


def counts(conn: redis.Redis, key: str) -> Counter[int]:
    """How many times each task number was recorded under ``key``."""
    return Counter(int(item.split(b":")[0]) for item in conn.lrange(key, 0, -1))


def in_flight(conn: redis.Redis, queue: str) -> list[bytes]:
    """Every message sitting in an in-flight list of the queue."""
    keys = conn.keys(f"huey.inflight.{queue}.*")
    return [raw for key in keys for raw in conn.lrange(key, 0, -1)]


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage_class", "expected"),
    [
        (RedisStorage, True),
        (RedisExpireStorage, True),
        (PriorityRedisStorage, False),
        (PriorityRedisExpireStorage, False),
        (MemoryStorage, False),
    ],
)
def test_reliable_is_on_by_default_for_redis_and_redis_expire_storage_only(
    storage_class: type[Any], expected: bool, queue_name: str
) -> None:
    app = VersionedHuey(queue_name, storage_class=storage_class)
    assert app.reliable is expected
    assert (app.inflight is not None) is expected


def test_reliable_follows_fleet_false_unless_asked_for(queue_name: str) -> None:
    """Without heartbeats a dead consumer cannot be told from a live one: off by
    default, and reliable=True with fleet=False is refused."""
    assert VersionedRedisHuey(queue_name, fleet=False).reliable is False
    assert VersionedRedisHuey(queue_name, reliable=False).reliable is False
    with pytest.raises(
        ConfigurationError,
        match=re.escape(
            "reliable=True needs the consumer heartbeat, which tells a dead consumer's "
            "in-flight messages from a live one's; drop fleet=False."
        ),
    ):
        VersionedRedisHuey(queue_name, fleet=False, reliable=True)


@pytest.mark.parametrize(
    ("storage_class", "options", "why"),
    [
        (PriorityRedisStorage, {}, "its queue is a sorted set popped with BZPOPMIN"),
        (PriorityRedisExpireStorage, {}, "its queue is a sorted set popped with BZPOPMIN"),
        (SqliteStorage, {"filename": ":memory:"}, "already share one transaction"),
        (MemoryStorage, {}, "Huey has no acknowledgement there"),
        (FileStorage, {"path": "unused"}, "Huey has no acknowledgement there"),
    ],
)
def test_reliable_true_is_refused_where_it_is_not_supported(
    storage_class: type[Any], options: dict[str, Any], why: str, queue_name: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(why)) as caught:
        VersionedHuey(queue_name, storage_class=storage_class, reliable=True, **options)
    assert "use RedisStorage and RedisExpireStorage" not in str(caught.value)
    assert "Reliable fetch works on RedisStorage and RedisExpireStorage" in str(caught.value)


# -- one consumer, thread workers ----------------------------------------------------------


@pytest.mark.parametrize("blocking", [True, False])
def test_every_message_runs_once_and_in_flight_lists_are_empty_after_the_drain(
    queue_name: str, conn: redis.Redis, blocking: bool
) -> None:
    """Plain calls, a retry, a future eta and a revoked task through four thread workers:
    each settles, nothing stays in flight, and the lists are gone after stop."""
    app = VersionedRedisHuey(queue_name, url=REDIS_URL, blocking=blocking, fleet_interval=INTERVAL)
    runs: Counter[int] = Counter()
    failed_once: set[int] = set()

    @app.versioned_task(version=1, name="rel.count", retries=1)
    def count(n: int) -> None:
        runs[n] += 1
        if n == 0 and n not in failed_once:
            failed_once.add(n)
            raise RuntimeError("first attempt fails")

    for n in range(200):
        count(n)
    count.schedule((500,), delay=1)
    count(600).revoke()
    assert app.reliable
    with running_consumer(app, workers=4):
        wait_for(lambda: sum(runs.values()) == 202 and app.pending_count() == 0)
        wait_for(lambda: in_flight(conn, queue_name) == [] and app.scheduled_count() == 0)
        assert len(conn.smembers(f"huey.inflight.{queue_name}")) == 4
    assert runs == Counter({**dict.fromkeys(range(1, 200), 1), 0: 2, 500: 1})
    assert conn.smembers(f"huey.inflight.{queue_name}") == set()
    assert conn.keys(f"huey.inflight.{queue_name}*") == []


def test_bad_messages_are_dead_lettered_once_with_their_bytes_and_leave_no_in_flight_leftover(
    queue_name: str, conn: redis.Redis
) -> None:
    app = recording_app(queue_name)
    bad = [b"\x00junk", b"VT-not-really", message(producer(queue_name), "rel.convert", 1)]
    for raw in bad:
        app.storage.enqueue(raw)
    with running_consumer(app, workers=2):
        wait_for(lambda: len(app.dead_letters) == 3)
        wait_for(lambda: in_flight(conn, queue_name) == [])
    assert sorted(entry.raw for entry in app.dead_letters) == sorted(bad)
    assert in_flight(conn, queue_name) == []


def _settles(command: tuple[Any, ...]) -> bool:
    # The dead-letter script with a settle has six keys: entries, index,
    # sequence, counts, their state and the in-flight list.
    return str(command[0]).upper() == "EVALSHA" and int(command[2]) == 6


class FlakyPipeline(redis.client.Pipeline):  # type: ignore[misc]
    """A pipeline whose dead-letter settle fails once, before or after Redis ran it."""

    failures: list[str]

    def execute(self, raise_on_error: bool = True) -> Any:
        if self.failures and any(_settles(args) for args, _ in self.command_stack):
            when = self.failures.pop(0)
            if when == "after":
                super().execute(raise_on_error)
            else:
                self.reset()
            raise redis.ConnectionError(f"connection lost {when} the settle")
        return super().execute(raise_on_error)


class FlakyRedis(redis.Redis):  # type: ignore[misc]
    """A client whose dead-letter settle fails once (alone or in a pipeline):
    before it reaches Redis, or after Redis ran it."""

    failures: list[str]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.failures and _settles(("EVALSHA", sha, numkeys)):
            when = self.failures.pop(0)
            if when == "after":
                super().evalsha(sha, numkeys, *keys_and_args)
            raise redis.ConnectionError(f"connection lost {when} the settle")
        return super().evalsha(sha, numkeys, *keys_and_args)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> FlakyPipeline:
        pipe = FlakyPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.failures = self.failures
        return pipe


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_dead_letter_settle_that_fails_is_made_later_exactly_once(
    queue_name: str, conn: redis.Redis, when: str
) -> None:
    """The dead-letter write and its LREM fail together (connection lost before the
    script reached Redis, or after it ran): the bytes stay in the worker's list until
    the settle is made or they are put back and read again, and the message is
    dead-lettered once, with its bytes."""
    app = recording_app(queue_name)
    flaky = FlakyRedis(connection_pool=app.storage.pool)
    flaky.failures = [when]
    app.storage.conn = flaky
    app.storage.enqueue(b"\x00junk")
    with running_consumer(app, workers=1):
        wait_for(lambda: len(app.dead_letters) == 1 and flaky.failures == [])
        wait_for(lambda: in_flight(conn, queue_name) == [])
        producer(queue_name).storage.enqueue(b"\x00more junk")
        wait_for(lambda: len(app.dead_letters) == 2)
    assert sorted(entry.raw for entry in app.dead_letters) == [b"\x00junk", b"\x00more junk"]
    assert in_flight(conn, queue_name) == []


# -- two consumers, kills ------------------------------------------------------------------


def test_every_message_runs_once_with_a_consumer_subprocess_beside_an_in_process_one(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    app = recording_app(queue_name)
    make = producer(queue_name)
    for n in range(300):
        app.storage.enqueue(message(make, "rel.work", n, pause=0.01))
    consumers.start("-w", "2", *THREAD_FLAGS)
    consumers.wait(lambda: conn.llen(queue_name + ":started") > 0)
    with running_consumer(app, workers=2):
        consumers.wait(lambda: conn.llen(queue_name + ":done") >= 300)
        consumers.wait(lambda: in_flight(conn, queue_name) == [])
    done = counts(conn, queue_name + ":done")
    assert done == Counter(dict.fromkeys(range(300), 1))
    pids = {item.split(b":")[1] for item in conn.lrange(queue_name + ":started", 0, -1)}
    assert len(pids) == 2, "both consumers took part"


def test_a_task_running_when_its_consumer_is_killed_runs_again_on_a_new_consumer(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """SIGKILL mid-task: the message stays in the dead consumer's in-flight list until
    the consumer's heartbeat expires, then a new consumer puts it back and runs it."""
    conn.set(queue_name + ":hold", 1)
    send(queue_name, "rel.work", 7)
    killed = consumers.start("-w", "2", *THREAD_FLAGS)
    consumers.wait(lambda: conn.llen(queue_name + ":started") == 1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    conn.delete(queue_name + ":hold")
    assert len(in_flight(conn, queue_name)) == 1
    app = recording_app(queue_name)
    with running_consumer(app, workers=2):
        wait_for(lambda: conn.llen(queue_name + ":done") == 1)
        wait_for(lambda: in_flight(conn, queue_name) == [])
    assert counts(conn, queue_name + ":started") == Counter({7: 2})
    assert counts(conn, queue_name + ":done") == Counter({7: 1})


def test_a_message_killed_between_pop_and_dead_letter_write_is_dead_lettered_once(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """The consumer is killed while its upcaster runs (after the pop, before the dead-letter
    write); a new consumer dead-letters the exact bytes once."""
    conn.set(queue_name + ":hold", 1)
    raw = send(queue_name, "rel.convert", 3)
    killed = consumers.start("-w", "1", *THREAD_FLAGS)
    consumers.wait(lambda: conn.llen(queue_name + ":upcasting") == 1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert in_flight(conn, queue_name) == [raw]
    app = recording_app(queue_name)
    with running_consumer(app, workers=1):
        wait_for(lambda: len(app.dead_letters) == 1)
        wait_for(lambda: in_flight(conn, queue_name) == [])
        time.sleep(3 * INTERVAL)  # a second recovery would dead-letter it again by now
    [entry] = app.dead_letters
    assert (entry.reason, entry.raw) == ("upcast_failed", raw)
    assert conn.llen(queue_name + ":done") == 0


def test_recovery_never_touches_a_live_consumers_in_flight_list(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """A consumer holding a long task stays live: another consumer's recovery passes
    leave its list alone, and the task runs once."""
    conn.set(queue_name + ":hold", 1)
    send(queue_name, "rel.work", 5)
    consumers.start("-w", "1", *THREAD_FLAGS)
    consumers.wait(lambda: conn.llen(queue_name + ":started") == 1)
    app = recording_app(queue_name)
    with running_consumer(app, workers=1) as consumer:
        for _ in range(4):
            time.sleep(INTERVAL)
            assert consumer.keep_in_flight() == 0
        assert len(in_flight(conn, queue_name)) == 1
        assert app.pending_count() == 0
        conn.delete(queue_name + ":hold")
        consumers.wait(lambda: conn.llen(queue_name + ":done") == 1)
        consumers.wait(lambda: in_flight(conn, queue_name) == [])
    assert counts(conn, queue_name + ":started") == Counter({5: 1})


def test_a_killed_worker_process_is_recovered_while_its_consumer_lives(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """Process workers: SIGKILL one worker mid-task; Huey restarts it under the same name,
    and the new worker puts the message back before its first pop."""
    conn.set(queue_name + ":hold", 1)
    send(queue_name, "rel.work", 9)
    consumer = consumers.start(
        "-w", "2", "-k", "process", "-n", "-c", "0.5", "-d", "0.05", "-m", "0.2"
    )
    consumers.wait(lambda: conn.llen(queue_name + ":started") == 1)
    worker_pid = int(conn.lrange(queue_name + ":started", 0, 0)[0].split(b":")[1])
    assert worker_pid != consumer.pid
    os.kill(worker_pid, signal.SIGKILL)
    conn.delete(queue_name + ":hold")
    consumers.wait(lambda: conn.llen(queue_name + ":done") == 1)
    consumers.wait(lambda: in_flight(conn, queue_name) == [])
    assert consumer.poll() is None
    assert counts(conn, queue_name + ":started") == Counter({9: 2})
    assert counts(conn, queue_name + ":done") == Counter({9: 1})


def test_kill_9_mid_drain_of_good_and_bad_messages_loses_nothing(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """A consumer with four thread workers is killed while draining good tasks mixed with
    undecodable ones, and restarted: no good task is lost, no bad message is lost or
    dead-lettered twice, and only tasks running at the kill ran twice."""
    make = producer(queue_name)
    good = 200
    bad = [b"\x00bad %d" % n for n in range(40)]
    for n in range(good):
        make.storage.enqueue(message(make, "rel.work", n))
        if n % 5 == 0:
            make.storage.enqueue(bad[n // 5])
    first = consumers.start("-w", "4", *THREAD_FLAGS)
    consumers.wait(lambda: conn.llen(queue_name + ":done") >= 60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    consumers.start("-w", "4", *THREAD_FLAGS)
    consumers.wait(lambda: len(counts(conn, queue_name + ":done")) == good)
    consumers.wait(lambda: len(make.dead_letters) >= len(bad))
    consumers.wait(lambda: in_flight(conn, queue_name) == [] and make.pending_count() == 0)
    done, started = counts(conn, queue_name + ":done"), counts(conn, queue_name + ":started")
    lost = good - len(done) + len(set(bad) - {entry.raw for entry in make.dead_letters})
    ran_twice = sum(1 for n in started if started[n] > 1)
    print(f"kill -9 mid-drain: lost={lost} ran_twice={ran_twice}")
    assert lost == 0
    assert sorted(entry.raw for entry in make.dead_letters) == sorted(bad)
    assert ran_twice <= 4, "only a task running in one of the four workers may run again"


def test_a_dequeue_outside_a_consumer_pops_as_plain_huey(
    queue_name: str, conn: redis.Redis
) -> None:
    """Nothing would settle what a bare ``huey.dequeue()`` holds: it keeps no in-flight list."""
    app = recording_app(queue_name)
    send(queue_name, "rel.work", 1)
    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"n": 1, "pause": 0.0}
    assert app.pending_count() == 0
    assert in_flight(conn, queue_name) == []
    assert conn.exists(f"huey.inflight.{queue_name}") == 0


def test_a_task_interrupted_by_a_consumer_stopping_goes_back_to_the_queue(
    queue_name: str, conn: redis.Redis, consumers: Consumers
) -> None:
    """SIGTERM interrupts the task in a process worker: Huey gives up on it, reliable
    fetch puts its message back on the queue as the consumer stops."""
    conn.set(queue_name + ":hold", 1)
    raw = send(queue_name, "rel.work", 4)
    consumer = consumers.start("-w", "1", "-k", "process", "-n", "-C", "-d", "0.05")
    consumers.wait(lambda: conn.llen(queue_name + ":started") == 1)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(timeout=20) == 0
    assert conn.lrange(f"huey.redis.{queue_name}", 0, -1) == [raw]
    assert in_flight(conn, queue_name) == []
    assert conn.exists(f"huey.inflight.{queue_name}") == 0
    assert conn.llen(queue_name + ":done") == 0


def test_an_unreadable_revocation_record_dead_letters_the_dequeued_bytes_and_settles_them(
    queue_name: str, conn: redis.Redis
) -> None:
    """Huey reads revocations after the pop: with reliable fetch the task's exact bytes
    are dead-lettered and leave the in-flight list in one transaction."""
    app = recording_app(queue_name)
    [work] = [t for t in app._registry._registry.values() if t._vt_spec.name == "rel.work"]
    app.storage.put_data(app._task_key(work, "rt"), b"\x80\x04junk")
    raw = send(queue_name, "rel.work", 2)
    with running_consumer(app, workers=1):
        wait_for(lambda: len(app.dead_letters) == 1)
        wait_for(lambda: in_flight(conn, queue_name) == [])
    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.raw) == ("undecodable", "rel.work", raw)
    assert "revocation record" in entry.error
    assert conn.llen(queue_name + ":started") == 0


class OldRedis(redis.Redis):  # type: ignore[misc]
    """A client that reports a Redis 6.0 server (no LMOVE, no BLMOVE)."""

    def info(self, section: Any = None, *args: Any, **kwargs: Any) -> Any:
        info = super().info(section, *args, **kwargs)
        return {**info, "redis_version": "6.0.16"}


def test_on_a_redis_older_than_6_2_the_default_falls_back_to_plain_pops(
    queue_name: str, conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = recording_app(queue_name)
    app.storage.conn = OldRedis(connection_pool=app.storage.pool)
    send(queue_name, "rel.work", 1)
    with running_consumer(app, workers=1):
        wait_for(lambda: conn.llen(queue_name + ":done") == 1)
        assert conn.exists(f"huey.inflight.{queue_name}") == 0
    assert "workers pop without reliable fetch" in caplog.text


def test_reliable_true_on_a_redis_older_than_6_2_refuses_to_start(
    queue_name: str, conn: redis.Redis
) -> None:
    app = recording_app(queue_name, reliable=True)
    app.storage.conn = OldRedis(connection_pool=app.storage.pool)
    consumer = app.create_consumer(workers=1)
    with pytest.raises(ConfigurationError, match=re.escape("reliable=True needs Redis 6.2")):
        consumer.start()


def test_deferred_requeued_and_handled_messages_leave_nothing_in_flight(
    queue_name: str, conn: redis.Redis
) -> None:
    """A newer message is handed back to the queue, then deferred to the schedule with
    its exact bytes; a retired one goes to its tombstone handler once."""
    newer = VersionedRedisHuey(queue_name, url=REDIS_URL)

    @newer.versioned_task(version=3, name="rel.convert")
    def convert(n: int, unit: str) -> None: ...

    newer_raw = message(newer, "rel.convert", 8, unit="kg")
    newer.storage.enqueue(newer_raw)
    send(queue_name, "rel.work", 6)
    app = VersionedRedisHuey(queue_name, url=REDIS_URL, fleet_interval=INTERVAL)
    handled: list[int] = []

    @app.versioned_task(version=2, name="rel.convert")
    def convert_v2(n: int, unit: str) -> None: ...

    @app.tombstone("rel.work")
    def work_retired(retired: Any) -> None:
        handled.append(retired.payload["n"])

    with running_consumer(app, workers=2):
        wait_for(lambda: conn.zcard(f"huey.schedule.{queue_name}") == 1 and handled == [6])
        wait_for(lambda: in_flight(conn, queue_name) == [])
    assert conn.zrange(f"huey.schedule.{queue_name}", 0, -1) == [newer_raw]
    assert app.deferral_counts() == {"rel.convert": 1}
    assert handled == [6]
    assert app.pending_count() == 0
    assert len(app.dead_letters) == 0


def test_a_second_consumer_on_the_same_app_object_is_refused_while_the_first_runs(
    queue_name: str, conn: redis.Redis
) -> None:
    """Workers of two consumers would share in-flight list names; a second app object is fine."""
    app = recording_app(queue_name)
    with running_consumer(app, workers=1) as first:
        second = app.create_consumer(workers=1)
        with pytest.raises(ConfigurationError, match=re.escape(f"({first.heartbeat.id})")):
            second.start()
        with running_consumer(recording_app(queue_name), workers=1):
            send(queue_name, "rel.work", 1)
            wait_for(lambda: conn.llen(queue_name + ":done") == 1)
    with running_consumer(app, workers=1):
        send(queue_name, "rel.work", 2)
        wait_for(lambda: conn.llen(queue_name + ":done") == 2)


# -- a dead letter and the next pop in one round trip ---------------------------------


class CountingConnection(redis.Connection):
    """A real connection that counts the round trips made through it."""

    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).round_trips += 1
        super().send_packed_command(command, check_health)


def test_a_flood_of_bad_messages_costs_one_round_trip_each_and_loses_nothing(
    queue_name: str, conn: redis.Redis
) -> None:
    """Without a consumer (plain pops), each dead letter travels with the next pop:
    after the first pop, n bad messages and one good task take n round trips, and
    every bad one is kept with its exact bytes."""
    counting = type("Counting", (CountingConnection,), {})
    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=counting)
    app = recording_app(queue_name, reliable=False, blocking=False)
    app.storage = VersionedRedisHuey(queue_name, connection_pool=pool).storage
    bad = [b"\x00junk %d" % n for n in range(20)]
    good = message(producer(queue_name), "rel.work", 1)
    for raw in [*bad, good]:
        app.storage.enqueue(raw)
    app.dead_letters.add_then_pop  # noqa: B018 - opened before counting
    counting.round_trips = 0
    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"n": 1, "pause": 0.0}
    assert counting.round_trips == 1 + len(bad)
    assert sorted(entry.raw for entry in app.dead_letters) == sorted(bad)
    pool.disconnect()


def test_a_dead_letter_write_that_fails_puts_back_the_message_popped_with_it(
    queue_name: str, conn: redis.Redis
) -> None:
    """The write fails (the store's key holds the wrong type) while the next pop in
    the same round trip succeeds: both messages go back on the queue, the error is
    raised, and once the store works again both are handled."""
    app = recording_app(queue_name, reliable=False)
    junk = b"\x00junk"
    good = message(producer(queue_name), "rel.work", 7)
    app.storage.enqueue(junk)
    app.storage.enqueue(good)
    store_key = f"huey.deadletters.{queue_name}"
    conn.set(store_key, b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        app.dequeue()
    assert sorted(app.storage.enqueued_items()) == sorted([junk, good])
    conn.delete(store_key)
    task = app.dequeue()  # the messages went back in the order they were rescued
    assert task is not None
    assert task.kwargs == {"n": 7, "pause": 0.0}
    assert app.dequeue() is None
    assert [entry.raw for entry in app.dead_letters] == [junk]


def test_a_consumer_whose_dead_letter_write_fails_keeps_both_messages_in_flight(
    queue_name: str, conn: redis.Redis
) -> None:
    """With reliable fetch the failed write and the message moved with it stay in the
    worker's in-flight list, go back to the queue, and are handled once the store
    works again: the bad one dead-lettered once, the good one run once."""
    app = recording_app(queue_name)
    junk = b"\x00junk"
    good = message(producer(queue_name), "rel.work", 3)
    store_key = f"huey.deadletters.{queue_name}"
    conn.set(store_key, b"not a hash")
    for raw in (junk, b"\x00more junk", good):
        app.storage.enqueue(raw)
    with running_consumer(app, workers=1):
        wait_for(
            lambda: (
                conn.llen(queue_name + ":done") == 0
                and len(conn.keys(f"huey.inflight.{queue_name}*")) > 0
            )
        )
        time.sleep(0.3)  # a few failed attempts
        assert conn.get(store_key) == b"not a hash"
        conn.delete(store_key)
        wait_for(lambda: conn.llen(queue_name + ":done") == 1)
        wait_for(lambda: conn.type(store_key) == b"hash" and conn.hlen(store_key) == 2)
        wait_for(lambda: in_flight(conn, queue_name) == [])
    assert sorted(entry.raw for entry in app.dead_letters) == [b"\x00junk", b"\x00more junk"]
    assert counts(conn, queue_name + ":done") == Counter({3: 1})
