"""What observability costs per message: before and after, in the same run.

The message is the serializer benchmark's ``send_invoice(1042, "billing@...",
lines=[...])`` at its current version, and a v1 message upcast to v2. Two round
trips are timed, each as the mean over ``--iterations`` messages:

- ``serializer``: ``huey.serialize_task`` then ``huey.deserialize_task`` (the
  serializer benchmark's round trip);
- ``worker``: ``serialize_task``, the storage's enqueue, ``huey.dequeue()`` (the
  worker's read path, through the dispatcher) and ``huey.execute()`` of a task
  that does nothing, on a MemoryStorage with results off.

"before" runs the same code against another tree of the library (``--base``, a
git revision: by default where this branch left ``main``, ``git merge-base HEAD
main``), unpacked with ``git archive`` into a temporary
directory); "after" against this tree, with nothing configured, with Prometheus
on (``contrib.prometheus.instrument`` into a fresh registry), and with
OpenTelemetry on (``contrib.otel.instrument``, no span current at enqueue, so the
worker span is a root and nothing is carried). Each tree runs in its own
interpreter, the interpreters alternate ``--rounds`` times, and each case reports
its best (lowest) mean; ratios are best against best.

    python benchmarks/observability.py [--base main] [--iterations N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INVOICE_ID = 1042
EMAIL = "billing@example.com"
LINES = [101, 102, 103, 104, 105]


# -- the child: one tree, one interpreter ------------------------------------------


def build(name: str, *, upcast: bool) -> tuple[Any, Any, Any]:
    """(producer, worker, the task's call): MemoryStorage shared, results off."""
    from versioned_tasks import VersionedMemoryHuey

    producer = VersionedMemoryHuey(name, results=False)
    worker = VersionedMemoryHuey(name, results=False)
    worker.storage = producer.storage

    @producer.versioned_task(version=1, name="billing.send_invoice")
    def sent(invoice_id: int, email: str, lines: list[int], currency: str = "EUR") -> None: ...

    version = 2 if upcast else 1

    @worker.versioned_task(version=version, name="billing.send_invoice")
    def send_invoice(
        invoice_id: int, email: str, lines: list[int], currency: str = "EUR"
    ) -> None: ...

    if upcast:

        @worker.upcaster("billing.send_invoice", from_version=1)
        def same(payload: dict[str, Any]) -> dict[str, Any]:
            return payload

    worker.check_schemas()
    return producer, worker, sent.s(INVOICE_ID, EMAIL, lines=LINES)


def serializer_round_trip(producer: Any, worker: Any, task: Any) -> Callable[[], None]:
    def once() -> None:
        worker.deserialize_task(producer.serialize_task(task))

    return once


def worker_round_trip(producer: Any, worker: Any, task: Any) -> Callable[[], None]:
    storage = producer.storage

    def once() -> None:
        storage.enqueue(producer.serialize_task(task))
        worker.execute(worker.dequeue())

    return once


TRIPS = (("serializer", serializer_round_trip), ("worker", worker_round_trip))


def configure(setting: str, producer: Any, worker: Any) -> None:
    if setting == "prometheus":
        from prometheus_client import CollectorRegistry

        from versioned_tasks.contrib.prometheus import instrument

        instrument(worker, registry=CollectorRegistry())
    elif setting == "otel":
        from opentelemetry.sdk.trace import TracerProvider

        from versioned_tasks.contrib.otel import instrument as trace

        provider = TracerProvider()  # no processor: spans are made, then dropped
        trace(producer, tracer_provider=provider)
        trace(worker, tracer_provider=provider)


def measure(once: Callable[[], None], iterations: int, repeat: int) -> float:
    """Best mean seconds per call over ``repeat`` timings of ``iterations`` calls."""
    for _ in range(min(iterations, 2000)):
        once()  # warm up
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(iterations):
                once()
            best = min(best, (time.perf_counter() - start) / iterations)
    finally:
        gc.enable()
    return best


def child(settings: list[str], iterations: int, repeat: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for setting in settings:
        for upcast in (False, True):
            producer, worker, task = build(f"bench-{setting}-{upcast}", upcast=upcast)
            configure(setting, producer, worker)
            kind = "upcast" if upcast else "current"
            for trip, make in TRIPS:
                key = f"{trip}/{kind}/{setting}"
                results[key] = measure(make(producer, worker, task), iterations, repeat)
    return results


# -- the parent: both trees, alternating ------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True)
    return done.stdout.decode().strip()


def unpack(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "versioned_tasks"],
        check=True,
        capture_output=True,
    ).stdout
    path = into / "tree.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    return into


def run_child(tree: Path, settings: list[str], iterations: int, repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            ",".join(settings),
            "--iterations",
            str(iterations),
            "--repeat",
            str(repeat),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    parsed: dict[str, float] = json.loads(out)
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision of 'before' (merge-base of HEAD and main)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child.split(","), args.iterations, args.repeat)))
        return

    if args.base is None:
        args.base = git("merge-base", "HEAD", "main")
    args.base = git("rev-parse", "--short", args.base)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = unpack(args.base, Path(tmp))
        runs = [
            (base, ["none"], "before"),
            (ROOT, ["none", "prometheus", "otel"], "after"),
        ]
        for _ in range(args.rounds):
            for tree, settings, label in runs:
                timings = run_child(tree, settings, args.iterations, args.repeat)
                for key, seconds in timings.items():
                    name = f"{key}/{label}"
                    best[name] = min(best.get(name, float("inf")), seconds)
    if args.json:
        print(json.dumps(best, indent=2, sort_keys=True))
        return
    report(best, args)


def report(best: dict[str, float], args: argparse.Namespace) -> None:
    print(
        f"Python {sys.version.split()[0]}; {args.iterations} messages x {args.repeat} "
        f"timings x {args.rounds} rounds; base {args.base!r}; best mean per message."
    )
    header = (
        f"{'round trip':<22}{'before':>9}{'after':>9}{'ratio':>7}"
        f"{'+prometheus':>13}{'added':>9}{'+otel':>9}{'added':>9}"
    )
    print(header)
    for trip in ("serializer", "worker"):
        for kind in ("current", "upcast"):
            before = best[f"{trip}/{kind}/none/before"]
            after = best[f"{trip}/{kind}/none/after"]
            prom = best[f"{trip}/{kind}/prometheus/after"]
            otel = best[f"{trip}/{kind}/otel/after"]
            print(
                f"{trip + ' ' + kind:<22}{before * 1e6:>7.2f}us{after * 1e6:>7.2f}us"
                f"{after / before:>7.3f}{prom * 1e6:>11.2f}us{(prom - after) * 1e6:>+7.2f}us"
                f"{otel * 1e6:>7.2f}us{(otel - after) * 1e6:>+7.2f}us"
            )


if __name__ == "__main__":
    main()
