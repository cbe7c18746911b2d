"""Huey's own test suite, with pickle and with ``VersionedSerializer``.

Runs the unittest suite shipped inside the installed ``huey`` package
(``huey.tests``) twice, each time in a fresh interpreter:

- ``pickle``: as shipped, with Huey's pickle ``Serializer``;
- ``versioned``: with ``versioned_tasks.VersionedSerializer`` put in place of
  ``huey.api.Serializer``, the class ``Huey.__init__`` instantiates when no
  serializer is given, so every Huey the suite builds reads and writes
  envelopes instead of pickle.

It then prints ``N of M tests that pass with pickle pass with
VersionedSerializer``, the ids of the tests that do not with the first line of
their error, the skipped tests of each run grouped by reason, and the wall time
of each run.

Exit status: 0 for M of M, 1 below it, 2 when the suite could not run (Redis or
PostgreSQL unreachable under ``CI``, the suite not importable, a run that did
not finish).

Environment:

- ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) is checked before the
  runs; Huey's Redis tests themselves always connect to localhost:6379, db 0.
- ``HUEY_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/huey_suite``)
  is where Huey's PostgreSQL tests run. They drop Huey's tables when done, so
  the default is a database of its own, created when missing.
- ``HUEY_SLOW_TESTS`` is set to 1 unless already set (``HUEY_SLOW_TESTS=`` runs
  without the slow tests).
- ``CI``: when set, an unreachable Redis or PostgreSQL is an error (exit 2)
  instead of a warning with the tests that need it skipped.

Usage::

    python scripts/huey_suite.py [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

#: Tests left out of the comparison, by id, each with a one-line reason. Only a
#: test inherently about pickle belongs here (one asserting pickle bytes, say),
#: never one that fails because VersionedSerializer lacks a feature.
EXCLUDED: dict[str, str] = {}

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/huey_suite"
#: Seconds one run of the suite may take (about 25 s with the slow tests).
DEFAULT_TIMEOUT = 600.0
SUITE = "huey.tests"
MODES = ("pickle", "versioned")
REASON_WIDTH = 160
LOCK_PATH = Path(tempfile.gettempdir()) / "huey-suite.lock"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


# -- the child: one run of the suite in a fresh interpreter -------------------


def first_line(err: ExcInfo) -> str:
    """``Type: first line of the message``, shortened for one line of output."""
    exc_type, exc, _ = err
    if exc_type is None:
        return "unknown error"
    message = str(exc).strip().splitlines()
    text = f"{exc_type.__name__}: {message[0]}" if message else exc_type.__name__
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."


class RecordingResult(unittest.TestResult):
    """Writes one JSON line per finished test: its id, outcome and reason.

    Outcomes are ``pass`` (expected failures included), ``fail`` (failures,
    errors, failed subtests, unexpected successes) and ``skip``. A ``start``
    line precedes each test so that a run that hangs names the test it hung in.
    """

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self.started: set[str] = set()
        self.pending: dict[str, tuple[str, str]] = {}

    def emit(self, **record: Any) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def settle(self, test: unittest.TestCase, outcome: str, reason: str = "") -> None:
        # The first failure of a test stands (a tearDown error after a failed
        # assertion does not replace the assertion).
        previous = self.pending.get(test.id())
        if previous is None or previous[0] == "pass":
            self.pending[test.id()] = (outcome, reason)

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().startTest(test)
        self.started.add(test.id())
        self.emit(event="start", id=test.id())

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().stopTest(test)
        self.finish(test)

    def finish(self, test: unittest.TestCase) -> None:
        outcome, reason = self.pending.pop(test.id(), ("fail", "no outcome reported"))
        self.emit(event="result", id=test.id(), outcome=outcome, reason=reason)

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self.settle(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        super().addFailure(test, err)
        self.settle(test, "fail", first_line(err))

    def addError(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        super().addError(test, err)
        self.settle(test, "fail", first_line(err))
        if test.id() not in self.started:
            # Errors in setUpClass, tearDownModule, ... come on a stand-in
            # that was never started.
            self.finish(test)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self.settle(test, "skip", reason)
        if test.id() not in self.started:
            # SkipTest raised in setUpClass comes on a stand-in too.
            self.finish(test)

    def addExpectedFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self.settle(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self.settle(test, "fail", "unexpected success")

    def addSubTest(  # noqa: N802
        self,
        test: unittest.TestCase,
        subtest: unittest.TestCase,
        err: ExcInfo | None,
    ) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            which = subtest.id().removeprefix(test.id()).strip()
            self.settle(test, "fail", f"{which} {first_line(err)}")


def run_child(mode: str, out_path: Path) -> int:
    """Run the suite once in this interpreter, writing JSON lines to ``out_path``."""
    import huey
    import huey.api

    from versioned_tasks import VersionedSerializer

    if mode == "versioned":
        # Huey.__init__ calls Serializer(compression, use_zlib=use_zlib) from
        # huey.api's namespace. Patched before the suite is imported: some
        # test modules build a Huey at import time.
        huey.api.Serializer = VersionedSerializer

    with out_path.open("w", encoding="utf-8") as out:
        result = RecordingResult(out)
        try:
            in_use = type(huey.api.MemoryHuey(utc=False).serializer)
            result.emit(
                event="config",
                huey=huey.__version__,
                serializer=f"{in_use.__module__}.{in_use.__qualname__}",
                versioned=issubclass(in_use, VersionedSerializer),
            )
            suite = unittest.defaultTestLoader.loadTestsFromName(SUITE)
        except Exception as exc:
            result.emit(event="load_error", reason=f"{type(exc).__name__}: {exc}")
            return 2
        for error in unittest.defaultTestLoader.errors:
            result.emit(event="load_error", reason=str(error).strip().splitlines()[-1])
        suite.run(result)
        result.emit(event="done", tests_run=result.testsRun)
    return 0


# -- the parent: services, two runs, the comparison ---------------------------


def ci() -> bool:
    return bool(os.environ.get("CI"))


def check_redis(url: str) -> str | None:
    """None when Redis answers at ``url``, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis is not reachable at {url}: {type(exc).__name__}: {exc}"
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or (parts.port or 6379) != 6379:
        print(f"note: Huey's Redis tests connect to localhost:6379, not {url}")
    return None


def ensure_postgres(dsn: str) -> str | None:
    """Create the database ``dsn`` names when missing; None when it answers."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        return None
    except psycopg.Error as exc:
        first_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    parts = urlsplit(dsn)
    database = parts.path.lstrip("/")
    if parts.scheme not in ("postgres", "postgresql") or not database:
        return f"PostgreSQL is not reachable at {dsn}: {first_error}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
                print(f"created PostgreSQL database {database!r}")
        psycopg.connect(dsn, connect_timeout=2).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return f"PostgreSQL is not reachable at {dsn}: {reason}"
    return None


@dataclass
class Run:
    """What one run of the suite reported."""

    mode: str
    seconds: float = 0.0
    huey_version: str = "?"
    serializer: str = "?"
    versioned: bool = False
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    load_errors: list[str] = field(default_factory=list)
    finished: bool = False
    running: str | None = None
    problem: str = ""
    log_tail: str = ""

    def ids(self, outcome: str) -> list[str]:
        return sorted(i for i, (o, _) in self.outcomes.items() if o == outcome)

    def read(self, path: Path) -> None:
        """Take in the JSON lines the child wrote (possibly cut short)."""
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            event = record.pop("event")
            if event == "config":
                self.huey_version = record["huey"]
                self.serializer = record["serializer"]
                self.versioned = record["versioned"]
            elif event == "start":
                self.running = record["id"]
            elif event == "result":
                self.outcomes[record["id"]] = (record["outcome"], record["reason"])
                self.running = None
            elif event == "load_error":
                self.load_errors.append(record["reason"])
            elif event == "done":
                self.finished = True

    def cut_short(self, problem: str, reason: str) -> None:
        """The run did not finish: the test it was in fails with ``reason``."""
        self.problem = problem
        if self.running is not None:
            self.problem += f" (in {self.running})"
            self.outcomes[self.running] = ("fail", reason)


def run_suite(mode: str, workdir: Path, env: dict[str, str], timeout: float) -> Run:
    """Run the suite in a fresh interpreter and read back its JSON lines."""
    run = Run(mode)
    out_path = workdir / f"{mode}.jsonl"
    log_path = workdir / f"{mode}.log"
    # Huey's tests leave SQLite files in the working directory.
    cwd = workdir / mode
    cwd.mkdir()
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(out_path)]
    started = time.monotonic()
    with log_path.open("wb") as log:
        # A session of its own, so that a run cut short takes the consumer
        # processes its tests forked down with it.
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=log, start_new_session=True
        )
        try:
            code: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    run.seconds = time.monotonic() - started
    run.read(out_path)
    if code is None:
        run.cut_short(
            f"did not finish within {timeout:.0f} s",
            f"still running after {timeout:.0f} s",
        )
    elif not run.finished:
        run.cut_short(
            f"the interpreter exited with status {code} before the suite finished",
            f"the interpreter exited with status {code} in this test",
        )
    if mode == "versioned" and run.outcomes and not run.versioned:
        run.load_errors.append(f"the suite ran with {run.serializer}, not VersionedSerializer")
    if run.problem or run.load_errors:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        run.log_tail = "\n".join("    " + line for line in lines[-30:])
    return run


def print_runs(runs: list[Run]) -> None:
    """Counts, wall time, serializer and skip reasons of each run."""
    for run in runs:
        passed, failed, skipped = (len(run.ids(o)) for o in ("pass", "fail", "skip"))
        print(
            f"{run.mode:<9}  {len(run.outcomes)} tests: {passed} passed, {failed} failed, "
            f"{skipped} skipped in {run.seconds:.1f} s, serializer {run.serializer}"
        )
    for run in runs:
        reasons = Counter(run.outcomes[i][1] for i in run.ids("skip"))
        print(f"skipped with {run.mode}: {sum(reasons.values())}")
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {count:4d}  {reason}")


def print_problems(runs: list[Run]) -> bool:
    """Print load errors and unfinished runs; True when there were any."""
    found = False
    for run in runs:
        for reason in run.load_errors:
            print(f"{run.mode}: the suite could not be loaded: {reason}")
        if run.problem:
            print(f"{run.mode}: {run.problem}")
        if run.log_tail:
            print(f"  last lines of its output:\n{run.log_tail}")
        found = found or bool(run.problem or run.load_errors)
    return found


def compare(pickle_run: Run, versioned_run: Run) -> tuple[list[str], list[tuple[str, str]]]:
    """The tests passing with pickle (less EXCLUDED), and those of them that
    do not pass with VersionedSerializer, each with why."""
    baseline = [i for i in pickle_run.ids("pass") if i not in EXCLUDED]
    missing: list[tuple[str, str]] = []
    for test_id in baseline:
        outcome, reason = versioned_run.outcomes.get(test_id, ("fail", "did not run"))
        if outcome == "skip":
            missing.append((test_id, f"skipped: {reason}"))
        elif outcome != "pass":
            missing.append((test_id, reason))
    return baseline, missing


def report(pickle_run: Run, versioned_run: Run) -> int:
    """Print the comparison; the exit status."""
    runs = [pickle_run, versioned_run]
    print(f"huey {pickle_run.huey_version}")
    print_runs(runs)
    problems = print_problems(runs)

    known = set(pickle_run.outcomes) | set(versioned_run.outcomes)
    for test_id, reason in sorted(EXCLUDED.items()):
        stale = "" if test_id in known else " (no such test in this run)"
        print(f"excluded: {test_id}: {reason}{stale}")
    pickle_failures = pickle_run.ids("fail")
    if pickle_failures:
        print(f"failing with pickle too, so not counted: {len(pickle_failures)}")
        for test_id in pickle_failures:
            print(f"  {test_id}: {pickle_run.outcomes[test_id][1]}")

    baseline, missing = compare(pickle_run, versioned_run)
    print(
        f"\n{len(baseline) - len(missing)} of {len(baseline)} tests that pass with pickle "
        "pass with VersionedSerializer"
    )
    for test_id, reason in missing:
        print(f"  {test_id}: {reason}")
    could_not_run = pickle_run.problem or any(run.load_errors for run in runs)
    if could_not_run or not baseline:
        return 2
    return 1 if missing or problems else 0


@contextlib.contextmanager
def one_at_a_time() -> Iterator[None]:
    """Hold a machine-wide lock: two runs at once would share Huey's fixed
    SQLite paths under /tmp, its Redis keys and its PostgreSQL tables."""
    with LOCK_PATH.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run of Huey's suite ({LOCK_PATH}) ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_parent(timeout: float) -> int:
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    pg_dsn = os.environ.get("HUEY_PG_DSN", DEFAULT_PG_DSN)
    env = dict(os.environ)
    env["HUEY_PG_DSN"] = pg_dsn
    env.setdefault("HUEY_SLOW_TESTS", "1")
    env["PYTHONUNBUFFERED"] = "1"

    problems = [p for p in (check_redis(redis_url), ensure_postgres(pg_dsn)) if p]
    for problem in problems:
        print(("error: " if ci() else "warning: ") + problem)
    if problems and ci():
        print("CI is set: Redis and PostgreSQL must be running for Huey's suite.")
        return 2
    slow = "with" if env["HUEY_SLOW_TESTS"] else "without"
    print(f"Huey's suite ({SUITE}) {slow} the slow tests; PostgreSQL at {pg_dsn}")

    runs = []
    with one_at_a_time(), tempfile.TemporaryDirectory(prefix="huey-suite-") as tmp:
        for mode in MODES:
            print(f"running it with {mode} ...", flush=True)
            runs.append(run_suite(mode, Path(tmp), env, timeout))
    return report(*runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run Huey's own test suite with pickle and with VersionedSerializer."
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds one run may take (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, out = args.child
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
        return run_child(mode, Path(out))
    return run_parent(args.timeout)


if __name__ == "__main__":
    sys.exit(main())
