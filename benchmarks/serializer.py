"""Round trip of one typical task message: Huey's pickle against versioned envelopes.

The message is ``send_invoice(invoice_id: int, email: str, lines: list[int],
currency: str = "EUR")`` called as ``send_invoice.s(1042, "billing@example.com",
lines=[...])``. For each case the enqueue side (``huey.serialize_task``) and
the worker side (``huey.deserialize_task``) are timed together, and apart:

- ``pickle``: a plain ``MemoryHuey`` with Huey's default pickle serializer;
- ``current``: a ``VersionedMemoryHuey`` at the task's current version (the
  producer validates, the worker runs the read pipeline and validates again);
- ``upcast-1``: a message written by an app at v1, read by an app at v2;
- ``upcast-5``: a message written by an app at v1, read by an app at v6;
- ``signed``: the ``current`` case with signed envelopes (HMAC-SHA256): the
  producer signs, the worker checks the signature before anything else;
- ``signed-old-key``: the same, read by a worker that signs with a newer key
  and still lists the one the message was signed with (key rotation).

Each timing is the mean over ``--iterations`` calls; ``--repeat`` timings are
taken with the cases interleaved and the garbage collector off, and the best
one is reported (the median beside it). Ratios are best against best.

    python benchmarks/serializer.py [--iterations N] [--repeat R] [--json] [--profile]

``--profile`` adds a per-stage breakdown and a cProfile listing of the
``current`` case; it reaches into the library's private modules and may need
updating when they change.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pickle
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from typing import Any

import orjson
from huey import MemoryHuey

from versioned_tasks import VersionedMemoryHuey, VersionedSerializer

INVOICE_ID = 1042
EMAIL = "billing@example.com"
LINES = [101, 102, 103, 104, 105]
EXPECTED = {"invoice_id": INVOICE_ID, "email": EMAIL, "lines": LINES, "currency": "EUR"}

#: Case key -> (target ratio, stretch target ratio) against pickle, as set in the issue.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "pickle": (None, None),
    "current": (1.0, 0.85),
    "upcast-1": (1.25, None),
    "upcast-5": (1.5, None),
    "signed": (None, None),
    "signed-old-key": (None, None),
}
LABELS = {
    "pickle": "(a) Huey pickle (MemoryHuey)",
    "current": "(b) versioned, current version",
    "upcast-1": "(c) versioned, 1-step upcast v1->v2",
    "upcast-5": "(d) versioned, 5-step upcast v1->v6",
    "signed": "(e) versioned, current version, signed",
    "signed-old-key": "(f) signed with the previous key",
}

#: Secrets of the signed cases (32 bytes or more, as the serializer requires).
OLD_SECRET = b"benchmark-secret-k1-0123456789abcdef"
NEW_SECRET = b"benchmark-secret-k2-0123456789abcdef"


@dataclass
class Case:
    """One way of writing the message on a producer and reading it in a worker."""

    key: str
    serialize: Callable[[], bytes]
    deserialize: Callable[[bytes], Any]
    check: Callable[[Any], bool]
    worker: Any = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return self.serialize()


# -- the cases ----------------------------------------------------------------


def pickle_case() -> Case:
    huey = MemoryHuey("bench-pickle")

    @huey.task()  # type: ignore[untyped-decorator]
    def send_invoice(
        invoice_id: int, email: str, lines: list[int], currency: str = "EUR"
    ) -> None: ...

    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    return Case(
        "pickle",
        lambda: huey.serialize_task(task),
        huey.deserialize_task,
        lambda t: t.args == (INVOICE_ID, EMAIL) and t.kwargs == {"lines": LINES},
    )


def versioned_case(key: str, producer: VersionedMemoryHuey, task: Any, worker: Any) -> Case:
    worker.check_schemas()
    return Case(
        key,
        lambda: producer.serialize_task(task),
        worker.deserialize_task,
        lambda t: t.args == () and t.kwargs == EXPECTED,
        worker,
    )


def today_app(
    name: str, version: int, serializer: VersionedSerializer | None = None
) -> tuple[VersionedMemoryHuey, Any]:
    """The app as deployed today: ``send_invoice`` at ``version``, four fields."""
    huey = VersionedMemoryHuey(name, serializer=serializer)

    @huey.versioned_task(version=version, name="billing.send_invoice")
    def send_invoice(
        invoice_id: int, email: str, lines: list[int], currency: str = "EUR"
    ) -> None: ...

    return huey, send_invoice


def current_case() -> Case:
    huey, send_invoice = today_app("bench-current", 1)
    return versioned_case("current", huey, send_invoice.s(INVOICE_ID, EMAIL, lines=LINES), huey)


def signed_case() -> Case:
    serializer = VersionedSerializer(secret_keys={"k1": OLD_SECRET})
    huey, send_invoice = today_app("bench-signed", 1, serializer)
    return versioned_case("signed", huey, send_invoice.s(INVOICE_ID, EMAIL, lines=LINES), huey)


def signed_old_key_case() -> Case:
    old, send_invoice = today_app(
        "bench-signed-old", 1, VersionedSerializer(secret_keys={"k1": OLD_SECRET})
    )
    rotated = VersionedSerializer(
        secret_keys={"k2": NEW_SECRET, "k1": OLD_SECRET}, signing_key="k2"
    )
    new, _ = today_app("bench-signed-old", 1, rotated)
    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    return versioned_case("signed-old-key", old, task, new)


def upcast_1_case() -> Case:
    old = VersionedMemoryHuey("bench-upcast-1")

    @old.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int, email: str, lines: list[int]) -> None: ...

    new, _ = today_app("bench-upcast-1", 2)

    @new.upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    return versioned_case("upcast-1", old, task, new)


def upcast_5_case() -> Case:
    old = VersionedMemoryHuey("bench-upcast-5")

    @old.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice: int, to: str, line_ids: str, copy: bool = False) -> None: ...

    new, _ = today_app("bench-upcast-5", 6)
    add_history(new)
    task = send_invoice.s(INVOICE_ID, EMAIL, line_ids=",".join(map(str, LINES)))
    return versioned_case("upcast-5", old, task, new)


def add_history(huey: VersionedMemoryHuey) -> None:
    """Five steps from ``(invoice, to, line_ids: "1,2", copy)`` to today's four fields."""
    upcaster = huey.upcaster

    @upcaster("billing.send_invoice", from_version=1)
    def rename_invoice(p: dict[str, Any]) -> dict[str, Any]:
        p = dict(p)
        p["invoice_id"] = p.pop("invoice")
        return p

    @upcaster("billing.send_invoice", from_version=2)
    def rename_to(p: dict[str, Any]) -> dict[str, Any]:
        p = dict(p)
        p["email"] = p.pop("to")
        return p

    @upcaster("billing.send_invoice", from_version=3)
    def split_lines(p: dict[str, Any]) -> dict[str, Any]:
        p = dict(p)
        ids = p.pop("line_ids")
        p["lines"] = [int(i) for i in ids.split(",")] if ids else []
        return p

    @upcaster("billing.send_invoice", from_version=4)
    def add_currency(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "currency": "EUR"}

    @upcaster("billing.send_invoice", from_version=5)
    def drop_copy(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k != "copy"}


def build_cases() -> list[Case]:
    cases = [
        pickle_case(),
        current_case(),
        upcast_1_case(),
        upcast_5_case(),
        signed_case(),
        signed_old_key_case(),
    ]
    for case in cases:
        task = case.deserialize(case.data)
        if not case.check(task):
            raise SystemExit(f"{case.key}: unexpected round trip {task.args!r} {task.kwargs!r}")
    return cases


# -- timing -------------------------------------------------------------------


def loops(case: Case, n: int) -> dict[str, Callable[[], int]]:
    """Timed loops for one case; each returns nanoseconds for ``n`` calls."""
    serialize, deserialize, data = case.serialize, case.deserialize, case.data
    counter = time.perf_counter_ns
    rounds = range(n)

    def round_trip() -> int:
        start = counter()
        for _ in rounds:
            deserialize(serialize())
        return counter() - start

    def enqueue() -> int:
        start = counter()
        for _ in rounds:
            serialize()
        return counter() - start

    def worker() -> int:
        start = counter()
        for _ in rounds:
            deserialize(data)
        return counter() - start

    return {"round_trip": round_trip, "enqueue": enqueue, "worker": worker}


def measure(cases: list[Case], iterations: int, repeat: int) -> None:
    """Fill each case's samples (µs per call), cases interleaved per repeat."""
    timed = {case.key: loops(case, iterations) for case in cases}
    warm = {case.key: loops(case, max(200, iterations // 5)) for case in cases}
    for case in cases:
        case.samples = {kind: [] for kind in timed[case.key]}
        for run in warm[case.key].values():
            run()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for case in cases:
                for kind, run in timed[case.key].items():
                    case.samples[kind].append(run() / iterations / 1000)
    finally:
        if enabled:
            gc.enable()


# -- reporting ----------------------------------------------------------------


def verdict(ratio: float, key: str) -> str:
    target, stretch = TARGETS[key]
    if target is None:
        return "baseline" if key == "pickle" else "-"
    if ratio > target:
        return "FAIL"
    if stretch is not None and ratio <= stretch:
        return "pass (stretch too)"
    return "pass" if stretch is None else "pass (stretch missed)"


def target_text(key: str) -> str:
    target, stretch = TARGETS[key]
    if target is None:
        return "-"
    text = f"<= {target:.2f}x"
    return text + f" (stretch <= {stretch:.2f}x)" if stretch is not None else text


def results(cases: list[Case]) -> list[dict[str, Any]]:
    base_samples = cases[0].samples["round_trip"]
    base, base_median = min(base_samples), statistics.median(base_samples)
    rows = []
    for case in cases:
        rt = case.samples["round_trip"]
        ratio = min(rt) / base
        # Each repeat's time over pickle's in the same repeat: robust to drift.
        paired = statistics.median(t / b for t, b in zip(rt, base_samples, strict=True))
        rows.append(
            {
                "case": case.key,
                "label": LABELS[case.key],
                "round_trip_us": round(min(rt), 3),
                "round_trip_median_us": round(statistics.median(rt), 3),
                "enqueue_us": round(min(case.samples["enqueue"]), 3),
                "worker_us": round(min(case.samples["worker"]), 3),
                "bytes": len(case.data),
                "ratio": round(ratio, 3),
                "ratio_median": round(statistics.median(rt) / base_median, 3),
                "ratio_paired_median": round(paired, 3),
                "target": TARGETS[case.key][0],
                "stretch": TARGETS[case.key][1],
                "verdict": verdict(ratio, case.key),
            }
        )
    return rows


def signing_overhead(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The signed case against the unsigned one, from the same run."""
    by_case = {row["case"]: row for row in rows}
    signed, plain = by_case.get("signed"), by_case.get("current")
    if signed is None or plain is None:
        return None
    return {
        "round_trip_ratio": round(signed["round_trip_us"] / plain["round_trip_us"], 3),
        "enqueue_extra_us": round(signed["enqueue_us"] - plain["enqueue_us"], 3),
        "worker_extra_us": round(signed["worker_us"] - plain["worker_us"], 3),
        "extra_bytes": signed["bytes"] - plain["bytes"],
    }


def environment(iterations: int, repeat: int) -> dict[str, Any]:
    packages = ("huey", "pydantic", "pydantic-core", "orjson", "versioned-tasks")
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "packages": {name: dist_version(name) for name in packages},
        "pickle_protocol": pickle.HIGHEST_PROTOCOL,
        "iterations": iterations,
        "repeat": repeat,
    }


def print_table(rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="send_invoice round trip: serialize_task + deserialize_task",
        caption=(
            f"best of {env['repeat']} x {env['iterations']} calls, gc off; "
            f"ratio = best round trip / best pickle round trip"
        ),
    )
    for name in ("case", "round trip µs", "median µs", "enqueue µs", "worker µs", "bytes"):
        table.add_column(name, justify="left" if name == "case" else "right")
    for name in ("ratio", "target", "result"):
        table.add_column(name, justify="right" if name == "ratio" else "left")
    for row in rows:
        table.add_row(
            row["label"],
            f"{row['round_trip_us']:.2f}",
            f"{row['round_trip_median_us']:.2f}",
            f"{row['enqueue_us']:.2f}",
            f"{row['worker_us']:.2f}",
            str(row["bytes"]),
            f"{row['ratio']:.2f}x",
            target_text(row["case"]),
            row["verdict"],
        )
    console = Console(width=160)
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    console.print(f"Python {env['python']} ({env['machine']}); {versions}")
    console.print(table)
    overhead = signing_overhead(rows)
    if overhead is not None:
        console.print(
            f"signing: (e) / (b) round trip = {overhead['round_trip_ratio']:.2f}x "
            f"(enqueue +{overhead['enqueue_extra_us']:.2f} µs, worker "
            f"+{overhead['worker_extra_us']:.2f} µs, +{overhead['extra_bytes']} bytes)"
        )
    spread = max(row["round_trip_median_us"] / row["round_trip_us"] for row in rows)
    if spread > 1.25:
        console.print(
            f"note: medians run up to {spread:.2f}x the best timings: the machine was busy; "
            f"the best timings (and their ratios) are the ones to compare."
        )


# -- profile of the current-version case ----------------------------------------

Stage = tuple[str, Callable[[], Callable[[], Any]]]


def current_stages() -> list[Stage]:
    """Each step of the current-version round trip on its own.

    These reach into private modules; a step whose names moved shows as n/a.
    """
    from versioned_tasks.messages import readwrite as _pipeline
    from versioned_tasks.wire import envelope as _envelope

    huey, send_invoice = today_app("bench-profile", 1)
    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    spec = send_invoice.spec
    data = huey.serialize_task(task)
    header, body = _envelope.unpack(data)
    head = data[4 : data.index(b"\n")]
    value = spec.validator.validate_json(body)
    dumps, loads = orjson.dumps, orjson.loads
    payload = spec.bind(task.args, task.kwargs)
    as_dict = {"kind": "task", "task": spec.name, "v": spec.version, "id": task.id}

    def header_dict() -> Callable[[], Any]:
        producer = _pipeline.PRODUCER
        return lambda: dumps({**as_dict, "at": time.time(), "by": producer})

    def build_task() -> Callable[[], Any]:
        build = _pipeline._build_task
        return lambda: build(spec.task_class, (), value, header, {})

    return [
        ("enqueue: serialize_task (whole)", lambda: lambda: huey.serialize_task(task)),
        ("  spec.dump (bind+validate+to_json)", lambda: lambda: spec.dump(task.args, task.kwargs)),
        ("    spec.bind (name args, defaults)", lambda: lambda: spec.bind(task.args, task.kwargs)),
        ("    validator.validate_python", lambda: lambda: spec.validator.validate_python(payload)),
        ("    serializer.to_json", lambda: lambda: spec.serializer.to_json(value)),
        ("  time.time()", lambda: time.time),
        ("  (ref) header as dict + orjson.dumps", header_dict),
        ("  _envelope.frame(header, body)", lambda: lambda: _envelope.frame(head, body)),
        ("worker: deserialize_task (whole)", lambda: lambda: huey.deserialize_task(data)),
        ("  Reader.read (whole)", lambda: lambda: huey._reader.read(data)),
        ("  _envelope.unpack", lambda: lambda: _envelope.unpack(data)),
        ("    orjson.loads(header)", lambda: lambda: loads(head)),
        ("  validator.validate_json(body)", lambda: lambda: spec.validator.validate_json(body)),
        ("  _build_task (general path)", build_task),
        ("  task_class(args, kwargs, id) alone", lambda: lambda: spec.task_class((), value, "x")),
    ]


def signed_stages() -> list[Stage]:
    """The signing and checking steps of the signed case, on their own."""
    serializer = VersionedSerializer(secret_keys={"k1": OLD_SECRET})
    huey, send_invoice = today_app("bench-profile-signed", 1, serializer)
    data = huey.serialize_task(send_invoice.s(INVOICE_ID, EMAIL, lines=LINES))
    envelope = data[data.index(b"VTE1") :]
    head, body = envelope[4:].split(b"\n", 1)
    plain = VersionedSerializer()
    return [
        ("signed: serializer.frame (frame + sign)", lambda: lambda: serializer.frame(head, body)),
        ("  (ref) unsigned serializer.frame", lambda: lambda: plain.frame(head, body)),
        ("signed: serializer.unpack (check + unpack)", lambda: lambda: serializer.unpack(data)),
        ("  (ref) unsigned serializer.unpack", lambda: lambda: plain.unpack(envelope)),
    ]


def upcast_stages() -> list[Stage]:
    """The worker side of the 1-step upcast case, step by step."""
    from versioned_tasks.wire import envelope as _envelope

    case = upcast_1_case()
    data = case.data
    _, body = _envelope.unpack(data)
    dumps, loads = orjson.dumps, orjson.loads
    raw = loads(body)
    upcasted = {**raw, "currency": "EUR"}
    validator = case.worker.schema.specs["billing.send_invoice"].validator
    again = dumps(upcasted)
    return [
        ("upcast-1 worker: deserialize_task (whole)", lambda: lambda: case.deserialize(data)),
        ("  orjson.loads(body)", lambda: lambda: loads(body)),
        ("  the upcaster ({**p, currency})", lambda: lambda: {**raw, "currency": "EUR"}),
        ("  orjson.dumps(upcast payload)", lambda: lambda: dumps(upcasted)),
        ("  validator.validate_json(dumped)", lambda: lambda: validator.validate_json(again)),
        ("  (alt) validator.validate_python", lambda: lambda: validator.validate_python(upcasted)),
    ]


def pickle_stages() -> list[Stage]:
    """The same steps on Huey's own pickle path."""
    huey = MemoryHuey("bench-profile-pickle")

    @huey.task()  # type: ignore[untyped-decorator]
    def send_invoice(
        invoice_id: int, email: str, lines: list[int], currency: str = "EUR"
    ) -> None: ...

    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    registry, serializer = huey._registry, huey.serializer
    message = registry.create_message(task)
    data = serializer.serialize(message)
    return [
        ("pickle: serialize_task (whole)", lambda: lambda: huey.serialize_task(task)),
        ("  registry.create_message", lambda: lambda: registry.create_message(task)),
        ("  serializer.serialize (pickle.dumps)", lambda: lambda: serializer.serialize(message)),
        ("pickle: deserialize_task (whole)", lambda: lambda: huey.deserialize_task(data)),
        ("  serializer.deserialize (pickle.loads)", lambda: lambda: serializer.deserialize(data)),
        ("  registry.create_task", lambda: lambda: registry.create_task(message)),
    ]


def runnable(stages: list[Stage]) -> list[tuple[str, Callable[[], Any] | str]]:
    """Build each stage and call it once; a stage that fails is kept as its error."""
    out: list[tuple[str, Callable[[], Any] | str]] = []
    for name, make in stages:
        try:
            run = make()
            run()
        except Exception as exc:  # private names move; the table stays valid
            out.append((name, f"n/a ({type(exc).__name__}: {exc})"))
        else:
            out.append((name, run))
    return out


def best_us(
    stages: list[tuple[str, Callable[[], Any] | str]], iterations: int, repeat: int
) -> list[float | str]:
    """Best µs per call of each stage, the stages interleaved per repeat, gc off."""
    counter = time.perf_counter_ns
    rounds = range(iterations)
    runs = [run for _, run in stages if callable(run)]
    for run in runs:
        for _ in range(max(200, iterations // 5)):
            run()
    best = [float("inf")] * len(runs)
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for i, run in enumerate(runs):
                start = counter()
                for _ in rounds:
                    run()
                best[i] = min(best[i], (counter() - start) / iterations / 1000)
    finally:
        gc.enable()
    timings = iter(best)
    return [next(timings) if callable(run) else run for _, run in stages]


def cprofile_listing(calls: int, limit: int = 25) -> str:
    huey, send_invoice = today_app("bench-cprofile", 1)
    task = send_invoice.s(INVOICE_ID, EMAIL, lines=LINES)
    serialize, deserialize = huey.serialize_task, huey.deserialize_task
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        deserialize(serialize(task))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def print_profile(iterations: int, repeat: int) -> None:
    print("\nStage breakdown (µs per call, best of repeats, stages interleaved):")
    try:
        stages = runnable(current_stages() + signed_stages() + upcast_stages() + pickle_stages())
    except Exception as exc:  # private names move; the table above stays valid
        print(f"  unavailable: {type(exc).__name__}: {exc}")
    else:
        for (name, _), us in zip(stages, best_us(stages, iterations, repeat), strict=True):
            print(f"  {name:<44} {us:8.2f}" if isinstance(us, float) else f"  {name:<44} {us}")
    calls = max(iterations, 20_000)
    print(f"\ncProfile of {calls} round trips, current-version case (by own time):")
    print(cprofile_listing(calls))


# -- command line ---------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=500, help="calls per timing")
    parser.add_argument(
        "--repeat", type=int, default=40, help="timings per case, interleaved; best is kept"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="add a stage breakdown and cProfile of case (b)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.repeat < 1:
        parser.error("--iterations and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = build_cases()
    measure(cases, args.iterations, args.repeat)
    rows = results(cases)
    env = environment(args.iterations, args.repeat)
    if args.json:
        overhead = signing_overhead(rows)
        print(
            json.dumps(
                {"environment": env, "results": rows, "signing_overhead": overhead}, indent=2
            )
        )
    else:
        print_table(rows, env)
    if args.profile:
        print_profile(args.iterations, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
