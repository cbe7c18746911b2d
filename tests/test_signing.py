"""Signed envelopes: HMAC-SHA256 with a key id, key rotation, and messages whose
signature is missing, wrong or of an unknown key dead-lettered as
``bad_signature``, never run.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import pickle
import re
import time
from typing import Any

import pytest
from helpers import (
    K1,
    K2,
    MakeHuey,
    Recorder,
    examples,
    queued,
    running_consumer,
    signer,
    wait_for,
)
from huey import MemoryHuey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import codec_values, same

from versioned_tasks import (
    ConfigurationError,
    DecodeError,
    SignatureError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedSerializer,
)

FORGED = b"not-the-real-k1-secret-but-as-long-0003"


def split_signed(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(key id, hex MAC, envelope) of a signed message."""
    assert raw.startswith(b"VTS1")
    colon = raw.index(b":")
    return raw[4:colon], raw[colon + 1 : colon + 65], raw[colon + 65 :]


# -- the wire form ---------------------------------------------------------------------------


def test_a_signed_message_is_vts1_key_id_mac_and_the_usual_envelope() -> None:
    """The MAC is HMAC-SHA256 of every other byte of the message, in lowercase hex."""
    huey = VersionedMemoryHuey("wire", serializer=signer("k1"))

    @huey.versioned_task(version=1, name="wire.job")
    def job(n: int) -> None: ...

    job(1)
    [raw] = queued(huey)
    key_id, mac, envelope = split_signed(raw)
    assert key_id == b"k1"
    assert envelope.startswith(b'VTE1{"kind":"task","task":"wire.job","v":1,')
    expected = hmac.new(K1, b"VTS1k1:" + envelope, hashlib.sha256).hexdigest()
    assert mac == expected.encode()
    assert raw[:1] not in (b"\x80", b"\x1f", b"\x78")


@settings(max_examples=examples(100), deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=200),
    key_id=st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True),
    value=codec_values,
)
def test_the_mac_is_the_standard_hmac_for_any_secret_and_value(
    secret: bytes, key_id: str, value: Any
) -> None:
    """Secrets longer than SHA-256's block are hashed first, as RFC 2104 says."""
    serializer = VersionedSerializer(secret_keys={key_id: secret})
    raw = serializer.serialize(value)
    got_id, mac, envelope = split_signed(raw)
    assert got_id == key_id.encode()
    prefix = b"VTS1" + got_id + b":"
    assert mac == hmac.new(secret, prefix + envelope, hashlib.sha256).hexdigest().encode()
    assert same(serializer.deserialize(raw), value)


def test_stored_values_are_signed_and_read_back() -> None:
    """Results, locks and huey.put() data are signed like task messages."""
    huey = VersionedMemoryHuey("values", serializer=signer("k1"))

    @huey.versioned_task(version=1, name="values.job")
    def job(n: int) -> tuple[int, int]:
        return (n, n + 1)

    result = job(3)
    huey.execute(huey.dequeue())
    assert huey.storage.peek_data(result.id).startswith(b"VTS1k1:")
    assert result() == (3, 4)
    huey.put("key", {"a": (1, 2)})
    assert huey.get("key") == {"a": (1, 2)}


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"secret_keys": {"k1": b"too short"}},
            "The secret of key 'k1' is 9 bytes; signing secrets must be at least 32 bytes.",
        ),
        (
            {"secret_keys": {"k 1": K1}},
            "Key id 'k 1' is not valid: use 1 to 32 characters of A-Z, a-z, 0-9,",
        ),
        ({"secret_keys": {"k" * 33: K1}}, "is not valid: use 1 to 32 characters"),
        ({"secret_keys": {}}, "secret_keys must be a non-empty mapping"),
        (
            {"secret_keys": {"k2": K2, "k1": K1}},
            "secret_keys lists 2 keys ('k2', 'k1'); name the one that signs with "
            "signing_key=, e.g. signing_key='k2'.",
        ),
        (
            {"secret_keys": {"k1": K1}, "signing_key": "k2"},
            "signing_key 'k2' is not one of secret_keys ('k1')",
        ),
        ({"signing_key": "k1"}, "signing_key= and accept_unsigned= need secret_keys="),
        ({"accept_unsigned": True}, "signing_key= and accept_unsigned= need secret_keys="),
        ({"secret_keys": {"k1": 12345}}, "The secret of key 'k1' must be bytes or text, not int."),
        ({"compression": True}, "VersionedSerializer does not compress"),
    ],
)
def test_unusable_key_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """Each refusal is a ConfigurationError saying what to change, never showing a secret."""
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        VersionedSerializer(**options)
    assert K1.decode() not in str(info.value)


def test_the_serializer_accepts_the_arguments_huey_builds_it_with() -> None:
    """Huey calls Serializer(compression, use_zlib=use_zlib) when given no serializer."""
    assert repr(VersionedSerializer(False, use_zlib=False)) == "VersionedSerializer()"
    assert repr(VersionedSerializer(False, 6, False)) == "VersionedSerializer()"
    with pytest.raises(ConfigurationError, match="does not compress"):
        VersionedSerializer(True, use_zlib=True)


def test_text_secrets_are_used_as_utf8_and_the_repr_shows_no_secret() -> None:
    """A text secret signs like its UTF-8 bytes; repr lists the key ids only."""
    text = K1.decode()
    serializer = VersionedSerializer(secret_keys={"k2": K2, "k1": text}, signing_key="k2")
    assert signer("k1").deserialize(signer("k1").serialize(1)) == 1
    assert serializer.deserialize(signer("k1").serialize([1])) == [1]
    assert serializer.signing_key == "k2"
    assert serializer.key_ids == ("k2", "k1")
    assert repr(serializer) == "VersionedSerializer(key_ids=('k2', 'k1'), signing_key='k2')"
    assert VersionedSerializer().signing_key is None
    assert VersionedSerializer().key_ids == ()


def test_keys_come_from_the_environment() -> None:
    """VERSIONED_TASKS_SECRET_KEYS lists id:secret pairs; the signing key is named apart."""
    environ = {
        "VERSIONED_TASKS_SECRET_KEYS": f" k2:{K2.decode()} , k1:{K1.decode()} ",
        "VERSIONED_TASKS_SIGNING_KEY": "k2",
    }
    serializer = VersionedSerializer.from_env(environ)
    assert (serializer.signing_key, serializer.key_ids) == ("k2", ("k2", "k1"))
    assert serializer.deserialize(signer("k1").serialize("old")) == "old"
    assert signer("k2").deserialize(serializer.serialize("new")) == "new"


def test_one_key_in_the_environment_is_the_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a single key, VERSIONED_TASKS_SIGNING_KEY may be left unset; os.environ is read."""
    monkeypatch.setenv("VERSIONED_TASKS_SECRET_KEYS", f"k1:{K1.decode()}")
    monkeypatch.delenv("VERSIONED_TASKS_SIGNING_KEY", raising=False)
    serializer = VersionedSerializer.from_env(max_size=10_000)
    assert (serializer.signing_key, serializer.max_size) == ("k1", 10_000)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "VERSIONED_TASKS_SECRET_KEYS is not set"),
        ({"VERSIONED_TASKS_SECRET_KEYS": "  "}, "VERSIONED_TASKS_SECRET_KEYS is not set"),
        (
            {"VERSIONED_TASKS_SECRET_KEYS": f"k1:{K1.decode()},{K2.decode()}"},
            "VERSIONED_TASKS_SECRET_KEYS: entry 2 is not 'key-id:secret'",
        ),
        (
            {"VERSIONED_TASKS_SECRET_KEYS": f"k1:{K1.decode()},k1:{K2.decode()}"},
            "VERSIONED_TASKS_SECRET_KEYS: key id 'k1' is listed twice.",
        ),
        (
            {"VERSIONED_TASKS_SECRET_KEYS": f"k1:{K1.decode()},k2:{K2.decode()}"},
            "secret_keys lists 2 keys ('k1', 'k2'); name the one that signs",
        ),
        ({"VERSIONED_TASKS_SECRET_KEYS": "k1:short"}, "is 5 bytes; signing secrets must be"),
    ],
)
def test_a_bad_environment_is_refused_without_showing_secrets(
    environ: dict[str, str], message: str
) -> None:
    """Each problem with the variables is a ConfigurationError naming the entry, not the secret."""
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        VersionedSerializer.from_env(environ)
    assert K1.decode() not in str(info.value)
    assert K2.decode() not in str(info.value)


# -- what a reader refuses ---------------------------------------------------------------------


def forged(raw: bytes) -> bytes:
    """``raw`` re-signed under id k1 with a secret that is not the real k1."""
    _, _, envelope = split_signed(raw)
    mac = hmac.new(FORGED, b"VTS1k1:" + envelope, hashlib.sha256).hexdigest().encode()
    return b"VTS1k1:" + mac + envelope


def resigned_with_unknown_key(raw: bytes) -> bytes:
    """``raw`` signed correctly, but with a key (k9) the reader does not list."""
    _, _, envelope = split_signed(raw)
    return VersionedSerializer(secret_keys={"k9": FORGED}).frame(
        *envelope[4:].split(b"\n", 1)  # header JSON, body JSON
    )


def tampered(raw: bytes) -> bytes:
    """``raw`` with its argument changed and the signature left as it was."""
    assert b'"n":5' in raw
    return raw.replace(b'"n":5', b'"n":6')


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (tampered, "Signature does not match for key id 'k1': the message was altered"),
        (forged, "Signature does not match for key id 'k1'"),
        (lambda raw: raw[:-1], "Signature does not match for key id 'k1'"),
        (lambda raw: raw[:60], "Signature does not match for key id 'k1'"),
        (lambda raw: raw[:5], "Signed message with a malformed prefix"),
        (
            resigned_with_unknown_key,
            "Message signed with key id 'k9', which this reader does not list (it knows "
            "'k2', 'k1'); it was not run.",
        ),
        (
            lambda raw: split_signed(raw)[2],
            "Unsigned envelope, but this reader requires signatures",
        ),
    ],
    ids=[
        "tampered",
        "forged",
        "truncated-end",
        "truncated-mac",
        "truncated-id",
        "unknown-key",
        "unsigned",
    ],
)
def test_a_message_with_a_bad_signature_is_dead_lettered_and_never_runs(
    make_huey: MakeHuey, damage: Any, message: str
) -> None:
    """dequeue() dead-letters it as bad_signature with its exact bytes and runs nothing."""
    producer = make_huey(serializer=signer("k1"))

    @producer.versioned_task(version=1, name="sig.job")
    def job(n: int) -> None: ...

    job(5)
    [raw] = queued(producer)
    producer.storage.flush_queue()
    bad = damage(raw)
    producer.storage.enqueue(bad)

    worker = make_huey(serializer=signer("k2", "k1", signing_key="k2"))
    ran = Recorder()

    @worker.versioned_task(version=1, name="sig.job")
    def job_in_worker(n: int) -> None:
        ran(n)

    assert worker.dequeue() is None
    [entry] = worker.dead_letters
    assert (entry.reason, entry.raw, entry.task, entry.version) == (
        "bad_signature",
        bad,
        None,
        None,
    )
    assert message in entry.error
    assert len(ran) == 0
    assert worker.pending_count() == 0


@pytest.mark.parametrize(
    ("inside", "message"),
    [
        (b'VTE2{"kind":"task"}\n{}', "Envelope format b'2' is not understood by this release"),
        (b"\x80\x04junk", "Legacy pickle data"),
        (b"VTS1k1:" + b"0" * 64 + b'VTE1{"kind":"value"}\n1', "another signed message"),
    ],
    ids=["newer-format", "pickle", "signed-twice"],
)
def test_a_correctly_signed_message_that_holds_no_envelope_is_undecodable(
    inside: bytes, message: str
) -> None:
    """The signature is good, so the reason is the envelope's: undecodable."""
    mac = hmac.new(K1, b"VTS1k1:" + inside, hashlib.sha256).hexdigest().encode()
    raw = b"VTS1k1:" + mac + inside
    app = VersionedMemoryHuey("inside", serializer=signer("k1"))
    app.storage.enqueue(raw)
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)
    assert message in entry.error


def test_a_worker_without_keys_dead_letters_signed_messages_and_says_to_configure_keys(
    make_huey: MakeHuey,
) -> None:
    """The entry replays once the worker has the producers' keys."""
    producer = make_huey(serializer=signer("k1"))

    @producer.versioned_task(version=1, name="sig.job")
    def job(n: int) -> None: ...

    job(5)
    unkeyed = make_huey()
    ran = Recorder()

    @unkeyed.versioned_task(version=1, name="sig.job")
    def job_unkeyed(n: int) -> None:
        ran(n)

    assert unkeyed.dequeue() is None
    [entry] = unkeyed.dead_letters
    assert entry.reason == "bad_signature"
    assert "Signed envelope (key id 'k1'), but this reader has no secret_keys" in entry.error
    assert "VersionedSerializer.from_env()" in entry.error

    keyed = make_huey(serializer=signer("k1"))

    @keyed.versioned_task(version=1, name="sig.job")
    def job_keyed(n: int) -> None:
        ran(n)

    keyed.dead_letters.replay(entry.id)
    keyed.execute(keyed.dequeue())
    assert ran.calls == [(5,)]
    assert len(keyed.dead_letters) == 0


def test_values_with_a_bad_signature_raise_signature_error() -> None:
    """deserialize() raises SignatureError, a DecodeError, for results and other values."""
    raw = signer("k1").serialize({"total": 10})
    worker = signer("k2")
    with pytest.raises(SignatureError, match="which this reader does not list") as info:
        worker.deserialize(raw)
    assert isinstance(info.value, DecodeError)
    assert info.value.key_id == "k1"
    assert info.value.reason == "bad_signature"
    with pytest.raises(SignatureError, match="requires signatures"):
        worker.deserialize(VersionedSerializer().serialize(1))
    with pytest.raises(SignatureError, match="Signed envelope"):
        VersionedSerializer().deserialize(raw)


def test_a_result_whose_signature_is_wrong_is_never_decoded(make_huey: MakeHuey) -> None:
    """Result.get() raises SignatureError for a result re-written without the key."""
    app = make_huey(serializer=signer("k1"))

    @app.versioned_task(version=1, name="sig.total")
    def total(n: int) -> int:
        return n * 2

    result = total(4)
    app.execute(app.dequeue())
    app.storage.put_data(result.id, VersionedSerializer().serialize(999))
    with pytest.raises(SignatureError, match="requires signatures"):
        result.get()


def test_a_plain_huey_with_a_signing_serializer_refuses_unsigned_messages() -> None:
    """On a plain Huey signed messages run, and an unsigned one makes dequeue() raise,
    as Huey's own read errors do."""
    signed = MemoryHuey("plain-signed", serializer=signer("k1"))
    unsigned = MemoryHuey("plain-unsigned", serializer=VersionedSerializer())
    results = []
    for huey in (signed, unsigned):

        @huey.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        results.append(add(1, 2))
    signed.execute(signed.dequeue())
    assert results[0]() == 3
    [raw] = unsigned.storage.enqueued_items()
    signed.storage.enqueue(raw)
    with pytest.raises(SignatureError, match="Unsigned envelope"):
        signed.dequeue()


# -- rotation and switching a live queue -----------------------------------------------------


def test_rotation_add_the_new_key_then_sign_with_it_then_drop_the_old_one(
    make_huey: MakeHuey,
) -> None:
    """Each step reads what the step before wrote; dropping k1 refuses what k1 signed."""
    ran = Recorder()
    jobs = {}
    for step, serializer in (
        (1, signer("k1", "k2", signing_key="k1")),  # every worker learns k2
        (2, signer("k2", "k1", signing_key="k2")),  # then signs with it
        (3, signer("k2")),  # k1 dropped once nothing signed with it is left
    ):
        app = make_huey(serializer=serializer)

        @app.versioned_task(version=1, name="rotate.job")
        def job(step: int) -> None:
            ran(step)

        jobs[step] = (app, job)

    job1, (step2, job2), (step3, _) = jobs[1][1], jobs[2], jobs[3]
    job1(1)
    step2.execute(step2.dequeue())  # written with k1, read by a worker signing with k2
    job2(2)
    step3.execute(step3.dequeue())  # written with k2, read once k1 is gone
    assert ran.calls == [(1,), (2,)]

    job1(3)  # a straggler still signing with k1
    assert step3.dequeue() is None
    [entry] = step3.dead_letters
    assert entry.reason == "bad_signature"
    assert "key id 'k1', which this reader does not list (it knows 'k2')" in entry.error
    assert len(ran) == 2


def test_accept_unsigned_reads_old_messages_and_signs_new_ones(make_huey: MakeHuey) -> None:
    """While a live queue switches to signing, unsigned messages still run."""
    before = make_huey()
    ran = Recorder()

    @before.versioned_task(version=1, name="switch.job")
    def job(n: int) -> None:
        ran(n)

    job(1)
    during = make_huey(serializer=signer("k1", accept_unsigned=True))

    @during.versioned_task(version=1, name="switch.job")
    def job_during(n: int) -> None:
        ran(n)

    job_during(2)
    assert [raw[:4] for raw in queued(during)] == [b"VTE1", b"VTS1"]
    during.execute(during.dequeue())
    during.execute(during.dequeue())
    assert ran.calls == [(1,), (2,)]
    assert repr(during.serializer) == (
        "VersionedSerializer(key_ids=('k1',), signing_key='k1', accept_unsigned=True)"
    )


# -- a real consumer -------------------------------------------------------------------------


def test_a_consumer_runs_only_correctly_signed_messages(make_huey: MakeHuey) -> None:
    """Old-key and new-key messages run; tampered, unknown-key, forged and unsigned ones
    are dead-lettered as bad_signature and never run."""
    old_producer = make_huey(serializer=signer("k1"))
    new_producer = make_huey(serializer=signer("k2", "k1", signing_key="k2"))
    unsigned_producer = make_huey()
    sent = {}
    for label, app in (("old", old_producer), ("new", new_producer), ("bare", unsigned_producer)):

        @app.versioned_task(version=1, name="sig.job")
        def job(n: int) -> None: ...

        job(5)
        [sent[label]] = queued(app)
        app.storage.flush_queue()

    bad = [
        tampered(sent["old"]),
        forged(sent["old"]),
        resigned_with_unknown_key(sent["new"]),
        sent["bare"],
        sent["new"][:-3],
    ]
    storage = old_producer.storage
    for raw in (sent["old"], *bad[:3], sent["new"], *bad[3:]):
        storage.enqueue(raw)

    worker = make_huey(serializer=signer("k2", "k1", signing_key="k2"))
    ran = Recorder()

    @worker.versioned_task(version=1, name="sig.job")
    def job_in_worker(n: int) -> None:
        ran(n)

    with running_consumer(worker):
        wait_for(lambda: len(ran) == 2 and len(worker.dead_letters) == len(bad))
        time.sleep(0.2)  # anything that should not run would have by now

    assert ran.calls == [(5,), (5,)]
    entries = list(worker.dead_letters)
    assert {entry.reason for entry in entries} == {"bad_signature"}
    assert sorted(entry.raw for entry in entries) == sorted(bad)
    assert worker.pending_count() == 0


# -- any damage is refused -------------------------------------------------------------------


def _signed_app() -> tuple[VersionedHuey, Any, Recorder]:
    app = VersionedMemoryHuey("damage", serializer=signer("k2", "k1", signing_key="k1"))
    ran = Recorder()

    @app.versioned_task(version=1, name="damage.job", retries=2)
    def job(n: int, note: str = "") -> None:
        ran(n)

    return app, job, ran


def _signed_message() -> bytes:
    """One signed message of damage.job, the same for every example."""
    if not _SIGNED:
        app, job, _ = _signed_app()
        job(7, note="x")
        _SIGNED.extend(queued(app))
    return _SIGNED[0]


_SIGNED: list[bytes] = []


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_single_byte_change_or_truncation_of_a_signed_message_never_runs(
    data: st.DataObject,
) -> None:
    """Whatever byte is changed, or wherever the message is cut, nothing runs and the
    bytes are kept as a dead letter (bad_signature once past the 4-byte prefix)."""
    app, _, ran = _signed_app()
    raw = _signed_message()
    if data.draw(st.booleans(), label="truncate"):
        at = data.draw(st.integers(0, len(raw) - 1), label="length")
        bad = raw[:at]
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="index")
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
        bad = raw[:at] + bytes([byte]) + raw[at + 1 :]
    app.storage.enqueue(bad)
    task = app.dequeue()
    assert task is None
    assert len(ran) == 0
    [entry] = app.dead_letters
    assert entry.raw == bad
    if at >= 4:
        assert entry.reason == "bad_signature"
    else:
        assert entry.reason in ("bad_signature", "undecodable")
    # The undamaged message still runs.
    app.storage.enqueue(raw)
    app.execute(app.dequeue())
    assert ran.calls == [(7,)]


@pytest.mark.parametrize(
    "clone", [copy.copy, copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))]
)
def test_a_serializer_keeps_its_keys_and_limits_when_copied_or_pickled(clone: Any) -> None:
    """A copy reads what the original signed and signs what the original reads."""
    original = signer("k2", "k1", signing_key="k2", max_size=8192, max_depth=20)
    twin = clone(original)
    assert repr(twin) == repr(original)
    assert twin.deserialize(original.serialize((1, 2))) == (1, 2)
    assert original.deserialize(twin.serialize({3})) == {3}
    assert (twin.max_size, twin.max_depth) == (8192, 20)
