"""``jobcast submit`` / ``jobcast watch`` in a real pseudo-terminal (pexpect), on the real stack."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pexpect
import pytest
import redis
from PIL import Image
from support import Proc, free_port, wait_until

from jobcast.client import Client, Job
from tasks.events import JobEvents

QUICK = {"prompt": "a quiet bay", "width": 64, "height": 64, "steps": 4}
LONG = {"prompt": "a slow harbour at night", "width": 384, "height": 384, "steps": 24}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def jobcast(*argv: str, env: dict[str, str]) -> pexpect.spawn:
    """``jobcast ARGV`` in a 40x120 terminal that shows colours."""
    term = {**env, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    term.pop("NO_COLOR", None)
    return pexpect.spawn(
        sys.executable, ["-m", "web.cli", *argv], env=term, dimensions=(40, 120),
        encoding="utf-8", timeout=60,
    )  # fmt: skip


def finish(child: pexpect.spawn) -> tuple[str, int]:
    """Everything it wrote until it exited, and its exit code."""
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    return child.before, child.exitstatus


def plain(output: str) -> str:
    """The text without colours, line breaks and runs of spaces (rich wraps long lines)."""
    return " ".join(ANSI.sub("", output).split())


def percents(output: str) -> set[int]:
    return {int(p) for p in re.findall(r"(?<![\d.])(\d{1,3})%", ANSI.sub("", output))}


def test_submit_watch_moves_the_bar_draws_the_preview_and_saves_the_png(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """The bar goes through several percents to 100, the preview is drawn in background
    colours, --out writes the PNG, and the exit code is 0."""
    out = tmp_path / "picture.png"
    child = jobcast(
        "submit", "imagine", "--prompt", "a red barn in snow", "-p", "width=384",
        "-p", "height=256", "-p", "steps=24", "--out", str(out), "--url", web, env=stack_env,
    )  # fmt: skip
    output, code = finish(child)
    assert code == 0, output
    seen = percents(output)
    assert 100 in seen and len(seen - {100}) >= 2, seen
    assert "▀" in output and re.search(r"\x1b\[[0-9;]*48;[25];", output), "no coloured cells"
    assert "done" in output and "saved image.png" in ANSI.sub("", output)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (384, 256)


def test_exit_codes_for_a_failed_and_a_cancelled_job(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Watching a waiting job shows its place in line; it ends with 1 when the job fails
    (with the job's message) and with 2 when it is cancelled."""
    with Client(web) as client:
        blocker = client.submit("imagine", LONG)
        failing, cancelled = (client.submit("imagine", QUICK) for _ in range(2))
        watch_failing = jobcast("watch", failing.id, "--url", web, env=stack_env)
        watch_cancelled = jobcast("watch", cancelled.id, "--url", web, env=stack_env)
        for child in (watch_failing, watch_cancelled):
            child.expect(r"#\d+ in line")
        JobEvents(rds).publish(failing.id, "failed", {"error": "The kiln broke."})
        assert client.cancel(cancelled)["state"] == "cancelled"
        failed_output, failed_code = finish(watch_failing)
        _, cancelled_code = finish(watch_cancelled)
        client.cancel(blocker)
    assert failed_code == 1 and "The kiln broke." in failed_output
    assert cancelled_code == 2


def test_ctrl_c_detaches_and_the_job_goes_on(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Ctrl-C while running: the watcher exits (130) saying it detached; the job finishes."""
    with Client(web) as client:
        job = client.submit("imagine", LONG)
        child = jobcast("watch", job.id, "--url", web, env=stack_env)
        child.expect(r"\d+%")
        wait_until(lambda: client.status(job)["state"] == "running", 30, "the job to run")
        child.sendintr()
        output, code = finish(child)
        assert code == 130 and "detached" in output
        assert client.wait(job, timeout=120)["width"] == 384


def test_ctrl_c_with_cancel_on_exit_cancels(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """With --cancel-on-exit, Ctrl-C cancels the job and exits with 2."""
    with Client(web) as client:
        job = client.submit("imagine", LONG)
        child = jobcast("watch", job.id, "--url", web, "--cancel-on-exit", env=stack_env)
        child.expect(r"\d+%")
        child.sendintr()
        output, code = finish(child)
        assert code == 2, output
        wait_until(lambda: client.status(job)["state"] == "cancelled", 30, "the cancel")


def test_unreachable_server_gives_up_with_3(stack_env: dict[str, str]) -> None:
    """No server at the URL: the watcher retries --max-retries times, then exits with 3;
    a submit there exits with 3 at once."""
    url = f"http://127.0.0.1:{free_port()}"
    watch = jobcast("watch", "A" * 22, "--url", url, "--max-retries", "1", env=stack_env)
    output, code = finish(watch)
    assert code == 3 and "after 2 failed connections" in plain(output)
    output, code = finish(
        jobcast("submit", "imagine", "--prompt", "x", "--url", url, env=stack_env)
    )
    assert code == 3 and "gave up on the server" in plain(output)


@pytest.mark.parametrize("params", [{"prompt": ""}, {"prompt": "ok", "width": 3}])
def test_refused_submit_names_the_fields_and_exits_4(
    web: str, rds: redis.Redis, stack_env: dict[str, str], params: dict[str, object]
) -> None:
    """A 422 prints the API's message and each field's reason, and exits with 4."""
    argv = [part for k, v in params.items() if k != "prompt" for part in ("-p", f"{k}={v}")]
    child = jobcast(
        "submit", "imagine", "--prompt", str(params["prompt"]), *argv,
        "--url", web, env=stack_env,
    )  # fmt: skip
    output, code = finish(child)
    assert code == 4 and "422" in output
    assert ("prompt" if params["prompt"] == "" else "width") in output
    assert rds.zcard("jobcast:queue") == 0


def test_submit_without_watch_prints_the_id(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Without --watch the job id comes out alone on a line, and names a real job."""
    child = jobcast(
        "submit", "imagine", "--prompt", "a fox", "-p", "width=64", "-p", "height=64",
        "-p", "steps=2", "--url", web, env=stack_env,
    )  # fmt: skip
    output, code = finish(child)
    assert code == 0
    job_id = next(line.strip() for line in ANSI.sub("", output).splitlines() if line.strip())
    with Client(web) as client:
        assert client.wait(Job(job_id), timeout=60)["width"] == 64


def test_custom_events_print_as_lines_and_delta_text_streams(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """log and step events print as lines, other kinds with their data, delta text as the
    lines it makes up."""
    with Client(web) as client:
        blocker = client.submit("imagine", LONG)
        job = client.submit("imagine", QUICK)
        child = jobcast("watch", job.id, "--url", web, env=stack_env)
        child.expect(r"#\d+ in line")
        events = JobEvents(rds)
        for kind, data in [
            ("log", {"message": "Reading file 1 of 2", "level": "warning"}),
            ("step", {"name": "palette", "index": 2, "total": 5}),
            ("delta", {"text": "Hello "}),
            ("delta", {"text": "world\nsecond "}),
            ("tool_call", {"name": "search"}),
            ("delta", {"text": "line"}),
            ("failed", {"error": "stopped by the test"}),
        ]:
            events.publish(job.id, kind, data)
        output, code = finish(child)
        client.cancel(blocker)
    text = ANSI.sub("", output)
    assert code == 1
    assert "warning Reading file 1 of 2" in text and "▸ palette (2/5)" in text
    assert 'tool_call {"name":"search"}' in text
    assert "Hello world\r\n" in text and "second line\r\n" in text
