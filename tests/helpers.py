"""Helpers shared by the test modules: services, consumers, queues, keys.

Fixtures live in ``conftest.py``; everything a test imports by name lives here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator

from versioned_tasks import VersionedHuey, VersionedSerializer

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

#: Property tests run ``examples(n)`` cases: n by default, n times VT_FUZZ when
#: that is set (``make fuzz`` runs them 50 times longer).
FUZZ = max(1, int(os.environ.get("VT_FUZZ", "1")))


def examples(n: int) -> int:
    """How many cases a property test runs: ``n``, scaled by ``VT_FUZZ``."""
    return n * FUZZ


BACKENDS = ("memory", "sqlite", "redis", "postgres", "file")

#: The tables Huey's PostgresStorage and the dead-letter store use (default prefix).
PG_TABLES = ("huey_task", "huey_schedule", "huey_kv", "huey_counter", "huey_vt_dead_letters")


MakeHuey = Callable[..., VersionedHuey]


def redis_available() -> bool:
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as conn:
            conn.ping()
    except Exception:
        return False
    return True


def require_redis() -> None:
    """Skip without Redis locally; fail under CI, where Redis must be running."""
    if redis_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Redis is not reachable at {REDIS_URL} and CI is set.")
    pytest.skip(f"Redis is not reachable at {REDIS_URL}")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=2) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def require_postgres() -> None:
    """Skip without PostgreSQL locally; fail under CI, where it must be running."""
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN} and CI is set.")
    pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}")


def flush_postgres_name(name: str) -> None:
    """Delete the rows of one test's queue from every table it may have used."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in PG_TABLES:
            # The dead-letter table exists only once some test has used it.
            if conn.execute("select to_regclass(%s)", (table,)).fetchone() != (None,):
                conn.execute(
                    sql.SQL("delete from {} where queue = %s").format(sql.Identifier(table)),
                    (name,),
                )


def flush_redis_name(name: str) -> None:
    """Delete the keys of one test's queue (never the whole shared Redis)."""
    import redis

    with redis.Redis.from_url(REDIS_URL) as conn:
        for key in conn.scan_iter(match=f"*{name}*"):
            conn.delete(key)


def queued(app: VersionedHuey) -> list[bytes]:
    """The exact bytes waiting on the queue, oldest first."""
    return [bytes(raw) for raw in app.storage.enqueued_items()]


# -- a real consumer ------------------------------------------------------------------

CONSUMER_OPTIONS: dict[str, Any] = {
    "workers": 2,
    "worker_type": "thread",
    "periodic": False,
    "initial_delay": 0.02,
    "max_delay": 0.1,
    "backoff": 1.5,
    "scheduler_interval": 1,
    "check_worker_health": False,
}
_SIGNALS = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]


@contextlib.contextmanager
def running_consumer(app: VersionedHuey, **options: Any) -> Iterator[Any]:
    """Start a consumer, and stop it (restoring signal handlers) however the test ends."""
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    consumer = app.create_consumer(**{**CONSUMER_OPTIONS, **options})
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


class Recorder:
    """Thread-safe record of what the workers ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *call: Any) -> None:
        with self._lock:
            self.calls.append(call)

    def __len__(self) -> int:
        with self._lock:
            return len(self.calls)


# -- signing keys -------------------------------------------------------------------------

K1 = b"k1-secret-only-for-the-test-suite-0001"
K2 = b"k2-secret-only-for-the-test-suite-0002"


def signer(*ids: str, signing_key: str | None = None, **options: Any) -> VersionedSerializer:
    """A serializer holding the test keys named by ``ids``."""
    known = {"k1": K1, "k2": K2}
    return VersionedSerializer(
        secret_keys={key_id: known[key_id] for key_id in ids},
        signing_key=signing_key,
        **options,
    )


#: The app whose queue ``_count_queue`` counts, and what it counted.
_COUNTING: dict[str, Any] = {}


def _count_queue(n: int) -> int:
    """A validator that uses the storage: it counts the counting app's queue."""
    _COUNTING["counted"].append(_COUNTING["app"].pending_count())
    return n


#: An int whose validation uses the storage (see ``_count_queue``).
QueueCountingInt = Annotated[int, AfterValidator(_count_queue)]


def pop_with_user_code_using_the_storage(producer: VersionedHuey, worker: VersionedHuey) -> None:
    """Pop, on ``worker``, messages whose read runs user code that uses the storage.

    A SQL storage's pop reads a plain task while it holds the storage's lock;
    validators and upcasters are user code and must run outside it, or one
    that uses the storage (here: counts the queue) waits on the lock its own
    pop holds. Each dequeue runs in a thread given ten seconds.
    """
    counted: list[int] = []
    _COUNTING.update(app=worker, counted=counted)

    @producer.versioned_task(version=1, name="user_code.old")
    def old_v1(n: int) -> None: ...

    @producer.versioned_task(version=1, name="user_code.plain")
    def plain_on_producer(n: int) -> None: ...

    @worker.versioned_task(version=1, name="user_code.validated")
    def validated(n: QueueCountingInt) -> int:
        return n

    @worker.versioned_task(version=2, name="user_code.old")
    def old(n: int, m: int) -> int:
        return n + m

    @worker.upcaster("user_code.old", from_version=1)
    def add_m(payload: dict[str, Any]) -> dict[str, Any]:
        counted.append(worker.pending_count())
        return {**payload, "m": 10}

    @worker.versioned_task(version=1, name="user_code.plain")
    def plain(n: int) -> int:
        return n

    validated(1)  # validated here too, outside any pop
    old_v1(2)
    plain_on_producer(3)
    counted.clear()
    popped: list[Any] = []
    for _ in range(3):
        thread = threading.Thread(target=lambda: popped.append(worker.dequeue()), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "a pop waited on the storage's lock it held"
    assert [(t.name, t.kwargs) for t in popped] == [
        ("user_code.validated", {"n": 1}),
        ("user_code.old", {"n": 2, "m": 10}),
        ("user_code.plain", {"n": 3}),
    ]
    assert counted == [3, 2]  # each read before its own message left the queue
    assert worker.pending_count() == 0
    assert len(worker.dead_letters) == 0


def pop_on_many_storages_concurrently(apps: list[VersionedHuey], messages: int = 600) -> None:
    """Apps on one queue, each with its own connection (as consumer processes
    are), pop it from two threads each at once: every task is popped exactly
    once, and none is left.

    The apps do not share claims, so their pops read the same head and all but
    one lose its delete; those go on reading past it until the queue is empty.
    """
    jobs = []
    for app in apps:

        @app.versioned_task(version=1, name="many.job")
        def job(n: int) -> int:
            return n

        jobs.append(job)
    for n in range(messages):
        jobs[0](n)
    popped: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2 * len(apps))

    def drain(app: VersionedHuey) -> None:
        try:
            start.wait()
            while (task := app.dequeue()) is not None:
                popped.append(task.kwargs["n"])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=drain, args=(app,)) for app in apps for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a pop never returned"
    assert failures == []
    assert len(popped) == messages, f"{len(popped) - len(set(popped))} popped twice"
    assert sorted(popped) == list(range(messages))
    assert apps[0].pending_count() == 0
    assert len(apps[0].dead_letters) == 0
