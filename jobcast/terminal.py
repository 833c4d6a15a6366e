"""``jobcast submit`` and ``jobcast watch``: a job's live progress in the terminal.

    jobcast submit imagine --prompt "a lighthouse" --watch --out lighthouse.png
    jobcast watch JOB_ID [--url http://host:8000] [--cancel-on-exit]

Waiting: the place in line and the ETA · running: percent, step, elapsed · log, step and
other custom events print as lines above the bar · delta text streams line by line · a
preview's blurhash is drawn as a block of coloured cells · then the result (its file saved
with ``--out``). Ctrl-C detaches and leaves the job running, unless ``--cancel-on-exit``.
Exit codes: 0 done, 1 failed, 2 cancelled, 3 connection gave up, 4 request refused, 130
detached.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import blurhash
from rich.color import Color
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.style import Style
from rich.text import Text

from jobcast.client import ApiError, Client, ConnectionGaveUp, Event, Job

DONE, FAILED, CANCELLED, GAVE_UP, REFUSED, DETACHED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {"done": DONE, "failed": FAILED, "cancelled": CANCELLED}
LOG_STYLES = {"warning": "yellow", "error": "bold red"}
PREVIEW_COLUMNS = 16


def add_commands(sub: Any) -> None:
    """Add ``submit`` and ``watch`` to the ``jobcast`` command's subparsers."""
    p_submit = sub.add_parser("submit", help="submit a job (and follow it with --watch)")
    p_submit.add_argument("kind", help="the job kind, e.g. imagine")
    p_submit.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V",
        help="a parameter; V is read as JSON when it parses (64, true), else as text",
    )  # fmt: skip
    p_submit.add_argument("--prompt", help="the prompt parameter (for imagine)")
    p_submit.add_argument("--idempotency-key", help="resubmitting with it returns the same job")
    p_submit.add_argument("--watch", "-w", action="store_true", help="follow the job to its end")
    _common(p_submit)
    p_submit.set_defaults(run=submit_command)
    p_watch = sub.add_parser("watch", help="follow a job (new or running) to its end")
    p_watch.add_argument("job_id")
    p_watch.add_argument("--token", help="the job's token, when the server signs job URLs")
    _common(p_watch)
    p_watch.set_defaults(run=watch_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("JOBCAST_URL", "http://127.0.0.1:8000"),
        help="the Jobcast server (default: $JOBCAST_URL or http://127.0.0.1:8000)",
    )  # fmt: skip
    parser.add_argument("--out", "-o", type=Path, help="save the result file here")
    parser.add_argument("--file", help="which result file --out saves (default: the only one)")
    parser.add_argument("--cancel-on-exit", action="store_true", help="Ctrl-C cancels the job")
    parser.add_argument("--max-retries", type=int, default=8, help="reconnects before giving up")


def submit_command(args: argparse.Namespace) -> int:
    console = Console(stderr=True, markup=False, highlight=False)
    try:
        params = parse_params(args.param, args.prompt)
    except ValueError as exc:
        console.print(Text(str(exc), "red"))
        return REFUSED
    with _client(args) as client:
        try:
            job = client.submit(args.kind, params, idempotency_key=args.idempotency_key)
        except ApiError as exc:
            return _refused(console, exc)
        except ConnectionGaveUp as exc:
            return _gave_up(console, exc)
        if not (args.watch or args.out):
            print(job.id, flush=True)  # alone on stdout, for ID=$(jobcast submit ...)
            console.print(f"queued: {_place(job.position, job.eta_seconds)}")
            return DONE
        console.print(Text.assemble("job ", (job.id, "bold")))
        return follow(client, job, args)


def watch_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return follow(client, client.job(args.job_id, args.token), args)


def parse_params(pairs: Iterable[str], prompt: str | None) -> dict[str, Any]:
    """``k=v`` pairs as a parameter object (v as JSON if it parses), ``--prompt`` added."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param wants NAME=VALUE, got {pair!r}")
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw
    if prompt is not None:
        params["prompt"] = prompt
    return params


def follow(client: Client, job: Job, args: argparse.Namespace) -> int:
    """Draw the job until it ends (or Ctrl-C); the exit code."""
    console = Console(markup=False, highlight=False)
    board = Board(console)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with board:
            outcome = board.show(client.watch(job))
    except KeyboardInterrupt:
        return _detach(console, client, job, args.cancel_on_exit)
    except ConnectionGaveUp as exc:
        return _gave_up(console, exc)
    except ApiError as exc:
        return _refused(console, exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome is None:
        console.print("the job had ended; nothing more to show")
        return DONE
    board.summary(outcome)
    code = EXIT_CODES.get(outcome.kind, FAILED)
    if code == DONE and args.out:
        return _save(console, client, job, args.out, args.file)
    return code


class Board(Progress):
    """The live area: delta text being written, the preview cells, then the bar."""

    def __init__(self, console: Console) -> None:
        self.line = ""  # the delta line being written
        self.preview: Text | None = None
        self.began = time.monotonic()
        super().__init__(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[step]}"), TimeElapsedColumn(),
            console=console, refresh_per_second=8,
        )  # fmt: skip
        self.task: TaskID = self.add_task("connecting", total=None, step="")

    def get_renderables(self) -> Iterable[RenderableType]:
        if self.line:
            yield Text(self.line)
        if self.preview is not None:
            yield self.preview
        yield from super().get_renderables()

    def show(self, events: Iterable[Event]) -> Event | None:
        """Follow ``events``; the terminal one, or None if the stream had nothing more."""
        for event in events:
            self.on(event)
            if event.terminal:
                return event
        return None

    def on(self, event: Event) -> None:
        kind, data = event.kind, event.data
        if kind == "queued" and event.position is not None:
            self.update(self.task, description=_place(event.position, event.eta_seconds))
        elif kind == "started":
            self.update(self.task, description="running", total=100)
            if int(data.get("attempt") or 1) > 1:
                self.say(Text(f"attempt {data['attempt']}", "yellow"))
        elif kind == "progress":
            step = f"step {data['step']}/{data['steps']}" if "steps" in data else ""
            self.update(self.task, description="running", total=100, completed=event.percent or 0, step=step)  # fmt: skip
        elif kind == "preview":
            self.preview = preview_cells(data) or self.preview
        elif kind == "delta":
            self._write(event.text)
        elif kind == "log":
            level = str(data.get("level", "info"))
            self.say(Text(f"{level:<7} {event.message}", LOG_STYLES.get(level, "")))
        elif kind == "step":
            self._step(data)
        elif kind == "reset":
            self.say(Text("the server's history of this job was reset", "yellow"))
        elif not event.terminal:
            self.say(Text(f"{kind} {json.dumps(data, separators=(',', ':'))}", "dim"))

    def say(self, line: Text) -> None:
        """A line above the live area."""
        self.console.print(line)

    def _step(self, data: dict[str, Any]) -> None:
        name, index, total = data.get("name", "step"), data.get("index"), data.get("total")
        count = f" ({index}/{total})" if index is not None and total is not None else ""
        self.say(Text(f"▸ {name}{count}", "cyan"))
        self.update(self.task, step=f"{name}{count}")

    def _write(self, text: str) -> None:
        """Stream delta text: finished lines go above, the current one stays live."""
        *done, self.line = (self.line + text).split("\n")
        for line in done:
            self.say(Text(line))

    def summary(self, outcome: Event) -> None:
        """Leave the delta text's last line, then say how it ended."""
        if self.line:
            self.say(Text(self.line))
        seconds = time.monotonic() - self.began
        if outcome.kind == "done":
            self.say(Text(f"✔ done in {seconds:.1f} s", "bold green"))
            if outcome.data:
                self.console.print_json(data=outcome.data)
        elif outcome.kind == "failed":
            self.say(Text(f"✘ failed: {outcome.error or 'the job failed'}", "bold red"))
        else:
            self.say(Text(f"■ cancelled {outcome.data.get('reason', '')}".rstrip(), "yellow"))


def preview_cells(data: dict[str, Any], columns: int = PREVIEW_COLUMNS) -> Text | None:
    """A preview's blurhash as half-block cells: two pixels a cell, top in the foreground
    colour and bottom in the background colour; None if it does not decode."""
    width, height = data.get("width") or 1, data.get("height") or 1
    rows = 2 * max(1, round(columns * height / width / 2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # blurhash-python on Pillow 12+
            image = blurhash.decode(str(data["blurhash"]), columns, rows).convert("RGB")
    except (KeyError, ValueError, TypeError, blurhash.BlurhashDecodeError):
        return None
    cells = Text()
    for y in range(0, rows, 2):
        for x in range(columns):
            top, bottom = image.getpixel((x, y)), image.getpixel((x, y + 1))
            cells.append("▀", Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom)))
        cells.append("\n")
    return cells


def _detach(console: Console, client: Client, job: Job, cancel: bool) -> int:
    if not cancel:
        console.print(f"detached: the job goes on (follow it again: jobcast watch {job.id})")
        return DETACHED
    try:
        state = client.cancel(job)["state"]
    except (ApiError, ConnectionGaveUp) as exc:
        console.print(f"could not cancel: {exc}")
        return DETACHED
    console.print(f"cancel requested: the job is {state}")
    return CANCELLED


def _save(console: Console, client: Client, job: Job, out: Path, name: str | None) -> int:
    try:
        if name is None:
            files = sorted(client.result(job).get("files") or {})
            if len(files) != 1:
                console.print(Text(f"--out: pick one with --file from {files}", "red"))
                return REFUSED
            name = files[0]
        saved = client.download(job, name, out)
    except ApiError as exc:
        return _refused(console, exc)
    except ConnectionGaveUp as exc:
        return _gave_up(console, exc)
    console.print(f"saved {name} as {saved} ({saved.stat().st_size} bytes)")
    return DONE


def _refused(console: Console, exc: ApiError) -> int:
    console.print(Text.assemble((f"{exc.status} {exc.code}: ", "red"), exc.message))
    for name, reason in exc.fields.items():
        console.print(f"  {name}: {reason}")
    return REFUSED


def _gave_up(console: Console, exc: ConnectionGaveUp) -> int:
    console.print(Text(str(exc), "red"))
    return GAVE_UP


def _place(position: int | None, eta: int | None) -> str:
    if position is None:
        return "waiting in line"
    return f"#{position} in line" + (f" · about {eta} s" if eta is not None else "")


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, max_retries=args.max_retries)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a watch as Ctrl-C does
