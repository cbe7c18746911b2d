"""The console in a real browser: Debian's Chromium driven by Playwright, against a
real server (uvicorn in a thread) on SQLite and on Redis.

Without Chromium these tests skip locally and fail under CI (``CI`` set), where
``.ci/run`` installs it. With ``VT_SCREENSHOTS=1`` the SQLite run writes the
screenshots of docs/console.md to docs/images/console/; otherwise they go to the
test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from versioned_tasks import DeadLetterNotFound, VersionedHuey
from versioned_tasks.web import create_app

MakeHuey = Callable[..., VersionedHuey]

TOKEN = "browser-test-token-0001"
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI is set: .ci/run installs it.")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (the system's) for the module."""
    executable = shutil.which("chromium")
    if executable is None:
        _need("chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A console served by uvicorn in a thread."""

    def __init__(self, app: VersionedHuey, token: str | None, **options: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(app, token=token, **options),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the console's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def shots(backend: str, tmp_path: Path) -> Callable[[Any, str], None]:
    """``shot(page, name)``: a full-page screenshot (see the module docstring)."""
    publish = backend == "sqlite" and os.environ.get("VT_SCREENSHOTS") == "1"
    directory = DOCS_IMAGES if publish else tmp_path
    directory.mkdir(parents=True, exist_ok=True)

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(directory / f"{name}.png"), full_page=True)

    return shot


def declare(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int, copies: int = 1) -> int:
        return invoice_id * copies

    return send_invoice


@pytest.fixture
def dead(make_huey: MakeHuey) -> VersionedHuey:
    """Under the new app: two invalid invoices ('abc', 'x1'), an unknown mail task,
    an undecodable message with a <script> tag, and one entry that now runs."""
    old = make_huey()

    @old.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: str) -> str:
        return invoice_id

    @old.versioned_task(version=1, name="mail.send")
    def send(to: str) -> str:
        return to

    send_invoice("abc")
    send("ann@example.com")
    send_invoice("x1")
    old.storage.enqueue(b"<script>window.pwned = 1; alert(1)</script>")
    new = make_huey()
    good = declare(new)
    while new.dequeue() is not None:
        pass
    new.dead_letters.add(
        reason="unknown_task",
        raw=new.serialize_task(good.s(41)),
        error="Task 'billing.send_invoice' was not declared by the deploy of that day.",
        task="billing.send_invoice",
        version=1,
    )
    assert len(new.dead_letters) == 5
    return new


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    page.goto(url)
    return page


def log_in(page: Any) -> None:
    page.fill("input[name=token]", TOKEN)
    page.click("text=Log in")
    page.wait_for_url("**/dead-letters")


def test_list_with_filters(browser: Any, dead: VersionedHuey, shots: Any) -> None:
    """The list shows every entry with counts; the reason and task filters narrow it."""
    with Served(dead, TOKEN) as served:
        page = open_page(browser, f"{served.url}/dead-letters")
        assert page.locator("table.list tbody tr").count() == 5
        shots(page, "dead-letters")
        page.select_option("select[name=reason]", "invalid_payload")
        page.click("button:text('Filter')")
        assert page.locator("table.list tbody tr").count() == 2
        page.fill("input[name=task]", "mail.send")
        page.select_option("select[name=reason]", "")
        page.click("button:text('Filter')")
        rows = page.locator("table.list tbody tr")
        assert rows.count() == 1
        assert "mail.send" in rows.first.inner_text()
        shots(page, "dead-letters-filtered")


def test_entry_page_and_a_script_payload_rendered_as_text(
    browser: Any, dead: VersionedHuey, shots: Any
) -> None:
    """The entry page shows the error, header, arguments and bytes; a <script> in the
    bytes is text on the page and never runs."""
    with Served(dead, TOKEN) as served:
        page = open_page(browser, f"{served.url}/dead-letters?reason=invalid_payload")
        page.locator("table.list tbody tr a").first.click()
        assert "does not fit today's model" in page.inner_text("pre.error")
        assert '"invoice_id"' in page.inner_text("pre.arguments")
        assert page.inner_text("pre.hex").startswith("00000000  56 54 45 31")
        shots(page, "entry")
        page.goto(f"{served.url}/dead-letters?reason=undecodable")
        page.locator("table.list tbody tr a").first.click()
        text = page.inner_text("pre.raw-text")
        assert "<script>window.pwned = 1; alert(1)</script>" in text
        assert page.evaluate("window.pwned") is None
        assert page.dialogs == []
        shots(page, "entry-script-as-text")


def test_replay_with_a_dry_run(browser: Any, dead: VersionedHuey, shots: Any) -> None:
    """Select entries, preview their fate (nothing changes), then replay: the one that
    now runs is enqueued, the others stay."""
    with Served(dead, TOKEN) as served:
        page = open_page(browser, f"{served.url}/dead-letters")
        log_in(page)
        page.fill("input[name=task]", "billing.send_invoice")
        page.click("button:text('Filter')")
        boxes = page.locator("input[type=checkbox][name=id]")
        assert boxes.count() == 3
        for i in range(3):
            boxes.nth(i).check()
        page.click("text=Preview replay of the selected (dry run)")
        body = page.inner_text("main")
        assert "1 of 3 would be replayed" in body
        assert "would run as billing.send_invoice v1 with (invoice_id=41, copies=1)" in body
        assert len(dead.dead_letters) == 5
        shots(page, "replay-preview")
        page.click("text=Replay these")
        result = page.inner_text("main")
        assert "Replayed 1 of 3" in result
        assert "No live worker" in result
        shots(page, "replay-result")
        assert len(dead.dead_letters) == 4
        task = dead.dequeue()
        assert task is not None
        assert task.kwargs == {"invoice_id": 41, "copies": 1}


def test_edit_then_replay_shows_the_error_then_goes_through(
    browser: Any, dead: VersionedHuey, shots: Any
) -> None:
    """Edited arguments that do not fit the model are refused with the field named and
    the entry kept; fixed, they are enqueued and the entry goes."""
    entry = next(e for e in dead.dead_letters if e.reason == "invalid_payload")
    with Served(dead, TOKEN) as served:
        page = open_page(browser, f"{served.url}/dead-letters")
        log_in(page)
        page.goto(f"{served.url}/dead-letters/{entry.id}")
        page.click("text=Edit then replay")
        page.fill("textarea[name=arguments]", '{"invoice_id": "twelve"}')
        page.click("text=Validate and replay")
        errors = page.inner_text(".errors")
        assert "invoice_id: Input should be a valid integer" in errors
        assert dead.dead_letters.get(entry.id) == entry
        shots(page, "edit-error")
        page.fill("textarea[name=arguments]", '{"invoice_id": 12, "copies": 2}')
        page.click("text=Validate and replay")
        page.wait_for_url("**/dead-letters?done=*")
        assert "Edited and replayed" in page.inner_text(".done")
        with pytest.raises(DeadLetterNotFound):
            dead.dead_letters.get(entry.id)
        task = dead.dequeue()
        assert task is not None
        assert task.kwargs == {"invoice_id": 12, "copies": 2}


def test_purge_by_filter(browser: Any, dead: VersionedHuey, shots: Any) -> None:
    """Purge matching: a confirmation with the count, then only the matches are gone."""
    with Served(dead, TOKEN) as served:
        page = open_page(browser, f"{served.url}/dead-letters")
        log_in(page)
        page.select_option("select[name=reason]", "invalid_payload")
        page.click("button:text('Filter')")
        page.click("text=Purge matching")
        assert "2 entries match (reason invalid_payload)" in page.inner_text("main")
        shots(page, "purge-confirm")
        page.click("text=Purge 2 entries")
        assert "Purged 2 dead letter(s)" in page.inner_text(".done")
        assert sorted(e.reason for e in dead.dead_letters) == [
            "undecodable",
            "unknown_task",
            "unknown_task",
        ]


def test_a_write_is_refused_without_the_token(
    browser: Any, dead: VersionedHuey, shots: Any
) -> None:
    """A console started without a token says it is read-only and refuses a replay."""
    entry = next(e for e in dead.dead_letters if e.task == "billing.send_invoice")
    with Served(dead, None) as served:
        page = open_page(browser, f"{served.url}/dead-letters/{entry.id}")
        assert "Read-only console" in page.inner_text(".banner")
        shots(page, "read-only")
        response_status: list[int] = []
        page.on("response", lambda r: response_status.append(r.status))
        page.click("button:text('Replay')")
        assert "This console is read-only" in page.inner_text("main")
        assert 403 in response_status
        assert dead.dead_letters.get(entry.id) == entry


def test_census_fleet_and_overview(browser: Any, dead: VersionedHuey, shots: Any) -> None:
    """The census streams to its tables, the fleet says no worker is live, the overview
    counts the store and draws its samples of the dead letters by reason."""
    with Served(dead, TOKEN, history_interval=0.05) as served:
        page = open_page(browser, f"{served.url}/census")
        assert "5 dead-lettered" in page.inner_text(".done")
        assert "mail.send" in page.inner_text("table.census")
        shots(page, "census")
        page.goto(f"{served.url}/fleet")
        assert "No live worker" in page.inner_text("main")
        shots(page, "fleet")
        page.goto(f"{served.url}/")
        assert "Dead letters" in page.inner_text("table.numbers")
        for n in range(3):  # more dead letters in each later sample
            for _ in range(n + 1):
                dead.dead_letters.add(reason="retired", raw=b"r", error="retired")
            samples = len(page.locator("table.history-table tbody tr").all())
            while len(page.locator("table.history-table tbody tr").all()) == samples:
                page.reload()
        assert page.locator("figure.history svg polyline").count() == 4
        assert "retired: 6" in page.inner_text("figure.history figcaption")
        shots(page, "overview")
