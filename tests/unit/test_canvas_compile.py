"""Compiling a Celery canvas into child jobs, and the keys of a child (no Redis needed)."""

from __future__ import annotations

import pytest
from celery import Celery, chain, chord, group

from tasks.canvas import compile_canvas
from tasks.keys import Keys, parent_of

app = Celery("compile-test")
a, b, c, d, e = (app.signature(f"t.{name}") for name in "abcde")


def test_a_child_keeps_its_parents_hash_tag_and_its_channel_names_it() -> None:
    """Child P.3's keys hash with P's (the same {P} tag); its channel maps back to P.3;
    only a numeric tail makes a child."""
    keys = Keys()
    assert keys.job("P.3") == "jobcast:job:{P}.3"
    assert keys.events("P.3") == "jobcast:job:{P}.3:events"
    assert keys.job_id_of_channel(keys.channel("P.3")) == "P.3"
    assert keys.job_id_of_channel(keys.channel("P")) == "P"
    assert parent_of("P.3") == "P" and parent_of("P") is None and parent_of("P.x") is None


def test_a_chain_links_each_task_to_the_one_before() -> None:
    """chain(a, b, c): b waits for a and takes its result, c for b; a waits for nothing."""
    nodes = compile_canvas(chain(a, b, c))
    assert [n.deps for n in nodes] == [set(), {0}, {1}]
    assert [n.takes for n in nodes] == [None, 0, 1]
    assert [n.dependents for n in nodes] == [[1], [2], []]


def test_a_chord_callback_waits_for_every_member_and_takes_their_list() -> None:
    """chord([a, b, c], d): d is child 3, waits for 0-2 and takes [0, 1, 2]."""
    nodes = compile_canvas(chord([a, b, c], d))
    assert nodes[3].deps == {0, 1, 2} and nodes[3].takes == [0, 1, 2]
    assert all(n.deps == set() for n in nodes[:3])


def test_nesting_follows_celerys_semantics_and_immutable_signatures_take_nothing() -> None:
    """chain(a, group(chain(b, c), d), immutable e): b and d take a's result, c takes b's, e
    waits for c and d but, immutable, takes nothing."""
    nodes = compile_canvas(chain(a, group(chain(b, c), d), app.signature("t.e", immutable=True)))
    assert [n.sig.task for n in nodes] == ["t.a", "t.b", "t.c", "t.d", "t.e"]
    assert nodes[1].takes == 0 and nodes[3].takes == 0 and nodes[2].takes == 1
    assert nodes[4].deps == {2, 3} and nodes[4].takes is None


def test_an_empty_group_is_refused() -> None:
    """A group with no task cannot be a job: ValueError saying so."""
    with pytest.raises(ValueError, match="no tasks"):
        compile_canvas(group([]))
