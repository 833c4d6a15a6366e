"""Job kinds: the registry, and the imagine parameters whose schema and validation agree."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from tasks.config import Settings
from tasks.demo.params import imagine_params
from tasks.kinds import Kind, Registry, default_registry, field_problems

MODEL = imagine_params(Settings())
SCHEMA = Draft202012Validator(MODEL.model_json_schema())


class Echo(BaseModel):
    text: str


def accepts(body: dict[str, Any]) -> bool:
    try:
        MODEL.model_validate(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("name", "ok"),
    [("imagine", True), ("a", True), ("analyze-text", True), ("a" * 32, True),
     ("a" * 33, False), ("Imagine", False), ("1st", False), ("-x", False), ("a_b", False), ("", False)],
)  # fmt: skip
def test_kind_names_follow_the_pattern(name: str, ok: bool) -> None:
    """A kind's name is [a-z][a-z0-9-]{0,31}; anything else is refused when declared."""
    if ok:
        assert Kind(name=name, params=Echo, task="t").name == name
    else:
        with pytest.raises(ValueError, match="must match"):
            Kind(name=name, params=Echo, task="t")


def test_a_kind_is_declared_completely() -> None:
    """Params must be a pydantic model, access one of the words or a callable, the task
    named, and no parameter may take a name the job record uses itself."""

    class Clash(BaseModel):
        state: str

    with pytest.raises(TypeError):
        Kind(name="x", params=dict, task="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="access"):
        Kind(name="x", params=Echo, task="t", access="everyone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        Kind(name="x", params=Echo, task="")
    with pytest.raises(ValueError, match="reserved"):
        Kind(name="x", params=Clash, task="t")
    assert Kind(name="x", params=Echo, task="t", access=lambda request: True).over_http
    assert not Kind(name="x", params=Echo, task="t", access="none").over_http


def test_registry_keeps_order_and_refuses_twins() -> None:
    """register/get/all: in registration order, one kind per name, None for unknown names."""
    one, two = Kind("one", Echo, "t1"), Kind("two", Echo, "t2")
    registry = Registry([one])
    assert registry.register(two) is two
    assert registry.all() == [one, two] and registry.get("two") is two
    assert registry.get("three") is None and "one" in registry and len(registry) == 2
    with pytest.raises(ValueError, match="already"):
        registry.register(Kind("one", Echo, "t3"))


def test_default_registry_offers_imagine_for_the_settings() -> None:
    """The demo registry has the imagine kind, its schema showing the configured limits."""
    kind = default_registry(Settings(max_side=800, max_steps=30, max_prompt_chars=99)).get(
        "imagine"
    )
    assert kind is not None and kind.task == "jobcast.imagine" and kind.access == "public"
    properties = kind.params.model_json_schema()["properties"]
    assert properties["width"]["maximum"] == 800 and properties["steps"]["maximum"] == 30
    assert properties["prompt"]["maxLength"] == 99
    assert kind.params.model_json_schema()["additionalProperties"] is False


def test_params_collapse_whitespace_and_fill_defaults() -> None:
    """The prompt's runs of whitespace become one space; null or absent fields take their
    defaults (a random seed); 141.0 is the integer 141."""
    params = MODEL.model_validate({"prompt": "  a\t red \n kite ", "width": None, "seed": 141.0})
    assert params.model_dump() == {
        "prompt": "a red kite", "width": 512, "height": 512, "steps": 20, "seed": 141,
    }  # fmt: skip
    assert type(params.model_dump()["seed"]) is int
    seed = MODEL.model_validate({"prompt": "x"}).model_dump()["seed"]
    assert 0 <= seed <= 2**32 - 1


def test_problems_name_each_field() -> None:
    """field_problems: one reason per bad field, by its JSON name."""
    with pytest.raises(ValidationError) as caught:
        MODEL.model_validate({"width": 5, "what": 1})
    assert field_problems(MODEL, caught.value) == {
        "prompt": "required: a text describing the picture",
        "width": "must be an integer from 64 to 1024",
        "what": "unknown field",
    }


CHARACTERS = [
    "a", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f", "\x80", "\x85",
    "\x9f", "\xa0", "\xad", "\u200b", "\u2028", "\u202e", "\u3000", "\ufeff", "\ue000",
    "é", "猫", "😀", "\U000e0041", "\U0010fffd",
]  # fmt: skip


@pytest.mark.parametrize("char", CHARACTERS)
@pytest.mark.parametrize("shape", ["{}", "x{}", "{}x", "x{}x", "{}{}"])
def test_schema_and_validation_agree_on_each_character(char: str, shape: str) -> None:
    """For prompts built around each interesting character (controls C0 and C1, format
    characters, every kind of space, private use, astral), the JSON Schema's verdict is
    validation's verdict."""
    body = {"prompt": shape.format(char, char)}
    assert SCHEMA.is_valid(body) == accepts(body), body


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=12) | st.text(st.sampled_from(CHARACTERS), max_size=8))
def test_schema_and_validation_agree_on_any_text(text: str) -> None:
    """Any text at all: valid by the schema exactly when validation accepts it."""
    body = {"prompt": text}
    assert SCHEMA.is_valid(body) == accepts(body), body


@pytest.mark.parametrize(
    "value",
    [64, 64.0, 1024, 1024.0, 63, 1025, 141.5, True, False, None, "64", [64], {"v": 64},
     float("nan"), float("inf"), 10**30, 1e300],
)  # fmt: skip
def test_schema_and_validation_agree_on_integers(value: Any) -> None:
    """An integer field takes what JSON Schema calls an integer in range (or null)."""
    body = {"prompt": "x", "width": value}
    assert SCHEMA.is_valid(body) == accepts(body), body


def test_unpaired_surrogates_are_refused_though_the_pattern_cannot_say_so() -> None:
    """The one place schema and validation differ: a lone surrogate (JSON may escape one,
    no UTF-8 text holds one) is refused; the pattern cannot name surrogates in every
    regex dialect, so the schema alone would let it pass."""
    assert not accepts({"prompt": "a\ud800"})
