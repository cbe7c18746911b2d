"""Every value Huey stores crosses the queue without pickle: results of any type,
Error and SKIPPED, nested messages, pydantic models, exceptions for ``on_error``
handlers, and typed results with ``result_model``.
"""

from __future__ import annotations

import datetime
import decimal
import sys
import types
import typing
import uuid
from typing import Any

import pytest
from helpers import MakeHuey, running_consumer, wait_for
from huey import MemoryHuey
from huey.exceptions import TaskException
from huey.registry import Message
from huey.utils import SKIPPED, Error
from pydantic import BaseModel

from versioned_tasks import (
    DecodeError,
    EncodeError,
    InvalidResult,
    RemoteException,
    SchemaError,
    VersionedMemoryHuey,
    VersionedSerializer,
)


class Totals(BaseModel):
    """A result model for the tests below."""

    invoice: int
    amount: decimal.Decimal
    at: datetime.datetime
    tags: list[str] = []


class Unregistered(BaseModel):
    name: str


class AppError(Exception):
    """A user-defined exception with its own constructor and repr."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"AppError({self.code})"


class Unprintable:
    pass


UTC = datetime.UTC
STORED_VALUES: list[Any] = [
    None,
    True,
    -(2**70),
    1.5,
    "text",
    ["a", 1, None],
    {"k": [1, 2]},
    {"$looks": "like a tag"},
    {1: "int key", (2, 3): "tuple key"},
    (1, (2, 3), [4]),
    (),
    datetime.datetime(2026, 11, 28, 9, 30, 1, 5),
    datetime.datetime(2026, 11, 28, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.date(2026, 11, 28),
    datetime.time(23, 59, 58),
    datetime.timedelta(days=-1, seconds=5, microseconds=7),
    b"\x00\xffbytes",
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("12.3400"),
    {1, "two", (3, 4)},
    frozenset({"x"}),
    float("inf"),
]


@pytest.mark.parametrize("value", STORED_VALUES, ids=repr)
def test_stored_values_come_back_equal_and_of_the_same_type(
    make_huey: MakeHuey, value: Any
) -> None:
    """Huey's key-value store (results, locks, revocations) keeps types exactly."""
    app = make_huey()
    app.put("value", value)
    back = app.get("value")
    assert back == value
    assert type(back) is type(value)


def test_error_and_skipped_come_back_as_huey_objects(make_huey: MakeHuey) -> None:
    """Huey's Error result and SKIPPED marker survive the store."""
    app = make_huey()
    app.put("error", Error({"error": "ValueError('x')", "retries": 0, "traceback": "tb"}))
    app.put("skipped", SKIPPED)
    error = app.get("error")
    assert isinstance(error, Error)
    assert error.metadata["traceback"] == "tb"
    assert app.get("skipped") is SKIPPED


def test_a_nested_message_comes_back_as_a_message(make_huey: MakeHuey) -> None:
    """A Message inside a value keeps its fields and its own callbacks."""
    app = make_huey()
    eta = datetime.datetime(2030, 1, 1, 12, 0)
    inner = Message("c1", "pkg.cb", None, 0, 0, None, (1,), {}, None, None, None, None, None)
    outer = Message(
        "m1", "pkg.job", eta, 2, 5, 3, (1, "a"), {"k": b"v"}, inner, None, None, None, 30.0
    )
    app.put("message", {"wrapped": outer})
    back = app.get("message")["wrapped"]
    assert isinstance(back, Message)
    assert (back.id, back.name, back.eta, back.retries, back.retry_delay) == (
        "m1",
        "pkg.job",
        eta,
        2,
        5,
    )
    assert (back.priority, back.args, back.kwargs, back.timeout) == (
        3,
        (1, "a"),
        {"k": b"v"},
        30.0,
    )
    assert isinstance(back.on_complete, Message)
    assert (back.on_complete.id, back.on_complete.args) == ("c1", (1,))


def test_a_pydantic_model_without_result_model_comes_back_as_its_json_data(
    make_huey: MakeHuey,
) -> None:
    """A model nobody declared as a result_model is stored as its JSON data."""
    app = make_huey()
    app.put("model", Unregistered(name="n"))
    assert app.get("model") == {"name": "n"}


def test_a_value_json_cannot_carry_fails_at_put_with_its_path(make_huey: MakeHuey) -> None:
    """put() of an object the envelope cannot carry raises, naming where it is."""
    app = make_huey()
    with pytest.raises(EncodeError, match=r"Cannot encode Unprintable at value\[1\]\.x") as info:
        app.put("bad", [0, {"x": Unprintable()}])
    assert info.value.path == "value[1].x"
    assert app.get("bad") is None


# -- task arguments that JSON cannot say -----------------------------------------------


def test_an_unencodable_argument_fails_at_enqueue_naming_task_and_path(
    make_huey: MakeHuey,
) -> None:
    """A plain task's argument is checked at enqueue: task name and args[2].when."""
    app = make_huey()

    @app.task(name="values.plain")
    def plain(a: Any, b: Any, c: Any) -> None:
        pass

    with pytest.raises(EncodeError, match=r"Task '\S*values\.plain'.*args\[2\]\.when") as info:
        plain(1, 2, {"when": Unprintable()})
    assert info.value.path == "args[2].when"
    assert app.pending_count() == 0


def test_on_a_plain_huey_the_error_names_the_task_too() -> None:
    """VersionedSerializer on a plain Huey names the task and the path as well."""
    app = MemoryHuey("plain", serializer=VersionedSerializer())

    @app.task(name="values.other")
    def other(a: Any) -> None:
        pass

    with pytest.raises(EncodeError, match=r"Task '\S*values\.other'.*args\[0\]\[1\]") as info:
        other([1, Unprintable()])
    assert info.value.path == "args[0][1]"
    assert len(app) == 0


def test_a_callback_argument_is_checked_at_enqueue_with_its_path(make_huey: MakeHuey) -> None:
    """A pipeline step's bad argument is found before anything is stored."""
    app = make_huey()

    @app.versioned_task(version=1, name="values.first")
    def first(n: int) -> int:
        return n

    @app.task()
    def second(a: Any, b: Any) -> None:
        pass

    with pytest.raises(EncodeError, match=r"on_complete\.args\[0\]") as info:
        app.enqueue(first.s(1).then(second, Unprintable()))
    assert info.value.path == "on_complete.args[0]"
    assert app.pending_count() == 0


def test_args_that_are_not_a_tuple_are_kept_as_given(make_huey: MakeHuey) -> None:
    """task.schedule(3, delay=60) stores args=3 as Huey does, and lists it."""
    app = make_huey()

    @app.task()
    def job(n: int) -> int:
        return n

    result = job.schedule(3, delay=60)
    task = app.dequeue()
    assert task is not None
    assert task.id == result.id
    assert task.args == 3
    app.execute(task)  # eta in the future: Huey moves it to the schedule
    [scheduled] = app.scheduled()
    assert (scheduled.id, scheduled.args) == (result.id, 3)


# -- exceptions handed to on_error handlers --------------------------------------------


def _roundtrip(value: Any) -> Any:
    app = VersionedMemoryHuey("roundtrip")
    app.put("v", value)
    return app.get("v")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_builtin_exception_comes_back_as_its_own_type() -> None:
    """The stand-in derives from the original class and from RemoteException."""
    back = _roundtrip(_raised(KeyError("missing")))
    assert isinstance(back, KeyError)
    assert isinstance(back, RemoteException)
    assert type(back).__name__ == "KeyError"
    assert repr(back) == "KeyError('missing')"
    assert str(back) == "'missing'"
    assert back.type_name == "builtins.KeyError"
    assert back.remote_traceback is not None
    assert "_raised" in back.remote_traceback


def test_a_user_exception_keeps_its_attributes_without_running_its_init() -> None:
    """args and attributes are restored; repr and isinstance match the original."""
    back = _roundtrip(_raised(AppError(7, "seven")))
    assert isinstance(back, AppError)
    assert isinstance(back, RemoteException)
    assert (back.code, back.detail, back.args) == (7, "seven", (7, "seven"))
    assert repr(back) == "AppError(7)"
    assert back.type_name == f"{__name__}.AppError"


def test_an_exception_with_unencodable_attributes_still_crosses() -> None:
    """What JSON cannot carry is left out of the stand-in; the failure is never lost."""
    exc = AppError(1)
    exc.handle = Unprintable()  # type: ignore[attr-defined]
    back = _roundtrip(exc)
    assert isinstance(back, AppError)
    assert back.code == 1
    assert not hasattr(back, "handle")


def test_an_exception_that_refers_to_itself_is_written_once() -> None:
    """A cycle through args or attributes ends in a plain stand-in, not a deep copy."""
    exc = ValueError("loop")
    exc.me = exc  # type: ignore[attr-defined]
    back = _roundtrip(exc)
    assert isinstance(back, ValueError)
    assert type(back.me) is RemoteException
    assert back.me.type_name == "builtins.ValueError"


def test_a_class_that_is_not_loaded_gives_a_plain_remote_exception() -> None:
    """Nothing is imported to rebuild an exception: an unknown class stays generic."""
    module = types.ModuleType("values_only_here")

    class Gone(Exception):
        pass

    Gone.__module__ = module.__name__
    Gone.__qualname__ = "Gone"
    module.Gone = Gone  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    app = VersionedMemoryHuey("gone")
    app.put("v", _raised(Gone("bye")))
    del sys.modules[module.__name__]
    back = app.get("v")
    assert type(back) is RemoteException
    assert (back.type_name, back.message) == ("values_only_here.Gone", "bye")
    assert "Gone" in (back.remote_traceback or "")
    assert "values_only_here" not in sys.modules


def test_a_module_getattr_is_never_called_to_find_a_class() -> None:
    """Lookup reads module dictionaries only: a lazy-import hook does not run."""
    calls: list[str] = []
    module = types.ModuleType("values_lazy")

    def lazy(name: str) -> Any:
        calls.append(name)
        raise AttributeError(name)

    module.__getattr__ = lazy  # type: ignore[method-assign]
    sys.modules[module.__name__] = module
    try:
        app = VersionedMemoryHuey("lazy")
        raw = VersionedSerializer().serialize(ValueError("x"))
        forged = raw.replace(b'"builtins"', b'"values_lazy"').replace(
            b'"ValueError"', b'"Lazy"', 1
        )
        app.storage.put_data("v", forged)
        back = app.get("v")
    finally:
        del sys.modules[module.__name__]
    assert type(back) is RemoteException
    assert calls == []


def test_exceptions_written_by_0_1_0_still_read() -> None:
    """The 0.1.0 form [type, message] decodes to a plain RemoteException."""
    app = VersionedMemoryHuey("old")
    app.storage.put_data("v", b'VTE1{"kind":"value"}\n{"$exception":["pkg.Boom","went boom"]}')
    back = app.get("v")
    assert type(back) is RemoteException
    assert (back.type_name, back.message, back.remote_traceback) == ("pkg.Boom", "went boom", None)


def test_a_stand_in_re_encodes_to_the_same_stand_in() -> None:
    """A handler that fails and retries sends its exception argument on unchanged."""
    once = _roundtrip(_raised(AppError(3)))
    twice = _roundtrip(once)
    assert type(twice) is type(once)
    assert (twice.code, twice.type_name, twice.remote_traceback) == (
        3,
        once.type_name,
        once.remote_traceback,
    )


def test_an_on_error_handler_gets_the_original_type_through_a_consumer(
    make_huey: MakeHuey,
) -> None:
    """A real consumer: a plain on_error handler sees AppError, with its traceback."""
    app = make_huey()
    seen: list[Any] = []

    @app.versioned_task(version=1, name="values.fails")
    def fails(code: int) -> None:
        raise AppError(code, "from the worker")

    @app.task()
    def handler(exc: Any) -> None:
        seen.append(exc)

    app.enqueue(fails.s(42).error(handler))
    with running_consumer(app):
        wait_for(lambda: bool(seen))
    [exc] = seen
    assert isinstance(exc, AppError)
    assert isinstance(exc, RemoteException)
    assert repr(exc) == "AppError(42)"
    assert exc.detail == "from the worker"
    assert "raise AppError(code" in (exc.remote_traceback or "")


# -- typed results ---------------------------------------------------------------------


def test_result_model_gives_the_model_back_through_a_consumer(make_huey: MakeHuey) -> None:
    """The worker validates the return value; Result.get() returns the model."""
    app = make_huey()

    @app.versioned_task(version=1, name="values.totals", result_model=Totals)
    def totals(invoice: int) -> dict[str, Any]:
        return {"invoice": invoice, "amount": "10.50", "at": "2026-11-28T10:00:00Z"}

    result = totals(5)
    with running_consumer(app):
        value = result.get(blocking=True, timeout=10)
    assert isinstance(value, Totals)
    assert value == Totals(
        invoice=5,
        amount=decimal.Decimal("10.50"),
        at=datetime.datetime(2026, 11, 28, 10, tzinfo=UTC),
    )


def test_a_result_model_instance_passes_down_a_pipeline(make_huey: MakeHuey) -> None:
    """The next step of a pipeline receives the model, typed or plain."""
    app = make_huey()
    received: list[Any] = []

    @app.versioned_task(version=1, name="values.make", result_model=Totals)
    def make(invoice: int) -> Totals:
        return Totals(invoice=invoice, amount=decimal.Decimal(1), at=datetime.datetime(2026, 1, 1))

    @app.versioned_task(version=1, name="values.use")
    def use(totals: Totals) -> int:
        received.append(totals)
        return totals.invoice

    @app.task()
    def plain_use(n: int, totals: Any) -> int:
        received.append(totals)
        return n

    typed = app.enqueue(make.s(8).then(use))
    plain = app.enqueue(make.s(9).then(plain_use, 0))
    with running_consumer(app):
        assert typed.get(blocking=True, timeout=10)[-1] == 8
        plain.get(blocking=True, timeout=10)
    assert sorted(item.invoice for item in received) == [8, 9]
    assert all(type(item) is Totals for item in received)


def test_a_return_value_that_does_not_validate_fails_the_task(make_huey: MakeHuey) -> None:
    """InvalidResult names the task, the version and the field; get() raises."""
    app = make_huey()

    @app.versioned_task(version=2, name="values.bad_total", result_model=Totals)
    def bad_total(invoice: int) -> dict[str, Any]:
        return {"invoice": "not a number"}

    with pytest.raises(InvalidResult, match=r"'values\.bad_total' version 2.*invoice"):
        bad_total.call_local(1)
    result = bad_total(1)
    task = app.dequeue()
    assert task is not None
    app.execute(task)
    with pytest.raises(TaskException, match="InvalidResult"):
        result.get()


def test_call_local_returns_the_model() -> None:
    """call_local validates as the worker does."""
    app = VersionedMemoryHuey("local")

    @app.versioned_task(version=1, name="values.local", result_model=Unregistered)
    def local(name: str) -> dict[str, str]:
        return {"name": name}

    assert local.call_local("x") == Unregistered(name="x")


def test_result_model_must_be_a_pydantic_model() -> None:
    """Declaring a result_model that is not a model is a SchemaError at import time."""
    app = VersionedMemoryHuey("declare")
    with pytest.raises(SchemaError, match=r"'values\.wrong' version 1: result_model must be"):

        @app.versioned_task(version=1, name="values.wrong", result_model=int)  # type: ignore[arg-type]
        def wrong() -> int:
            return 1


def test_a_stored_result_that_no_longer_validates_is_an_error_not_a_dict() -> None:
    """A result model that changed under a stored result raises on read, loudly."""
    app = VersionedMemoryHuey("changed")

    @app.versioned_task(version=1, name="values.changed", result_model=Totals)
    def changed() -> None:
        pass

    app.storage.put_data(
        "r",
        b'VTE1{"kind":"value"}\n{"$model":["' + f"{__name__}.Totals".encode() + b'",{"x":1}]}',
    )
    with pytest.raises(ValueError, match="no longer validates as"):
        app.get("r")


def test_a_versioned_on_error_handler_takes_an_exception_typed_parameter(
    make_huey: MakeHuey,
) -> None:
    """A versioned handler declared with ``exc: AppError`` receives the stand-in."""
    app = make_huey()
    seen: list[Any] = []

    @app.versioned_task(version=1, name="values.fails_too")
    def fails_too(code: int) -> None:
        raise AppError(code)

    @app.versioned_task(version=1, name="values.on_failure")
    def on_failure(context: str, exc: AppError | None = None) -> None:
        seen.append((context, exc))

    app.enqueue(fails_too.s(5).error(on_failure.s("billing")))
    with running_consumer(app):
        wait_for(lambda: bool(seen))
    [(context, exc)] = seen
    assert context == "billing"
    assert isinstance(exc, AppError)
    assert exc.code == 5
    assert len(app.dead_letters) == 0


def test_an_exception_parameter_refuses_another_exception_type(make_huey: MakeHuey) -> None:
    """A handler typed for one exception class does not silently take another."""
    app = make_huey()

    @app.versioned_task(version=1, name="values.raises_key")
    def raises_key() -> None:
        raise KeyError("k")

    @app.versioned_task(version=1, name="values.only_app_errors")
    def only_app_errors(exc: AppError) -> None:
        pass

    app.enqueue(raises_key.s().error(only_app_errors))
    task = app.dequeue()
    assert task is not None
    app.execute(task)  # the handler call is checked as Huey enqueues it
    assert app.pending_count() == 0
    [entry] = app.dead_letters
    assert (entry.reason, entry.task) == ("invalid_payload", "values.only_app_errors")
    assert "expected an exception of type AppError" in entry.error


def test_a_handler_typed_remote_exception_takes_any_failure(make_huey: MakeHuey) -> None:
    """``exc: RemoteException`` accepts whatever failed, as its stand-in."""
    app = make_huey()
    seen: list[Any] = []

    @app.versioned_task(version=1, name="values.fails_key")
    def fails_key() -> None:
        raise KeyError("gone")

    @app.versioned_task(version=1, name="values.any_failure")
    def any_failure(exc: RemoteException) -> None:
        seen.append(exc)

    app.enqueue(fails_key.s().error(any_failure))
    with running_consumer(app):
        wait_for(lambda: bool(seen))
    [exc] = seen
    assert isinstance(exc, KeyError)
    assert exc.type_name == "builtins.KeyError"
    assert len(app.dead_letters) == 0


def test_an_annotation_pydantic_cannot_validate_is_a_schema_error() -> None:
    """Not pydantic's own error: a SchemaError naming the task and the fix."""
    app = VersionedMemoryHuey("annotations")
    with pytest.raises(SchemaError, match=r"'values\.opaque' version 1: pydantic cannot build"):

        @app.versioned_task(version=1, name="values.opaque")
        def opaque(thing: Unprintable) -> None:
            pass

    assert "values.opaque" not in app.schema.specs


# -- what the review of this release found ----------------------------------------------


def test_an_unreadable_revocation_record_dead_letters_the_task(make_huey: MakeHuey) -> None:
    """Huey reads revocations after the pop: a record that cannot be read (junk,
    an old pickle, a signature of a dropped key) keeps the task as a dead letter."""
    app = make_huey()

    @app.versioned_task(version=1, name="values.guarded")
    def guarded(n: int) -> int:
        return n

    app.storage.put_data(app._task_key(guarded, "rt"), b"\x80\x04junk")
    guarded(1)
    task = app.dequeue()
    assert task is not None
    assert app.execute(task) is None
    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("undecodable", "values.guarded", 1)
    assert "revocation record" in entry.error
    # A caller outside the worker sees the error itself.
    with pytest.raises(DecodeError):
        guarded.is_revoked()
    # Once the record is fixed, the replay runs.
    app.restore_all(guarded)
    app.dead_letters.replay(entry.id)
    task = app.dequeue()
    assert task is not None
    assert app.execute(task) == 1


def test_an_exception_with_a_huge_attribute_still_reaches_its_handler(
    make_huey: MakeHuey,
) -> None:
    """Long text is cut and long attributes are left out, so the handler call fits."""
    app = make_huey()
    seen: list[Any] = []

    @app.versioned_task(version=1, name="values.fetch")
    def fetch() -> None:
        failure = HTTPFailure("x" * 5_000_000)
        failure.body = "y" * 5_000_000  # type: ignore[attr-defined]
        failure.status = 502  # type: ignore[attr-defined]
        raise failure

    @app.task()
    def report(exc: Any) -> None:
        seen.append(exc)

    app.enqueue(fetch.s().error(report))
    for _ in range(2):
        task = app.dequeue()
        assert task is not None
        app.execute(task)
    [exc] = seen
    assert exc.status == 502
    assert not hasattr(exc, "body")
    assert len(exc.message) == 32 * 1024
    assert len(app.dead_letters) == 0


class HTTPFailure(Exception):
    """A failure that carries the whole response."""


class _Registering(Exception):
    """Runs code of its own when subclassed or instantiated."""

    subclassed: typing.ClassVar[list[str]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _Registering.subclassed.append(cls.__name__)
        super().__init_subclass__(**kwargs)


class _Constructing(Exception):
    built: typing.ClassVar[list[Any]] = []

    def __new__(cls, *args: Any) -> _Constructing:
        _Constructing.built.append(args)
        return super().__new__(cls, *args)


@pytest.mark.parametrize("cls", [_Registering, _Constructing])
def test_no_code_of_the_exception_class_runs_when_it_is_read(cls: type[Exception]) -> None:
    """A class with a metaclass, __init_subclass__ or __new__ of its own gets a plain
    RemoteException: reading bytes never runs the app's code."""
    raw = VersionedSerializer().serialize(cls("crafted", "rm -rf /"))
    _Registering.subclassed.clear()
    _Constructing.built.clear()
    back = VersionedSerializer().deserialize(raw)
    assert type(back) is RemoteException
    assert back.type_name.endswith(cls.__qualname__)
    assert _Registering.subclassed == []
    assert _Constructing.built == []


@pytest.mark.parametrize(
    "body",
    [b'{"$timedelta":[]}', b'{"$exception":{}}', b'{"$error":{"$timedelta":[]}}', b'{"$model":1}'],
)
def test_malformed_tags_are_decode_errors(body: bytes) -> None:
    """Whatever the shape of a tag's payload, reading it raises DecodeError only."""
    with pytest.raises(DecodeError, match="Malformed"):
        VersionedSerializer().deserialize(b'VTE1{"kind":"value"}\n' + body)


def test_a_malformed_exception_argument_is_invalid_payload(make_huey: MakeHuey) -> None:
    """An exception-typed parameter given something else is invalid_payload."""
    app = make_huey()

    @app.versioned_task(version=1, name="values.handler_of")
    def handler_of(exc: Exception) -> None:
        pass

    handler_of.s(ValueError("x"))  # fine
    raw = (
        b'VTE1{"kind":"task","task":"values.handler_of","v":1,"id":"x1","at":1}\n'
        b'{"exc":{"message":"no type"}}'
    )
    app.storage.enqueue(raw)
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert entry.reason == "invalid_payload"
    assert "not an exception as versioned_tasks writes one" in entry.error


def test_an_integer_beyond_64_bits_survives_an_upcast(make_huey: MakeHuey) -> None:
    """Bodies handed to upcasters are parsed exactly: no big integer becomes a float."""
    old = make_huey()

    @old.versioned_task(version=1, name="values.ledger")
    def ledger_v1(amount: int) -> None: ...

    new = make_huey()
    seen: list[Any] = []

    @new.versioned_task(version=2, name="values.ledger")
    def ledger(amount: int, unit: str) -> None:
        seen.append(amount)

    @new.upcaster("values.ledger", from_version=1)
    def add_unit(payload: dict[str, Any]) -> dict[str, Any]:
        assert type(payload["amount"]) is int
        return {**payload, "unit": "wei"}

    big = 2**64 + 12345
    ledger_v1(big)
    task = new.dequeue()
    assert task is not None
    new.execute(task)
    assert seen == [big]
