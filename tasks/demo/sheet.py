"""The demo's contact sheet: a chord that draws N small pictures (the group) and lays
them out as one grid image (the callback), to show a canvas as one job.

    chord(sheet_tile(prompt, i) for i in range(count)) | sheet_compose(columns)

Each tile is a child job (progress, one blurred preview, its own ``image.png``); the
compose step gets the tiles' results first, as a chord callback does in Celery.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Annotated, Any

from celery import Signature, chord, signature
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from tasks.config import Settings
from tasks.demo.image import render
from tasks.demo.params import MAX_SEED, PROMPT_PATTERN, Limits, prompt_text
from tasks.jobs import JobContext, job_task
from tasks.kinds import Kind, Missing, bounded_integer
from tasks.media import job_dir

TILE = "jobcast.sheet_tile"
COMPOSE = "jobcast.sheet_compose"
GAP = 4


@job_task(name=TILE, failure_message="A tile could not be drawn.")
def sheet_tile(job: JobContext, prompt: str, seed: int, side: int, steps: int) -> dict[str, Any]:
    """One picture of the sheet: progress, a blurred preview, then ``image.png``."""
    render(job, prompt, side, side, steps, seed)
    return {"tile": job.id, "width": side, "height": side}


@job_task(name=COMPOSE, failure_message="The contact sheet could not be composed.")
def sheet_compose(job: JobContext, tiles: list[dict[str, Any]], columns: int) -> dict[str, Any]:
    """Lay the tiles out in ``columns`` columns as ``image.png``."""
    began = time.monotonic()
    side = int(tiles[0]["width"])
    rows = math.ceil(len(tiles) / columns)
    width, height = columns * side + (columns + 1) * GAP, rows * side + (rows + 1) * GAP
    sheet = Image.new("RGB", (width, height), (24, 24, 32))
    for i, tile in enumerate(tiles):
        job.progress(i + 1, len(tiles))
        path = job_dir(job.settings.media_dir, str(tile["tile"])) / "image.png"
        with Image.open(path) as image:
            x, y = GAP + (i % columns) * (side + GAP), GAP + (i // columns) * (side + GAP)
            sheet.paste(image.convert("RGB"), (x, y))
    job.save_file("image.png", sheet)
    return {
        "url": f"{job.settings.url_prefix}/jobs/{job.id}/result/image.png",
        "width": width,
        "height": height,
        "seconds": round(time.monotonic() - began, 2),
    }


def sheet_params(settings: Settings) -> type[BaseModel]:
    """The ``SheetParams`` model within these settings' picture limits (side, steps)."""
    return _sheet_model(Limits.of(settings))


@lru_cache(maxsize=32)
def _sheet_model(limits: Limits) -> type[BaseModel]:
    high_side, high_steps = min(256, limits.max_side), min(50, limits.max_steps)
    default_side = max(limits.min_side, min(96, high_side))
    default_steps = min(12, high_steps)
    Count = bounded_integer(2, 16, lambda: 6, description="How many pictures.")
    Side = bounded_integer(
        limits.min_side, high_side, lambda: default_side, description="Each one's side."
    )
    Steps = bounded_integer(1, high_steps, lambda: default_steps, description="Steps per picture.")
    Seed = bounded_integer(0, MAX_SEED - 16, lambda: 1, description="The first picture's seed.")
    prompt_schema = {"minLength": 1, "maxLength": 200, "pattern": PROMPT_PATTERN}

    class SheetParams(BaseModel):
        """The parameters of a `contact-sheet` job."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        prompt: Annotated[
            str,
            prompt_text(200),
            Missing("a text describing the pictures"),
            Field(json_schema_extra=prompt_schema),
        ]
        count: Count = 6  # type: ignore[valid-type]
        side: Side = default_side  # type: ignore[valid-type]
        steps: Steps = default_steps  # type: ignore[valid-type]
        seed: Seed = 1  # type: ignore[valid-type]

    return SheetParams


def sheet_canvas(params: dict[str, Any]) -> Signature:
    """The chord a contact sheet is: one tile per picture, then the compose step."""
    count = int(params["count"])
    base = {"prompt": params["prompt"], "side": int(params["side"]), "steps": int(params["steps"])}
    tiles = [
        signature(TILE, kwargs={**base, "seed": int(params["seed"]) + i}) for i in range(count)
    ]
    columns = math.ceil(math.sqrt(count))
    return chord(tiles, signature(COMPOSE, kwargs={"columns": columns}))


def sheet_kind(settings: Settings) -> Kind:
    return Kind(
        name="contact-sheet",
        params=sheet_params(settings),
        task=COMPOSE,
        canvas=sheet_canvas,
        title="A contact sheet",
        description=(
            "A chord: draws `count` small pictures of the prompt (child jobs, each with "
            "progress and a blurred preview), then lays them out as one grid image. One "
            "parent stream: `child`, `progress`, `preview` (with `child`), `done`."
        ),
        result="`results`: each child's `done` data; the last is the grid's `url`.",
    )
