"""README's "Use Jobcast with your own Celery tasks", followed line by line: its code
blocks are the files this test writes, its worker command the one it runs, and the
address its script prints opens a page where the user's job finishes."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from support import Proc, collect, wait_until

README = Path(__file__).parents[2] / "README.md"
SECTION = "## Use Jobcast with your own Celery tasks"

pytestmark = pytest.mark.browser

# What a web process with JOBCAST_IMPORTS=kinds offers, and how it validates.
KINDS_CHECK = """
from tasks.config import Settings
from tasks.kinds import default_registry, field_problems
from pydantic import ValidationError
kind = default_registry(Settings.from_env()).get("count-words")
assert kind is not None and kind.task == "myapp.count_words" and kind.queue == "myapp"
try:
    kind.params.model_validate({"text": ""})
except ValidationError as exc:
    assert set(field_problems(kind.params, exc)) == {"text"}
else:
    raise AssertionError("an empty text was accepted")
"""


def section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else None]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def python_files() -> dict[str, str]:
    """The section's Python blocks, by the file name each one's first line gives."""
    files = {}
    for block in blocks("python"):
        first, _, _ = block.partition("\n")
        name = first.removeprefix("# ").strip()
        assert re.fullmatch(r"\w+\.py", name), (
            f"a python block must start with '# <file>.py': {first!r}"
        )
        files[name] = block
    return files


def command(prefix: str) -> list[str]:
    """The section's shell command that starts with ``prefix``, as argv."""
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            words = shlex.split(line)
            if words and " ".join(words).startswith(prefix):
                return words
    raise AssertionError(f"README has no command starting with {prefix!r}")


def test_the_readme_walkthrough_runs_and_the_page_shows_the_users_job(
    stack_env: dict[str, str],
    web: str,
    tmp_path: Path,
    new_page: Callable[..., Page],
) -> None:
    """The user's app and submit script from the README run as written (against the
    suite's Redis in place of the README's port): the worker from the README's own
    command takes the job, the script prints a page address and the result, and that
    page shows the job's card done with the words it logged."""
    files = python_files()
    assert {"myapp.py", "submit.py", "kinds.py"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = {**stack_env, "PYTHONPATH": str(tmp_path)}
    worker = command("celery -A myapp worker")
    assert "-Q" in worker and worker[worker.index("-Q") + 1] == "myapp"
    proc = Proc([sys.executable, "-m", *worker], env, tmp_path / "worker.log", cwd=tmp_path)
    proc.start()  # in the folder of the user's files, as the README has it
    try:
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, "the README's worker")
        assert proc.alive(), proc.output()[-3000:]
        script = command("REDIS_URL=redis://127.0.0.1:6380/0 python submit.py")
        assert script[-1] == "submit.py"
        run = subprocess.Popen(
            [sys.executable, "submit.py"], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        assert run.stdout is not None
        first = run.stdout.readline()
        address = run.stdout.readline()
        job_id = re.fullmatch(r"job (\S+) is #\d+ in line\n", first)
        assert job_id, first + address
        out, _ = run.communicate(timeout=90)
        assert run.returncode == 0, out
        assert "result: {'words': 9, 'longest': 'quick'}" in out
        assert address.startswith("watch it at http://127.0.0.1:8000/?job=")
        events = collect(web, job_id.group(1))
        assert [e.event for e in events if e.id].count("log") == 9
        offered = subprocess.run(
            [sys.executable, "-c", KINDS_CHECK], cwd=tmp_path, env={**env, "JOBCAST_IMPORTS": "kinds"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert offered.returncode == 0, offered.stderr
        page = new_page()
        page.goto(web + "/" + address.strip().split("/", 3)[3])
        card = page.locator(f'.card[data-job="{job_id.group(1)}"]')
        expect(card).to_have_attribute("data-state", "done", timeout=30_000)
        expect(card.locator(".activity")).to_contain_text("Read 'dog'")
    finally:
        proc.stop()
