"""Helpers of tests/test_reliability.py: sizes, poison messages, a mutation fuzzer,
consumer subprocesses, a private redis-server, and a watch on Huey's consumer loop.

The shared consumer helpers (``running_consumer``, ``wait_for``, ``Recorder``) live
in tests/test_consumer.py; this module only adds what the reliability suite needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from huey.registry import Message

from versioned_tasks import VersionedHuey

#: ``make soak`` sets VT_SOAK=1: every count below grows to its long-run size.
SOAK = os.environ.get("VT_SOAK", "") not in ("", "0")

TESTS_DIR = Path(__file__).resolve().parent


def scaled(ci: int, soak: int) -> int:
    """``ci`` in the default run, ``soak`` under ``make soak``."""
    return soak if SOAK else ci


def seed_from_env(name: str = "VT_SOAK_SEED") -> int:
    """A fresh random seed, or the one in the environment to replay a failure."""
    given = os.environ.get(name)
    return int(given) if given else random.SystemRandom().randrange(2**32)


# -- Huey's consumer loop ------------------------------------------------------------

#: What Huey's worker loop logs when an exception escapes ``dequeue()`` or ``execute()``.
LOOP_ERRORS = ("Error reading from queue", "Unhandled error during execution")


class ConsumerLoopErrors(logging.Handler):
    """Records every exception that reached Huey's consumer loop."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(LOOP_ERRORS):
            self.records.append(record)

    def report(self) -> str:
        """How many of each kind, and one traceback of each, for an assertion message."""
        kinds: dict[str, list[logging.LogRecord]] = {}
        for record in self.records:
            error = record.exc_info[1] if record.exc_info else None
            kind = f"{type(error).__name__}: {str(error)[:200]}"
            kinds.setdefault(kind, []).append(record)
        parts = [f"{len(self.records)} exception(s) reached the consumer loop:"]
        for kind, records in kinds.items():
            parts.append(f"- {len(records)} x {kind}")
        for records in kinds.values():
            if records[0].exc_info:
                parts.append(logging.Formatter().formatException(records[0].exc_info))
        return "\n".join(parts)


@contextlib.contextmanager
def watch_consumer_loop() -> Iterator[ConsumerLoopErrors]:
    """Collect what Huey's workers log as errors of their own loop (``huey.consumer``)."""
    handler = ConsumerLoopErrors()
    logger = logging.getLogger("huey.consumer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def wait_until_quiet(
    probe: Callable[[], tuple[Any, ...]],
    *,
    quiet: float,
    timeout: float,
    stall: float = 30.0,
    queued: Callable[[], list[bytes]] | None = None,
) -> tuple[Any, ...]:
    """Wait for a drain: ``probe()`` returns progress counts, the queue's length last.

    Returns once the queue is empty and the reading stayed the same for ``quiet`` s.
    Fails after ``timeout`` s, or when the counts have not moved for ``stall`` s while
    messages are still queued (a worker going round in circles on one message);
    ``queued()`` then names what is left.
    """
    deadline = time.monotonic() + timeout
    last = probe()
    changed = moved = time.monotonic()
    while True:
        time.sleep(0.2)
        now = probe()
        if now[:-1] != last[:-1]:
            moved = time.monotonic()
        if now != last:
            last, changed = now, time.monotonic()
        elif now[-1] == 0 and time.monotonic() - changed >= quiet:
            return now
        if time.monotonic() - moved >= stall:
            left = [raw[:200] for raw in queued()[:3]] if queued else []
            raise AssertionError(
                f"no progress for {stall} s with messages queued: {now!r}; first: {left}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue did not drain within {timeout} s; last {now!r}")


# -- poison messages -------------------------------------------------------------------

#: Set by :func:`unpickled` if anything ever unpickles a canary.
UNPICKLED: list[str] = []


def unpickled(tag: str) -> str:
    """Called only if a canary pickle is ever loaded: leaves a trace."""
    UNPICKLED.append(tag)
    canary = os.environ.get("VT_REL_CANARY")
    if canary:
        with open(canary, "a") as f:
            f.write(tag + "\n")
    return tag


class Canary:
    """A pickle that leaves a trace when loaded."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (unpickled, (self.tag,))


def frame(header: dict[str, Any], body: bytes) -> bytes:
    """An unsigned envelope from a header and body (stdlib json: allows huge ints)."""
    return b"VTE1" + json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, body) of a well-formed unsigned envelope."""
    head, _, body = raw[4:].partition(b"\n")
    header: dict[str, Any] = orjson.loads(head)
    return header, body


def sign(envelope: bytes, key_id: str, secret: bytes) -> bytes:
    """The signed form of an envelope (docs/envelope.md)."""
    prefix = b"VTS1" + key_id.encode() + b":"
    mac = hmac.new(secret, prefix + envelope, hashlib.sha256).hexdigest().encode()
    return prefix + mac + envelope


def unsigned(raw: bytes) -> bytes:
    """The envelope inside a signed message (the bytes themselves if unsigned)."""
    if raw.startswith(b"VTS1") and b":" in raw[:40]:
        return raw[raw.index(b":") + 65 :]
    return raw


def poison(
    envelope: Callable[[int], bytes], index: int, rng: random.Random, odd_names: bool = False
) -> bytes:
    """One bad message of a kind chosen by ``index``, unique by ``index``.

    With ``odd_names``, some unknown task names hold a NUL, a newline or U+2028.

    ``envelope(n)`` is a valid unsigned envelope of a task ``n: int`` at version 2
    with an upcaster from 1 (so version 0 cannot be upcast), on an app that
    dead-letters newer versions.
    """
    kind = index % 12
    good = envelope(index)
    header, body = split(good)
    if kind == 0:  # junk
        return b"junk-%d-" % index + rng.randbytes(rng.randint(0, 40))
    if kind == 1:  # a truncated envelope
        return good[: rng.randrange(1, len(good))]
    if kind == 2:  # an unknown task, some with a NUL or a newline in their name
        odd = "" if index // 12 % 3 or not odd_names else rng.choice(["\x00", "\n", "\u2028"])
        name = f"rel.gone_{index}{odd}"
        return frame({**header, "task": name}, body)
    if kind == 3:  # an invalid payload
        return frame(header, b'{"n":"not a number %d"}' % index)
    if kind == 4:  # a pickled Huey message, never to be unpickled
        return pickle.dumps(Message(uuid.uuid4().hex, "rel.job", args=(Canary(f"m{index}"),)))
    if kind == 5:  # a bare pickle
        return pickle.dumps({"index": index, "canary": Canary(f"p{index}")})
    if kind == 6:  # newer than the worker knows
        return frame({**header, "v": 99}, body)
    if kind == 7:  # older than the oldest upcaster
        return frame({**header, "v": 0}, body)
    if kind == 8:  # a version of the wrong type (null would mean "absent": version 1)
        return frame({**header, "v": rng.choice(["2", 2.5, True, [2], -1])}, body)
    if kind == 9:  # a signature nobody can check
        return sign(good, "nokey", b"x" * 32)
    if kind == 10:  # looks compressed to Huey's own serializer
        return rng.choice([b"\x1f\x8b", b"\x78\x9c"]) + b"%d" % index + rng.randbytes(8)
    return b"VTE9" + good[4:]  # an envelope format from the future


def mixed_queue(
    good: Callable[[int], bytes],
    n_good: int,
    n_bad: int,
    rng: random.Random,
    *,
    odd_names: bool = False,
) -> tuple[list[bytes], list[bytes]]:
    """(good, bad) messages (see :func:`poison`), to be enqueued through :func:`interleave`."""
    goods = [good(n) for n in range(n_good)]
    bads = [poison(good, index, rng, odd_names) for index in range(n_bad)]
    return goods, bads


def interleave(goods: list[bytes], bads: list[bytes]) -> list[bytes]:
    """Goods spread evenly among the bads."""
    out: list[bytes] = []
    step = max(1, len(bads) // max(1, len(goods)))
    queue = list(goods)
    for index, bad in enumerate(bads):
        if index % step == 0 and queue:
            out.append(queue.pop(0))
        out.append(bad)
    return out + queue


def missing(expected: list[bytes], got: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(expected but absent, present but not expected), as multisets of bytes."""
    want, have = Counter(expected), Counter(got)
    return list((want - have).elements()), list((have - want).elements())


# -- the mutation fuzzer -----------------------------------------------------------------


@dataclass
class Input:
    """One fuzz input: the bytes pushed, the mutation, and what was done to its signature."""

    raw: bytes
    how: str
    signature: str = "unsigned app"


Mutation = Callable[[bytes], bytes]


@dataclass
class Mutator:
    """Mutates valid envelopes into fuzz inputs; everything drawn from ``rng``.

    ``seed()`` returns a fresh valid envelope (unsigned) of the app's tasks; ``secret``
    (with ``key_id``) is set on a signed app, whose inputs are then signed, or
    mutated in their signature. The first inputs use each mutation once (the deep
    pipeline at its deepest), the rest draw them by weight.
    """

    rng: random.Random
    seed: Callable[[], bytes]
    key_id: str | None = None
    secret: bytes | None = None
    #: inputs to be pushed later, whose revocation key an earlier input's result took
    aliased: list[bytes] = field(default_factory=list)
    deepest: bool = False

    def mutations(self) -> list[tuple[str, Mutation, float]]:
        """(name, mutation, weight); a deep pipeline runs a task per level: rare."""
        return [
            ("none", lambda raw: raw, 3),
            ("bit flips", self._bit_flip, 3),
            ("byte sets", self._byte_set, 2),
            ("truncation", lambda raw: raw[: self.rng.randrange(0, len(raw))], 2),
            ("splice", self._splice, 2),
            ("header swap", self._header_swap, 2),
            ("huge integer", self._huge, 2),
            ("wrong type", self._wrong_type, 3),
            ("unicode", self._unicode, 2),
            ("extra field", self._extra_field, 2),
            ("dropped field", self._dropped_field, 2),
            ("framing", self._framing, 1),
            ("deep callbacks", self._deep_callbacks, 0.1),
            ("deep json", self._deep_json, 1),
            ("revocation alias", self._revocation_alias, 0.5),
        ]

    def inputs(self, count: int) -> Iterator[Input]:
        """``count`` inputs (revocation aliases come in pairs, the second ones later)."""
        mutations = self.mutations()
        weights = [weight for *_, weight in mutations]
        for made in range(count):
            if self.aliased and (self.rng.random() < 0.02 or made + len(self.aliased) >= count):
                yield self._finish(self.aliased.pop(0), "revocation alias (the target)")
                continue
            if made < len(mutations):
                how, mutate, _ = mutations[made]
                self.deepest = True
            else:
                [(how, mutate, _)] = self.rng.choices(mutations, weights=weights)
                self.deepest = False
            yield self._finish(mutate(self.seed()), how)

    def _finish(self, envelope: bytes, how: str) -> Input:
        if self.secret is None or self.key_id is None:
            return Input(envelope, how)
        return self._signed(envelope, how)

    def _signed(self, envelope: bytes, how: str) -> Input:
        assert self.secret is not None
        assert self.key_id is not None
        signed = sign(envelope, self.key_id, self.secret)
        if self.rng.random() < 0.75:
            return Input(signed, how, "signed")
        choice = self.rng.randrange(5)
        if choice == 0:
            at = self.rng.randrange(len(self.key_id) + 5, len(self.key_id) + 69)
            flipped = signed[:at] + bytes([signed[at] ^ 1]) + signed[at + 1 :]
            return Input(flipped, how, "MAC tampered")
        if choice == 1:
            return Input(sign(envelope, "k9", self.secret), how, "unknown key id")
        if choice == 2:
            return Input(envelope, how, "unsigned on a signed app")
        if choice == 3:
            return Input(sign(envelope, self.key_id, b"f" * 40), how, "wrong secret")
        altered = self._bit_flip(signed, start=len(self.key_id) + 70)
        return Input(altered, how, "signed, then altered")

    # -- mutations ---------------------------------------------------------------------

    def _bit_flip(self, raw: bytes, start: int = 0) -> bytes:
        data = bytearray(raw)
        for _ in range(self.rng.randint(1, 3)):
            if len(data) > start:
                at = self.rng.randrange(start, len(data))
                data[at] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def _byte_set(self, raw: bytes) -> bytes:
        data = bytearray(raw)
        for _ in range(self.rng.randint(1, 4)):
            if data:
                data[self.rng.randrange(len(data))] = self.rng.choice(
                    [0, 0x0A, 0x22, 0x7B, 0x7D, 0x5C, 0x80, 0xFF, self.rng.randrange(256)]
                )
        return bytes(data)

    def _splice(self, raw: bytes) -> bytes:
        other = self.seed()
        return (
            raw[: self.rng.randrange(len(raw) + 1)] + other[self.rng.randrange(len(other) + 1) :]
        )

    def _header_swap(self, raw: bytes) -> bytes:
        other = self.seed()
        header, _ = split(raw)
        _, body = split(other)
        return frame(header, body)

    def _huge(self, raw: bytes) -> bytes:
        header, body = split(raw)
        huge = self.rng.choice([2**63, 2**64 + 1, -(2**63) - 1, 2**200, 10**400, -(10**30)])
        if self.rng.random() < 0.5:
            fields = [k for k in ("v", "at", "priority", "retries") if k in header] or ["v"]
            return frame({**header, self.rng.choice(fields): huge}, body)
        payload = orjson.loads(body)
        if isinstance(payload, dict) and payload:
            payload[self.rng.choice(sorted(payload))] = huge
        return frame(header, json.dumps(payload).encode())

    def _wrong_type(self, raw: bytes) -> bytes:
        header, body = split(raw)
        value = self.rng.choice(
            [None, True, "text", 1.5, [], {}, [1, 2], {"a": 1}, -1, "", "\u0000"]
        )
        if self.rng.random() < 0.6:
            key = self.rng.choice(sorted(header))
            return frame({**header, key: value}, body)
        payload = orjson.loads(body)
        if isinstance(payload, dict) and payload:
            payload[self.rng.choice(sorted(payload))] = value
            return frame(header, json.dumps(payload).encode())
        return frame(header, json.dumps(value).encode())

    def _unicode(self, raw: bytes) -> bytes:
        header, body = split(raw)
        text = self.rng.choice(["é", "\u202e", "😀", "\ud800", "\uffff", "a\u0000b", "名前"])
        choice = self.rng.randrange(4)
        if choice == 0:
            return frame({**header, "task": header.get("task", "") + text}, body)
        if choice == 1:
            return frame({**header, "id": f"{header.get('id')}{text}"}, body)
        if choice == 2:
            payload = orjson.loads(body)
            if isinstance(payload, dict):
                payload[text] = text
            return frame(header, json.dumps(payload).encode())
        at = self.rng.randrange(len(raw) + 1)
        return raw[:at] + self.rng.choice([b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f"]) + raw[at:]

    def _extra_field(self, raw: bytes) -> bytes:
        header, body = split(raw)
        if self.rng.random() < 0.5:
            return frame({**header, f"zz_{self.rng.randrange(100)}": [1, {"x": None}]}, body)
        payload = orjson.loads(body)
        if isinstance(payload, dict):
            payload["zz_unknown"] = 1
        return frame(header, json.dumps(payload).encode())

    def _dropped_field(self, raw: bytes) -> bytes:
        header, body = split(raw)
        header.pop(self.rng.choice(sorted(header)), None)
        return frame(header, body)

    def _framing(self, raw: bytes) -> bytes:
        head, _, body = raw[4:].partition(b"\n")
        return self.rng.choice(
            [
                b"VTE2" + raw[4:],
                b"vte1" + raw[4:],
                b"VTE1" + head + body,
                b"VTE1" + head + b"\n" + body + b"\n" + body,
                b"VTE1" + head + b"\n\n" + body,
                b"VTE1",
                b"VTE1\n",
                b"",
                b"VTE1" + head + b"\n",
                b"\xef\xbb\xbf" + raw,
            ]
        )

    def _deep_callbacks(self, raw: bytes) -> bytes:
        """A pipeline ``depth`` callbacks deep, each a valid step of a known task."""
        header, body = split(raw)
        depth = 300 if self.deepest else self.rng.choice([5, 60, 127, 128, 129, 200, 300])
        callback: dict[str, Any] | None = None
        for _ in range(depth):
            step: dict[str, Any] = {
                "task": "fz.b",
                "v": 1,
                "params": ["n", "m"],
                "id": str(uuid.UUID(int=self.rng.getrandbits(128))),
                "args": [],
                "kwargs": {},
            }
            if callback is not None:
                step["on_complete"] = callback
            callback = step
        header.pop("on_error", None)
        return frame({**header, "on_complete": callback}, body)

    def _deep_json(self, raw: bytes) -> bytes:
        """Arrays nested ``depth`` levels, as an argument or as an unknown header field."""
        header, body = split(raw)
        depth = 300 if self.deepest else self.rng.choice([50, 127, 129, 199, 201, 300])
        nested = b"[" * depth + b"1" + b"]" * depth
        if self.rng.random() < 0.5:
            payload = orjson.loads(body)
            names = sorted(payload) if isinstance(payload, dict) and payload else ["n"]
            name = json.dumps(self.rng.choice(names)).encode()
            return frame(header, b"{" + name + b":" + nested + b"}")
        head = json.dumps(header, separators=(",", ":")).encode()
        return b"VTE1" + head[:-1] + b',"zz_deep":' + nested + b"}\n" + body

    def _revocation_alias(self, raw: bytes) -> bytes:
        """An input whose id is another (later) input's revocation key.

        Its result lands where Huey looks for the other task's revocation record,
        so the later task meets a record of the wrong shape.
        """
        header, body = split(raw)
        target = str(uuid.UUID(int=self.rng.getrandbits(128)))
        later = frame({**header, "id": target}, body)
        self.aliased.append(later)
        return frame({**header, "id": f"r:{target}"}, body)


def header_of(raw: bytes) -> dict[str, Any] | None:
    """The header of any input, if it has one that parses as a JSON object."""
    envelope = unsigned(raw)
    if not envelope.startswith(b"VTE1") or b"\n" not in envelope:
        return None
    try:
        header = json.loads(envelope[4:].partition(b"\n")[0])
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def key(value: Any) -> str:
    """A hashable key for a task id as written in a header or seen on a task."""
    return repr(value)


def callback_chain(header: dict[str, Any]) -> list[str]:
    """The ids along a header's ``on_complete`` chain, first to last."""
    ids: list[str] = []
    step = header.get("on_complete")
    while isinstance(step, dict):
        ids.append(key(step.get("id")))
        step = step.get("on_complete")
    return ids


class Ledger:
    """Matches what ran and what was dead-lettered against what was pushed."""

    def __init__(self, inputs: list[Input], runs: list[str], stored: list[bytes]) -> None:
        self.inputs = inputs
        self.runs = Counter(runs)
        self.dead = Counter(stored)
        self.dead_ids = Counter(key(h.get("id")) for h in map(header_of, stored) if h)
        self.ran: list[Input] = []
        self.dead_lettered: list[Input] = []
        self.both: list[Input] = []
        self.neither: list[Input] = []
        self.lost_callbacks: list[tuple[Input, int]] = []
        self.settle()

    def _take_run(self, ident: str | None) -> bool:
        if ident is not None and self.runs[ident] > 0:
            self.runs[ident] -= 1
            return True
        return False

    def settle(self) -> None:
        # Dead letters first, then runs: inputs may share an id (a mutation can set
        # the same one on several), so a run is only counted against an input that
        # was not dead-lettered, and one left over for a dead-lettered id means both.
        dead_inputs: list[tuple[Input, str | None]] = []
        for item in self.inputs:
            header = header_of(item.raw)
            ident = key(header.get("id")) if header else None
            if self.dead[item.raw] > 0:
                self.dead[item.raw] -= 1
                if header is not None:
                    self.dead_ids[ident or ""] -= 1
                dead_inputs.append((item, ident))
            elif self._take_run(ident):
                self.ran.append(item)
                assert header is not None
                self._follow_callbacks(item, header)
            else:
                self.neither.append(item)
        for item, ident in dead_inputs:
            if self._take_run(ident):
                self.both.append(item)
            else:
                self.dead_lettered.append(item)

    def _follow_callbacks(self, item: Input, header: dict[str, Any]) -> None:
        """Each callback along a run input's chain ran, or was dead-lettered (with the rest)."""
        for depth, ident in enumerate(callback_chain(header), start=1):
            if self._take_run(ident):
                continue
            if self.dead_ids[ident] > 0:
                self.dead_ids[ident] -= 1
                self.dead[self._stored_with_id(ident)] -= 1
                return
            self.lost_callbacks.append((item, depth))
            return

    def _stored_with_id(self, ident: str) -> bytes:
        for raw, count in self.dead.items():
            header = header_of(raw)
            if count > 0 and header is not None and key(header.get("id")) == ident:
                return raw
        raise AssertionError(f"no stored entry with id {ident}")

    def unlinked_runs(self) -> int:
        return sum(count for count in self.runs.values() if count > 0)

    def unexpected_entries(self) -> int:
        return sum(count for count in self.dead.values() if count > 0)

    def summary(self) -> str:
        """Ran / dead-lettered counts by mutation and by what was done to the signature."""
        lines = []
        for name, attribute in (("mutation", "how"), ("signature", "signature")):
            table: dict[str, Counter[str]] = {}
            for outcome, items in (("ran", self.ran), ("dead", self.dead_lettered)):
                for item in items:
                    table.setdefault(getattr(item, attribute), Counter())[outcome] += 1
            lines += [f"  {name} {value}: {dict(c)}" for value, c in sorted(table.items())]
        return "\n".join(lines)

    def unlinkable(self) -> list[Input]:
        """Inputs that neither ran nor were dead-lettered and carry no string id.

        Such an input may run under a fresh id (Huey gives a message without an id
        one), so it is matched by count with the runs no input or callback names.
        """
        return [
            item
            for item in self.neither
            if not isinstance((header_of(item.raw) or {}).get("id"), str)
        ]

    def problems(self) -> list[str]:
        """Every way the outcome differs from "ran once, or dead-lettered byte for byte"."""
        unlinkable = self.unlinkable()
        lost = [item for item in self.neither if item not in unlinkable]
        found = []
        if self.both:
            found.append(f"{len(self.both)} inputs ran AND were dead-lettered:\n{show(self.both)}")
        if lost:
            found.append(
                f"{len(lost)} inputs neither ran nor were dead-lettered with their exact "
                f"bytes:\n{show(lost)}"
            )
        if len(unlinkable) != self.unlinked_runs():
            found.append(
                f"{len(unlinkable)} inputs without a string id are unaccounted for, and "
                f"{self.unlinked_runs()} runs name no input or callback:\n{show(unlinkable)}"
            )
        if self.lost_callbacks:
            lost_at = Counter((item.how, depth) for item, depth in self.lost_callbacks)
            found.append(
                f"{len(self.lost_callbacks)} inputs ran but a callback of theirs neither ran "
                f"nor was dead-lettered ((mutation, depth of the first lost callback): "
                f"count): {dict(lost_at)}"
            )
        if self.unexpected_entries():
            extra = [raw for raw, count in self.dead.items() if count > 0]
            found.append(
                f"{self.unexpected_entries()} dead letters match no input or callback: "
                f"{[raw[:200] for raw in extra[:5]]}"
            )
        return found


def show(items: list[Input], limit: int = 5) -> str:
    """The first few inputs, for a failure message."""
    return "\n".join(
        f"  [{item.how}; {item.signature}] {item.raw[:300]!r}" for item in items[:limit]
    )


# -- consumer subprocesses -----------------------------------------------------------

CONSUMER_APP = textwrap.dedent(
    """
    import os
    import time

    from versioned_tasks import VersionedPostgresHuey, VersionedRedisHuey, VersionedSqliteHuey

    BACKEND = os.environ["VT_REL_BACKEND"]
    QUEUE = os.environ["VT_REL_QUEUE"]
    OPTIONS = {"newer_version": "dead_letter"}
    if os.environ.get("VT_REL_RELIABLE"):
        # Short heartbeats: a killed consumer's messages are recovered within seconds.
        OPTIONS.update(reliable=True, fleet_interval=0.5)
    if BACKEND == "redis":
        huey = VersionedRedisHuey(QUEUE, url=os.environ["VT_REL_URL"], **OPTIONS)
    elif BACKEND == "sqlite":
        huey = VersionedSqliteHuey(QUEUE, filename=os.environ["VT_REL_DB"], **OPTIONS)
    else:
        huey = VersionedPostgresHuey(QUEUE, dsn=os.environ["VT_REL_URL"], **OPTIONS)

    RUNS = os.open(os.environ["VT_REL_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    PAUSE = float(os.environ.get("VT_REL_PAUSE", "0"))


    @huey.versioned_task(version=2, name="rel.job", context=True)
    def job(n: int, task=None) -> None:
        os.write(RUNS, f"S {task.id} {os.getpid()}\\n".encode())
        if PAUSE:
            time.sleep(PAUSE)
        os.write(RUNS, f"E {task.id} {os.getpid()}\\n".encode())


    @huey.upcaster("rel.job", from_version=1)
    def up(payload):
        return payload
    """
)

CONSUMER_FLAGS = ["-k", "thread", "-s", "1", "-n", "-C", "-d", "0.05", "-m", "0.2"]


def declare_job(app: VersionedHuey) -> Any:
    """The producer's side of CONSUMER_APP's task: ``rel.job(n)`` at version 2."""

    @app.versioned_task(version=2, name="rel.job")
    def job(n: int) -> None: ...

    @app.upcaster("rel.job", from_version=1)
    def up(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return job


@dataclass
class Runs:
    """The runs file of the consumer subprocesses: ``S id pid`` / ``E id pid`` lines."""

    path: Path

    def lines(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
        return out

    def finished(self) -> Counter[str]:
        return Counter(ident for mark, ident, _ in self.lines() if mark == "E")

    def started(self) -> Counter[str]:
        return Counter(ident for mark, ident, _ in self.lines() if mark == "S")

    def interrupted(self) -> set[str]:
        """Ids with a run that started and never finished (killed mid-run)."""
        open_runs: Counter[tuple[str, str]] = Counter()
        for mark, ident, pid in self.lines():
            open_runs[(ident, pid)] += 1 if mark == "S" else -1
        return {ident for (ident, _), count in open_runs.items() if count > 0}

    def in_flight_at_kill(self, killed: set[str], workers: int) -> set[str]:
        """Ids a killed process may have been running, or finishing, when it died.

        Those are the runs it never finished, and the last ``workers`` it started:
        a run whose code had returned may still have been settling (its result, its
        acknowledgement) when the kill landed.
        """
        last: dict[str, list[str]] = {}
        for mark, ident, pid in self.lines():
            if mark == "S" and pid in killed:
                last.setdefault(pid, []).append(ident)
        tails = {ident for started in last.values() for ident in started[-workers:]}
        return tails | self.interrupted()


class Consumers:
    """``huey_consumer`` subprocesses on CONSUMER_APP, with their logs."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        (tmp_path / "rel_app.py").write_text(CONSUMER_APP)
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            **env,
            "VT_REL_CANARY": str(tmp_path / "unpickled.txt"),
            "PYTHONPATH": os.pathsep.join(
                [str(tmp_path), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()

    def start(self, name: str, workers: int = 2) -> None:
        log = (self.tmp_path / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "rel_app.huey",
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

    def kill(self, name: str) -> None:
        """SIGKILL: no handler, no cleanup, as a crash or the OOM killer."""
        process = self.processes[name]
        self.killed.add(str(process.pid))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{self.log(name)[-4000:]}" for name in self.processes)

    def all_started(self) -> bool:
        """Whether every consumer logged Huey's start-up line."""
        return all("consumer started" in self.log(name) for name in self.processes)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"consumer {name} exited early:\n{self.log(name)[-4000:]}")

    def loop_errors(self) -> list[str]:
        """Lines where Huey's consumer loop logged an exception, in every log."""
        return [
            line
            for name in self.processes
            for line in self.log(name).splitlines()
            if any(error in line for error in LOOP_ERRORS)
        ]

    def unpickled(self) -> str:
        path = self.tmp_path / "unpickled.txt"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        """Stop every live consumer gracefully (SIGINT), killing one that hangs."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_with(
    consumers: Consumers, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """wait_for, failing early (with the logs) if a consumer died."""
    deadline = time.monotonic() + timeout
    while not condition():
        consumers.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{consumers.logs()}")
        time.sleep(0.05)


# -- a private redis-server ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server of this test alone: append-only, fsync on every write."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not on PATH")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_up()

    def _wait_up(self) -> None:
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as conn:
                    if conn.ping():
                        return
            except redis.exceptions.RedisError:
                pass
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server: only what its append-only file holds survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
