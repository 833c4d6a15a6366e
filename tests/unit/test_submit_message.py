"""The Celery message the enqueue script pushes: what ``send_task`` would have pushed."""

from __future__ import annotations

import base64
import json
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.submit import broker_message, queue_of

PLAIN = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.text(alphabet="'\"\\\n\x00é☃", max_size=10),
    st.text(min_size=1000, max_size=1100),  # past saferepr's 1024: truncated
)
VALUES = st.recursive(PLAIN, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
KWARGS = st.dictionaries(st.text(max_size=12), VALUES, max_size=6)
ARGS = st.lists(VALUES, max_size=3)


def celery_app(**conf: Any) -> Celery:
    app = Celery("unit", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(conf)
    return app


def reference(app: Celery, name: str, task_id: str, kwargs: Any, args: list[Any]) -> Any:
    """Celery's own protocol 2 message for the same call (as JSON would carry it)."""
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, args=args, kwargs=kwargs, reply_to=app.thread_oid, ignore_result=None
    )
    return json.loads(json.dumps({"headers": headers, "properties": properties, "body": body}))


APP = celery_app()


@settings(max_examples=300, deadline=None)
@given(kwargs=KWARGS, args=ARGS)
def test_the_message_is_the_one_celery_builds(kwargs: dict[str, Any], args: list[Any]) -> None:
    """Headers (argsrepr and kwargsrepr included, as Celery's saferepr writes them, long
    values cut the same way), body and properties are what Celery's as_task_v2 gives,
    for any arguments; the delivery tag is fresh for each message."""
    queue, payload = broker_message(APP, "unit.task", "id-1", kwargs, args=args)
    first = json.loads(payload)
    ref = reference(APP, "unit.task", "id-1", kwargs, args)
    assert queue == "celery"
    assert first["headers"] == ref["headers"]
    assert first["headers"]["kwargsrepr"] == saferepr(kwargs, 1024, maxlevels=3)
    assert json.loads(base64.b64decode(first["body"])) == ref["body"]
    assert {k: first["properties"][k] for k in ref["properties"]} == ref["properties"]
    assert first["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert first["content-type"] == "application/json"
    second = json.loads(broker_message(APP, "unit.task", "id-2", kwargs, args=args)[1])
    assert second["headers"]["id"] == second["properties"]["correlation_id"] == "id-2"
    assert second["properties"]["delivery_tag"] != first["properties"]["delivery_tag"]


def test_each_task_and_queue_gets_its_own_route() -> None:
    """Messages of one task to two queues, and of two tasks, each go where send_task
    would send them (the per-process shapes do not mix them up)."""
    app = celery_app(task_routes={"unit.routed": {"queue": "special"}})
    assert broker_message(app, "unit.a", "i1", {})[0] == "celery"
    assert broker_message(app, "unit.a", "i2", {}, queue="other")[0] == "other"
    assert broker_message(app, "unit.routed", "i3", {})[0] == "special"
    assert json.loads(broker_message(app, "unit.routed", "i4", {})[1])["headers"]["task"] == (
        "unit.routed"
    )
    assert queue_of(app, "unit.routed") == "special"
    assert queue_of(app, "unit.a") == "celery"


def test_a_router_function_sees_every_message() -> None:
    """A router function may route by the arguments: every message is routed again."""

    def by_size(name: str, args: Any, kwargs: Any, options: Any, **kw: Any) -> Any:
        return {"queue": "big" if kwargs.get("size", 0) > 10 else "small"}

    app = celery_app(task_routes=(by_size,))
    assert broker_message(app, "unit.t", "i1", {"size": 1})[0] == "small"
    assert broker_message(app, "unit.t", "i2", {"size": 50})[0] == "big"
    assert broker_message(app, "unit.t", "i3", {"size": 2})[0] == "small"
