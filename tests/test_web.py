"""The console over HTTP (Starlette's test client) on real storages: every route,
its status codes, the token and CSRF refusals, and escaping of payloads.

Dead letters are made as in production: an "old" app enqueues, a "new" app on
the same queue dequeues and dead-letters what it cannot run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from helpers import queued, wait_for

with warnings.catch_warnings():
    # Starlette 1.x prefers its httpx fork for the test client and warns when it
    # finds httpx itself, which works the same for these tests.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from versioned_tasks import DeadLetterNotFound, VersionedHuey, VersionedSqliteHuey
from versioned_tasks.cli import main
from versioned_tasks.web import create_app
from versioned_tasks.web.security import CSRF_COOKIE, SESSION_COOKIE

MakeHuey = Callable[..., VersionedHuey]

TOKEN = "console-test-token-0001"


def declare_new(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int, copies: int = 1) -> int:
        return invoice_id * copies

    return send_invoice


def make_dead(make_huey: MakeHuey) -> VersionedHuey:
    """Under the new app: two invalid_payload invoices ('abc', 'x1'), one unknown
    mail task, and one undecodable message holding a <script> tag."""
    old = make_huey()

    @old.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: str) -> str:
        return invoice_id

    @old.versioned_task(version=1, name="mail.send")
    def send(to: str) -> str:
        return to

    send_invoice("abc")
    send("<script>alert('to')</script>@example.com")
    send_invoice("x1")
    old.storage.enqueue(b"<script>alert(1)</script> not an envelope")
    new = make_huey()
    declare_new(new)
    while new.dequeue() is not None:
        pass
    assert len(new.dead_letters) == 4
    return new


def entry_of(app: VersionedHuey, reason: str) -> Any:
    return next(e for e in app.dead_letters if e.reason == reason)


def log_in(client: TestClient) -> str:
    """Log in with the token; returns the CSRF value to put in forms."""
    client.get("/dead-letters")
    csrf = client.cookies[CSRF_COOKIE]
    response = client.post("/login", data={"csrf": csrf, "token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303
    assert client.cookies.get(SESSION_COOKIE)
    return csrf


@pytest.fixture
def dead(make_huey: MakeHuey) -> VersionedHuey:
    return make_dead(make_huey)


@pytest.fixture
def client(dead: VersionedHuey) -> TestClient:
    return TestClient(create_app(dead, token=TOKEN))


# -- reading ------------------------------------------------------------------------


def test_every_page_answers(dead: VersionedHuey, client: TestClient) -> None:
    """Every read-only route renders (200) on every backend."""
    entry = entry_of(dead, "invalid_payload")
    paths = [
        "/",
        "/dead-letters",
        "/dead-letters?reason=invalid_payload&task=billing.send_invoice&version=1&age=1h",
        f"/dead-letters/{entry.id}",
        f"/dead-letters/{entry.id}/edit",
        f"/dead-letters/preview?id={entry.id}",
        "/dead-letters/preview?reason=invalid_payload",
        "/dead-letters/purge?reason=unknown_task",
        "/census",
        "/fleet",
        "/static/console.css",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    raw = client.get(f"/dead-letters/{entry.id}/raw")
    assert raw.content == entry.raw
    assert raw.headers["content-type"] == "application/octet-stream"


def test_an_unknown_entry_is_404(client: TestClient) -> None:
    """Entry, raw bytes and edit form of an id not in the store answer 404."""
    for path in ("/dead-letters/nope", "/dead-letters/nope/raw", "/dead-letters/nope/edit"):
        response = client.get(path)
        assert response.status_code == 404
        assert "No dead letter with id &#39;nope&#39;" in response.text


def history_rows(html: str) -> list[list[str]]:
    """The cells of the overview's table of samples, newest first."""
    table = html.split('<table class="numbers history-table">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in rows]


def test_the_overview_draws_dead_letters_by_reason_over_time(dead: VersionedHuey) -> None:
    """The console samples the counts by reason in the background while it runs and
    keeps the newest few: a line per reason in an SVG chart and a table, escaped like
    the rest; a new kind of dead letter shows up in a later sample."""
    with TestClient(create_app(dead, history_interval=0.02, history_size=3)) as client:
        check_history(dead, client)


def check_history(dead: VersionedHuey, client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "Dead letters by reason over time" in page.text
    assert "<svg" in page.text
    assert "<script" not in page.text.split("<svg", 1)[1]
    drawn = set(re.findall(r'<polyline class="reason-line" data-reason="(\w+)"', page.text))
    assert drawn == {"invalid_payload", "unknown_task", "undecodable"}
    header, newest = history_rows(page.text)[:2]
    assert dict(zip(header[1:], newest[1:], strict=True)) == {
        "unknown_task": "1",
        "invalid_payload": "2",
        "undecodable": "1",
        "all": "4",
    }

    dead.dead_letters.add(reason="retired", raw=b"r", error="retired", task="t", version=1)

    def sampled_again() -> bool:
        text = client.get("/").text
        return 'data-reason="retired"' in text and "(3 so far)" in text

    wait_for(sampled_again)
    rows = history_rows(client.get("/").text)
    assert "retired" in rows[0]
    assert rows[1][-1] == "5"  # the newest sample has every entry
    assert len(rows) == 4  # a header and the 3 samples kept


def test_a_console_without_its_lifespan_samples_as_pages_are_served(dead: VersionedHuey) -> None:
    """Mounted where no lifespan reaches it, the console takes a sample when a page is
    served and the newest is older than the interval: here, the first page only."""
    client = TestClient(create_app(dead, history_interval=3600))
    for path in ("/dead-letters", "/", "/"):
        assert client.get(path).status_code == 200
    page = client.get("/").text
    assert "(1 so far)" in page
    assert history_rows(page)[1][-1] == "4"


def test_the_overview_without_history_says_so(dead: VersionedHuey) -> None:
    client = TestClient(create_app(dead, history_interval=0))
    page = client.get("/")
    assert page.status_code == 200
    assert "No history" in page.text
    assert "<svg" not in page.text


def test_the_list_shows_counts_and_filters(dead: VersionedHuey, client: TestClient) -> None:
    """The list counts by reason and task, and a filter keeps only matches."""
    page = client.get("/dead-letters").text
    assert "4 entries in the store" in page
    assert re.search(r"invalid_payload</a></td><td>2<", page)
    filtered = client.get("/dead-letters?reason=unknown_task").text
    assert filtered.count('name="id"') == 1
    assert "mail.send" in filtered


def test_pages_follow_the_cursor(make_huey: MakeHuey) -> None:
    """With more entries than a page, 'Older' leads to the rest, none twice."""
    app = make_huey()
    for i in range(60):
        app.dead_letters.add(reason="undecodable", raw=b"x%d" % i, error=f"e{i}")
    client = TestClient(create_app(app))
    first = client.get("/dead-letters").text
    older = re.search(r'href="([^"]*cursor=[^"]*)" rel="next"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).text
    ids = re.findall(r'name="id" value="([0-9a-f]+)"', first + second)
    assert len(ids) == len(set(ids)) == 60
    deep = client.get("/dead-letters?offset=55").text
    assert len(re.findall(r'name="id" value=', deep)) == 5


def test_a_script_payload_is_shown_as_text(dead: VersionedHuey, client: TestClient) -> None:
    """Bytes and arguments holding <script> are escaped on every page that shows them."""
    junk = entry_of(dead, "undecodable")
    mail = entry_of(dead, "unknown_task")
    for entry in (junk, mail):
        page = client.get(f"/dead-letters/{entry.id}").text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(" in page
    assert "<script>" not in client.get("/dead-letters").text


def test_the_entry_page_shows_header_arguments_bytes_and_the_dry_run(
    dead: VersionedHuey, client: TestClient
) -> None:
    """Error, header fields, arguments as JSON, hex and text of the bytes, the verdict."""
    entry = entry_of(dead, "invalid_payload")
    page = client.get(f"/dead-letters/{entry.id}").text
    assert "does not fit today&#39;s model" in page
    assert "&#34;task&#34;: &#34;billing.send_invoice&#34;" in page
    assert "&#34;invoice_id&#34;: &#34;abc&#34;" in page or "&#34;x1&#34;" in page
    assert "00000000  56 54 45 31" in page  # VTE1
    assert "Dry run: would fail again (invalid_payload)" in page
    assert "No live worker" in page


def test_the_census_streams_progress_then_the_tables(client: TestClient) -> None:
    """The census page carries a progress bar and ends with the counts."""
    page = client.get("/census").text
    assert "<progress" in page
    assert "4 dead-lettered" in page
    assert "billing.send_invoice" in page


def test_the_fleet_page_says_when_no_worker_is_live(client: TestClient) -> None:
    """Without heartbeats the fleet page says a replay cannot be checked."""
    page = client.get("/fleet").text
    assert "No live worker is publishing a heartbeat" in page


# -- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_without_a_token_the_console_is_read_only(dead: VersionedHuey) -> None:
    """No token: a banner says so and every write is refused (403), changing nothing."""
    client = TestClient(create_app(dead))
    entry = entry_of(dead, "invalid_payload")
    assert "Read-only console" in client.get("/dead-letters").text
    csrf = client.cookies[CSRF_COOKIE]
    posts = [
        (f"/dead-letters/{entry.id}/replay", {}),
        (f"/dead-letters/{entry.id}/delete", {}),
        (f"/dead-letters/{entry.id}/edit", {"arguments": '{"invoice_id": 1}'}),
        ("/dead-letters/replay", {"id": entry.id}),
        ("/dead-letters/delete", {"id": entry.id}),
        ("/dead-letters/purge", {"reason": "invalid_payload"}),
    ]
    for path, data in posts:
        response = client.post(path, data={"csrf": csrf, **data})
        assert response.status_code == 403, path
        assert "read-only" in response.text
    assert len(dead.dead_letters) == 4
    login = client.post("/login", data={"csrf": csrf, "token": TOKEN})
    assert login.status_code == 403


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_writes_need_the_login_and_the_csrf_value(dead: VersionedHuey, client: TestClient) -> None:
    """With a token: refused before login, refused with a wrong token, refused without
    or with a wrong CSRF value; accepted with both."""
    entry = entry_of(dead, "unknown_task")
    client.get("/")
    csrf = client.cookies[CSRF_COOKIE]
    path = f"/dead-letters/{entry.id}/delete"
    assert client.post(path, data={"csrf": csrf}).status_code == 403
    wrong = client.post("/login", data={"csrf": csrf, "token": "guess"})
    assert wrong.status_code == 403
    no_csrf_login = client.post("/login", data={"token": TOKEN})
    assert no_csrf_login.status_code == 403
    log_in(client)
    assert "CSRF" in client.post(path, data={}).text
    assert client.post(path, data={"csrf": "x" * 43}).status_code == 403
    dead.dead_letters.get(entry.id)  # still there
    done = client.post(path, data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    with pytest.raises(DeadLetterNotFound):
        dead.dead_letters.get(entry.id)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_script_may_send_the_token_as_a_bearer(dead: VersionedHuey) -> None:
    """Authorization: Bearer <token> allows a write with no cookie and no CSRF value."""
    client = TestClient(create_app(dead, token=TOKEN))
    entry = entry_of(dead, "unknown_task")
    path = f"/dead-letters/{entry.id}/delete"
    assert client.post(path, headers={"authorization": "Bearer nope"}).status_code == 403
    response = client.post(
        path, headers={"authorization": f"Bearer {TOKEN}"}, follow_redirects=False
    )
    assert response.status_code == 303


# -- writing ------------------------------------------------------------------------


def test_replay_of_one_entry(make_huey: MakeHuey) -> None:
    """A replay that now works enqueues the message and removes the entry; one that
    still fails answers 409 and keeps it."""
    app = make_huey()
    send = declare_new(app)
    good = app.dead_letters.add(
        reason="unknown_task",
        raw=app.serialize_task(send.s(5)),
        error="was unknown",
        task="billing.send_invoice",
        version=1,
    )
    bad = app.dead_letters.add(reason="undecodable", raw=b"junk", error="junk")
    client = TestClient(create_app(app, token=TOKEN))
    csrf = log_in(client)
    response = client.post(f"/dead-letters/{good.id}/replay", data={"csrf": csrf})
    assert response.status_code == 200
    assert "replayed, enqueued as task" in response.text
    assert len(queued(app)) == 1
    failed = client.post(f"/dead-letters/{bad.id}/replay", data={"csrf": csrf})
    assert failed.status_code == 409
    assert "failed again (undecodable)" in failed.text
    assert app.dead_letters.get(bad.id).raw == b"junk"


def test_replay_of_the_selected_and_of_the_filter(dead: VersionedHuey, client: TestClient) -> None:
    """The selected ids, or every entry of the filter, go through replay; what still
    fails stays."""
    csrf = log_in(client)
    junk = entry_of(dead, "undecodable")
    response = client.post("/dead-letters/replay", data={"csrf": csrf, "id": [junk.id]})
    assert "Replayed 0 of 1" in response.text
    by_filter = client.post(
        "/dead-letters/replay",
        data={"csrf": csrf, "scope": "filter", "reason": "invalid_payload"},
    )
    assert "Replayed 0 of 2" in by_filter.text
    assert len(dead.dead_letters) == 4
    empty = client.post("/dead-letters/replay", data={"csrf": csrf})
    assert empty.status_code == 400


def test_the_dry_run_changes_nothing(dead: VersionedHuey, client: TestClient) -> None:
    """The preview lists each entry's fate through today's pipeline; nothing moves."""
    page = client.get("/dead-letters/preview?reason=invalid_payload").text
    assert "0 of 2 would be replayed" in page
    assert page.count("would fail again (invalid_payload)") == 2
    assert len(dead.dead_letters) == 4
    assert queued(dead) == []


def test_delete_of_the_selected(dead: VersionedHuey, client: TestClient) -> None:
    """Deleting the selected ids removes them and says how many."""
    csrf = log_in(client)
    ids = [e.id for e in dead.dead_letters if e.reason == "invalid_payload"]
    response = client.post("/dead-letters/delete", data={"csrf": csrf, "id": ids})
    assert "Deleted 2 dead letter(s)." in response.text
    assert len(dead.dead_letters) == 2


def test_purge_by_filter(dead: VersionedHuey, client: TestClient) -> None:
    """The confirmation counts the matches; the purge removes only them; a purge of
    everything needs its box ticked."""
    csrf = log_in(client)
    confirm = client.get("/dead-letters/purge?reason=invalid_payload").text
    assert "2 entries match (reason invalid_payload)" in confirm
    response = client.post("/dead-letters/purge", data={"csrf": csrf, "reason": "invalid_payload"})
    assert "Purged 2 dead letter(s)" in response.text
    assert {e.reason for e in dead.dead_letters} == {"unknown_task", "undecodable"}
    refused = client.post("/dead-letters/purge", data={"csrf": csrf})
    assert refused.status_code == 400
    assert len(dead.dead_letters) == 2
    everything = client.post("/dead-letters/purge", data={"csrf": csrf, "everything": "yes"})
    assert everything.status_code == 200
    assert len(dead.dead_letters) == 0


def test_edit_then_replay(dead: VersionedHuey, client: TestClient) -> None:
    """Edited arguments that are not JSON or do not fit the model are shown again with
    the error (422) and change nothing; valid ones are enqueued and the entry goes."""
    csrf = log_in(client)
    entry = entry_of(dead, "invalid_payload")
    form = client.get(f"/dead-letters/{entry.id}/edit").text
    assert "&#34;invoice_id&#34;" in form
    path = f"/dead-letters/{entry.id}/edit"
    not_json = client.post(path, data={"csrf": csrf, "arguments": "{invoice_id: 1"})
    assert not_json.status_code == 422
    assert "Not JSON" in not_json.text
    invalid = client.post(path, data={"csrf": csrf, "arguments": '{"invoice_id": "abc"}'})
    assert invalid.status_code == 422
    assert "invoice_id: Input should be a valid integer" in invalid.text
    assert dead.dead_letters.get(entry.id) == entry
    assert queued(dead) == []
    ok = client.post(
        path,
        data={"csrf": csrf, "arguments": '{"invoice_id": 12, "copies": 2}'},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    with pytest.raises(DeadLetterNotFound):
        dead.dead_letters.get(entry.id)
    task = dead.dequeue()
    assert task is not None
    assert task.kwargs == {"invoice_id": 12, "copies": 2}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_entry_that_cannot_be_edited_says_why(dead: VersionedHuey, client: TestClient) -> None:
    """A task the app does not declare, or bytes that are no envelope: 409 with the reason."""
    for reason in ("unknown_task", "undecodable"):
        entry = entry_of(dead, reason)
        response = client.get(f"/dead-letters/{entry.id}/edit")
        assert response.status_code == 409
        assert "cannot be edited" in response.text


def test_mounted_under_a_prefix_links_stay_inside(dead: VersionedHuey) -> None:
    """Mounted in another Starlette app, every link carries the mount's prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/tasks", create_app(dead))])
    page = TestClient(outer).get("/ops/tasks/dead-letters").text
    links = re.findall(r'href="(http://testserver/[^"]*)"', page)
    assert links
    assert all(link.startswith("http://testserver/ops/tasks/") for link in links)


# -- packaging ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_core_never_imports_the_web_packages(backend: str) -> None:
    """versioned_tasks and its command line import without starlette or jinja2."""
    code = (
        "import sys, versioned_tasks, versioned_tasks.cli; "
        "assert not {'starlette', 'jinja2', 'uvicorn'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_web_command_names_the_extra_when_missing(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the web extra, `versioned-tasks web` exits 2 naming the pip command."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(main, ["web", "--app", "nowhere:huey"])
    assert result.exit_code == 2
    assert "pip install 'versioned-tasks[web]'" in result.stderr


def test_the_web_command_serves_the_console_and_samples_the_history(tmp_path: Path) -> None:
    """`versioned-tasks web` under uvicorn: the overview samples every
    --history-interval and keeps --history-size samples."""
    db = tmp_path / "console.db"
    (tmp_path / "consoleapp.py").write_text(
        "from versioned_tasks import VersionedSqliteHuey\n"
        f"huey = VersionedSqliteHuey('console', filename={str(db)!r})\n"
    )
    producer = VersionedSqliteHuey("console", filename=str(db))
    producer.storage.enqueue(b"junk")
    assert producer.dequeue() is None  # one dead letter to count
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = "from versioned_tasks.cli import main; main()"
    args = ["web", "--app", "consoleapp:huey", "--port", str(port)]
    args += ["--history-interval", "0.1", "--history-size", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", command, *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def overview() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        except httpx.HTTPError:
            return ""

    try:
        wait_for(lambda: "(3 so far)" in overview(), timeout=30)
        page = overview()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert "every 0.1 s" in page, log.read_text()
    assert "the newest 3 samples kept" in page
    assert "undecodable: 1" in page
    assert "<svg" in page
