"""Job kinds: what a client may submit, declared once.

A :class:`Kind` names a job type and ties together the pydantic model of its parameters,
the Celery task (by name) that runs it, the queue it goes to, who may submit it over HTTP
and how it is documented. The web side reads the same declaration to validate
``POST /jobs/<kind>``, to answer 422 naming each bad field (:func:`field_problems`) and to
generate the OpenAPI document, so the three never disagree.

    Registry ─ register(Kind) · get(name) · all()
    Kind ─ name · params (BaseModel subclass) · task · queue · title · description
           · access ("public" | "ops" | "none" | callable(request) -> bool) · result

Nothing here imports Flask: an ``access`` callable receives the web framework's request
object and answers whether that request may submit the kind.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from tasks.config import Settings

NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
ACCESS = ("public", "ops", "none")
# Fields of the job record that submit and the event scripts own: a parameter named like
# one would overwrite it, so a kind may not declare one (tasks/events.py, tasks/submit.py).
RECORD_FIELDS = frozenset(
    {
        "state", "ticket", "created", "updated", "lastEventId", "lastToken", "attempt",
        "cancel", "resent", "startedAt", "finishedAt", "kind", "queue", "meta", "task",
        "kwargs", "params", "worker", "args", "idem", "waitKind",
    }
)  # fmt: skip

Access = Literal["public", "ops", "none"] | Callable[[Any], bool]


def problem(message: str, **ctx: Any) -> PydanticCustomError:
    """A parameter's refusal as the API words it: ``message``, its ``{name}`` parts filled
    from ``ctx`` (a validator of a kind's model raises it)."""
    return PydanticCustomError("jobcast", message, ctx or None)


def bounded_integer(
    low: int, high: int, default: Callable[[], int] | None = None, **schema: Any
) -> Any:
    """The annotation of an integer parameter from ``low`` to ``high``: a JSON integer
    (``141.0`` is one, ``true`` is not). With ``default``, null stands for ``default()``
    and the schema says so; ``schema`` adds to the field's JSON schema (a description)."""

    def check(value: Any) -> int:
        if value is None and default is not None:
            return int(default())
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise problem("must be an integer from {low} to {high}", low=low, high=high)
        return value

    kind = "integer" if default is None else ["integer", "null"]
    extra = {"type": kind, "minimum": low, "maximum": high, **schema}
    return Annotated[int, BeforeValidator(check), Field(json_schema_extra=extra)]


class Missing:
    """Annotation metadata: the reason given when a required field is left out.

    ``prompt: Annotated[str, Missing("a text describing the picture")]`` answers
    ``"required: a text describing the picture"`` instead of ``"required"``.
    """

    def __init__(self, what: str) -> None:
        self.what = what


@dataclass(frozen=True)
class Kind:
    name: str
    params: type[BaseModel]
    task: str
    queue: str | None = None
    title: str = ""
    description: str = ""
    access: Access = "public"
    result: str | None = None  # what the ``done`` event's data holds, for the document
    # A canvas kind: the Celery group/chain/chord its validated parameters make; its job
    # is then a parent of one child per task (tasks/canvas.py). ``task`` still documents.
    canvas: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"kind name {self.name!r} must match {NAME.pattern}")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(f"kind {self.name!r}: params must be a pydantic BaseModel subclass")
        if not callable(self.access) and self.access not in ACCESS:
            raise ValueError(f"kind {self.name!r}: access must be one of {ACCESS} or a callable")
        if not self.task:
            raise ValueError(f"kind {self.name!r}: task (a Celery task name) is required")
        clashes = sorted(set(wire_names(self.params)) & RECORD_FIELDS)
        if clashes:
            raise ValueError(
                f"kind {self.name!r}: parameter names reserved by the job record: {clashes}"
            )

    @property
    def over_http(self) -> bool:
        """Whether ``POST /jobs/<name>`` exists for this kind (``access="none"``: it does not)."""
        return self.access != "none"


class Registry:
    """The kinds a deployment offers, in registration order."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: dict[str, Kind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: Kind) -> Kind:
        if kind.name in self._kinds:
            raise ValueError(f"kind {kind.name!r} is registered already")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def all(self) -> list[Kind]:
        return list(self._kinds.values())

    def __iter__(self) -> Iterator[Kind]:
        return iter(self.all())

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __len__(self) -> int:
        return len(self._kinds)


# Kinds an app declares with :func:`register_kind` in a module named by JOBCAST_IMPORTS.
_DECLARED: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Offer ``kind`` in every registry built after this (``POST /jobs/<name>``...).

    Call it in a module of your own that ``JOBCAST_IMPORTS`` names, next to the task, so
    the web processes that import it offer the kind. A second declaration of one name
    replaces the first (a module imported twice declares the same kind again).
    """
    if not isinstance(kind, Kind):
        raise TypeError(f"register_kind takes a Kind, not {type(kind).__name__}")
    _DECLARED[kind.name] = kind
    return kind


def default_registry(settings: Settings) -> Registry:
    """The demo kinds, their parameter models built for these settings' limits, and the
    kinds the modules of ``JOBCAST_IMPORTS`` declare (imported here)."""
    import importlib

    from tasks.demo.analyze_params import ANALYZE
    from tasks.demo.params import imagine_kind
    from tasks.demo.sheet import sheet_kind

    for module in settings.import_list:
        importlib.import_module(module)
    registry = Registry([imagine_kind(settings), Kind(**ANALYZE), sheet_kind(settings)])
    for kind in _DECLARED.values():
        if kind.name in registry:
            raise ValueError(f"the job kind {kind.name!r} is declared twice")
        registry.register(kind)
    return registry


def wire_names(model: type[BaseModel]) -> list[str]:
    """The JSON names of a model's fields (aliases where set)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def field_problems(model: type[BaseModel], exc: ValidationError) -> dict[str, str]:
    """Each bad field of ``exc`` by its JSON name, with one short reason (the first found)."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        name = str(loc[0]) if loc else "body"
        problems.setdefault(name, _reason(model, name, error))
    return problems


def _reason(model: type[BaseModel], name: str, error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        info = next((i for n, i in model.model_fields.items() if (i.alias or n) == name), None)
        hint = (
            next((m.what for m in info.metadata if isinstance(m, Missing)), None) if info else None
        )
        return f"required: {hint}" if hint else "required"
    message = str(error["msg"])
    # pydantic's own messages start with a capital ("Input should be ..."); ours do not.
    return message[:1].lower() + message[1:] if kind not in CUSTOM else message


CUSTOM = frozenset({"jobcast"})  # the error type our own validators raise
