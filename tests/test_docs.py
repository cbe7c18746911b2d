"""Every ```python block of the README, the docs and the migration examples runs.

The blocks of one page run in order, in one fresh interpreter whose current
directory is an empty temporary directory, sharing one namespace, the way a
reader would paste them into one script. A block whose info string is
``python title="app.py"`` is written to that file and imported as a module, so
that later blocks (or a later version of the same file) can import it.

A block that must not run is marked ```python {.skip} (the form that still
renders as Python) and listed in ``SKIPPED_BLOCKS`` with the reason; keep
those rare. A page whose code talks to Redis reads the server's address from
``REDIS_URL`` and is skipped without a reachable Redis, except under CI.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REDIS_URL, require_redis

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("migrations_examples/**/README.md"),
    ]
)
PAGE_TIMEOUT = 60.0

#: (page, first line of the block's code) -> why it cannot run. Keep it short.
SKIPPED_BLOCKS: dict[tuple[str, str], str] = {
    (
        "docs/migrations.md",
        '"""Migration of \'billing.send_invoice\': version 1 to 2."""',
    ): "a module makemigrations writes in a project; test_makemigrations.py checks the text",
    # A Django project's tasks.py, conftest.py and tests import Django models and need
    # a set-up project; tests/test_django.py runs the same code in tests/django_project.
    ("docs/django.md", "# shop/tasks.py"): "a Django app's tasks.py",
    ("docs/django.md", "# reports/tasks.py"): "a Django app's tasks.py",
    ("docs/django.md", "# conftest.py"): "a Django project's conftest.py",
    ("docs/django.md", "# shop/tests.py"): "a Django app's tests",
    ("docs/quickstart.md", "# shop/tasks.py"): "a Django app's tasks.py",
}

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n"
    r"(?P<code>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
RUN = re.compile(r'python(?:[ \t]+title="(?P<title>[\w/.-]+\.py)")?')
SKIP = "python {.skip}"
PYTHON_LANGUAGES = frozenset({"py", "python", "python3", "py3", "pycon", "pyi"})
TALKS_TO_REDIS = re.compile(r"Redis\w*(?:Huey|Storage)\b|\bimport redis\b|\bredis\.")


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page."""

    page: str
    line: int  # the Markdown line of the block's first line of code
    code: str
    title: str | None
    skip: bool

    @property
    def first_line(self) -> str:
        return next((line for line in self.code.splitlines() if line.strip()), "")


def relative(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> list[Block]:
    """The page's Python blocks; an info string this test would not run fails it."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        language = info.lstrip("{").lstrip(".").split(" ", 1)[0].rstrip("}")
        if language not in PYTHON_LANGUAGES:
            continue
        line = text.count("\n", 0, match.start("code")) + 1
        code = textwrap.dedent(match["code"])
        where = f"{relative(page)}:{line}"
        if info == SKIP:
            blocks.append(Block(relative(page), line, code, None, skip=True))
            continue
        run = RUN.fullmatch(info)
        if run is None:
            pytest.fail(
                f"{where}: info string {info!r} is not run by this test; use ```python, "
                f'```python title="name.py" or ```python {{.skip}}.'
            )
        blocks.append(Block(relative(page), line, code, run["title"], skip=False))
    return blocks


def _page_runner(blocks_file: str) -> None:
    """Run in the child interpreter: the page's blocks, in order, in ``__main__``."""
    import importlib
    import json
    import pathlib
    import sys

    namespace = vars(sys.modules["__main__"])
    for block in json.loads(pathlib.Path(blocks_file).read_text(encoding="utf-8")):
        print(f"--- {block['page']}:{block['line']}", file=sys.stderr, flush=True)
        title = block["title"]
        if title is None:
            # Padding makes tracebacks point at the Markdown file's own lines.
            source = "\n" * (block["line"] - 1) + block["code"]
            exec(compile(source, block["page"], "exec"), namespace)
            continue
        path = pathlib.Path(title)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block["code"], encoding="utf-8")
        module = path.with_suffix("").as_posix().replace("/", ".")
        if module in sys.modules:
            # A later block rewrote the file: import it as a new process would,
            # without the module-level declarations and default app of the old one.
            del sys.modules[module]
            declare = sys.modules.get("versioned_tasks.app.declare")
            if declare is not None:
                declare._DECLARATIONS.__init__()
        importlib.invalidate_caches()
        importlib.import_module(module)


def run_page(page: Path, blocks: list[Block], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    blocks_file = tmp_path / "_blocks.json"
    payload = [
        {"page": b.page, "line": b.line, "code": b.code, "title": b.title}
        for b in blocks
        if not b.skip
    ]
    blocks_file.write_text(json.dumps(payload), encoding="utf-8")
    script = f"{inspect.getsource(_page_runner)}\n_page_runner({str(blocks_file)!r})\n"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # app.py may be rewritten within one second: no stale bytecode.
    env.update(PYTHONDONTWRITEBYTECODE="1", REDIS_URL=REDIS_URL)
    try:
        return subprocess.run(
            [sys.executable, "-W", "error", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{relative(page)} did not finish within {PAGE_TIMEOUT:.0f} s:\n{exc.stderr}")


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_python_blocks_of_the_page_run(page: Path, tmp_path: Path) -> None:
    """The page's Python blocks run in order, in one fresh interpreter, without error."""
    blocks = python_blocks(page)
    for block in blocks:
        if block.skip and (block.page, block.first_line) not in SKIPPED_BLOCKS:
            pytest.fail(
                f"{block.page}:{block.line} is marked {{.skip}} without a reason; make it "
                f"run, or add ({block.page!r}, {block.first_line!r}) to SKIPPED_BLOCKS."
            )
    code = "\n".join(block.code for block in blocks if not block.skip)
    if TALKS_TO_REDIS.search(code):
        assert "REDIS_URL" in code, f"{relative(page)} talks to Redis: read its URL from REDIS_URL"
        require_redis()
    if not code:
        return
    result = run_page(page, blocks, tmp_path)
    if result.returncode != 0:
        pytest.fail(
            f"{relative(page)} failed (exit {result.returncode}).\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}",
            pytrace=False,
        )


def test_every_skipped_block_exists() -> None:
    """Each entry of SKIPPED_BLOCKS names a block that is still marked {.skip}."""
    marked = {
        (block.page, block.first_line)
        for page in PAGES
        for block in python_blocks(page)
        if block.skip
    }
    assert set(SKIPPED_BLOCKS) <= marked


def test_pages_are_found() -> None:
    """The README, the docs and the migration examples are all collected."""
    names = {relative(page) for page in PAGES}
    assert {"README.md", "docs/quickstart.md", "migrations_examples/README.md"} <= names
