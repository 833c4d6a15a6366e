"""Settings: every numeric setting has bounds, checked when an app is built."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tasks.app import create_celery
from tasks.config import BOUNDS, Settings, SettingsError, cors_origins


def test_defaults_are_valid() -> None:
    """The defaults pass their own bounds."""
    Settings.from_env({}).validate()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JOBCAST_RETENTION_SECONDS", "0", "JOBCAST_RETENTION_SECONDS must be from 60 to"),
        ("JOBCAST_RETENTION_SECONDS", "-5", "JOBCAST_RETENTION_SECONDS must be from 60 to"),
        ("JOBCAST_MAX_STEPS", "0", "JOBCAST_MAX_STEPS must be from 1 to 1000"),
        ("JOBCAST_MAX_SIDE", "32", "JOBCAST_MAX_SIDE must be from 64 to 4096"),
        ("JOBCAST_HEARTBEAT_SECONDS", "0", "JOBCAST_HEARTBEAT_SECONDS must be from 0.1"),
        ("JOBCAST_VISIBILITY_TIMEOUT", "0", "JOBCAST_VISIBILITY_TIMEOUT must be from 1"),
        ("JOBCAST_SWEEP_SECONDS", "0", "JOBCAST_SWEEP_SECONDS must be from 1"),
        ("JOBCAST_MAX_QUEUE", "-1", "JOBCAST_MAX_QUEUE must be from 0"),
        ("JOBCAST_WORKER_TIMEOUT", "0.5", "JOBCAST_WORKER_TIMEOUT must be from 1"),
        ("JOBCAST_MAX_STREAMS", "lots", "JOBCAST_MAX_STREAMS must be a number (int), got 'lots'"),
        ("JOBCAST_DEFAULT_SIDE", "2048", "JOBCAST_DEFAULT_SIDE must be from 64 to 1024"),
        ("REDIS_URL", "http://x", "REDIS_URL must start with redis://"),
    ],
)
def test_a_bad_setting_is_refused_by_name(variable: str, value: str, message: str) -> None:
    """A value out of bounds (or not a number) raises an error naming the variable."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert message in str(caught.value)


# The widest sides and steps the bounds allow, so each field can reach both its ends.
LOOSE = Settings(min_side=8, max_side=4096, default_side=8, default_steps=1)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_bound_is_enforced_at_both_ends(name: str) -> None:
    """Each end of a bound is accepted, one past it refused (by ``Settings.validate``)."""
    low, high = BOUNDS[name]
    for inside in (low, high):
        if (name, inside) != ("min_side", high):  # would exceed the default side
            LOOSE.replace(**{name: inside}).validate()
    for outside in (low - 1, high + 1):
        with pytest.raises(SettingsError, match="JOBCAST_" + name.upper()):
            LOOSE.replace(**{name: outside}).validate()


def test_lowering_a_cap_lowers_its_default() -> None:
    """JOBCAST_MAX_SIDE=256 and JOBCAST_MAX_STEPS=10 cap the defaults (512 px, 20 steps)."""
    settings = Settings.from_env({"JOBCAST_MAX_SIDE": "256", "JOBCAST_MAX_STEPS": "10"})
    assert (settings.default_side, settings.default_steps) == (256, 10)


def test_the_celery_factory_refuses_bad_settings() -> None:
    """Settings handed to the factory directly are checked too (web and monitor use it)."""
    with pytest.raises(SettingsError, match="JOBCAST_RETENTION_SECONDS"):
        create_celery(Settings(retention_seconds=0))


def test_every_numeric_setting_is_bounded() -> None:
    """A numeric field added to Settings without bounds would pass any value: refuse that."""
    checked_elsewhere = {"default_side", "default_steps", "worker_timeout"}  # see validate()
    numeric = {
        f.name
        for f in dataclasses.fields(Settings)
        if isinstance(f.default, int | float) and not isinstance(f.default, bool)
    }
    assert numeric - checked_elsewhere - set(BOUNDS) == set()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"JOBCAST_CORS_ORIGINS": "*", "JOBCAST_CORS_CREDENTIALS": "1"}, "needs exact origins"),
        ({"JOBCAST_CORS_ORIGINS": "*,https://a.example"}, "either * or a list"),
        ({"JOBCAST_CORS_ORIGINS": "https://a.example/app"}, "no path"),
        ({"JOBCAST_CORS_ORIGINS": "a.example"}, "JOBCAST_CORS_ORIGINS takes origins"),
        ({"JOBCAST_URL_PREFIX": "/jobcast/"}, "JOBCAST_URL_PREFIX must be empty or a path"),
        ({"JOBCAST_URL_PREFIX": "jobcast"}, "JOBCAST_URL_PREFIX must be empty or a path"),
    ],
)
def test_bad_cors_and_prefix_settings_are_refused(environ: dict[str, str], message: str) -> None:
    """A star with credentials, an origin with a path, or a prefix that is not a clean
    path stops the process with a message naming the variable."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(environ)


def test_cors_origins_are_read_as_a_list() -> None:
    """Comma-separated origins, spaces and case aside, with an explicit port."""
    settings = Settings.from_env(
        {
            "JOBCAST_CORS_ORIGINS": " https://A.example , http://localhost:5173",
            "JOBCAST_CORS_CREDENTIALS": "yes",
        }
    )
    assert cors_origins(settings.cors_origins) == {"https://a.example", "http://localhost:5173"}
    assert settings.cors_credentials is True


def test_a_flask_config_adds_to_the_environment() -> None:
    """``from_config`` takes the JOBCAST_* keys of a mapping (typed or text) over the
    environment, ignores other keys, and refuses an unknown or mistyped Jobcast key."""
    settings = Settings.from_config(
        {"JOBCAST_MAX_QUEUE": 5, "JOBCAST_HEARTBEAT_SECONDS": "2.5", "SECRET_KEY": "x"},
        {"JOBCAST_MAX_QUEUE": "9", "JOBCAST_RETRY_MS": "500"},
    )
    assert (settings.max_queue, settings.heartbeat_seconds, settings.retry_ms) == (5, 2.5, 500)
    with pytest.raises(SettingsError, match="JOBCAST_MAX_QUEUS is not a Jobcast setting"):
        Settings.from_config({"JOBCAST_MAX_QUEUS": 5}, {})
    with pytest.raises(SettingsError, match="JOBCAST_MAX_QUEUE must be a whole number"):
        Settings.from_config({"JOBCAST_MAX_QUEUE": True}, {})
    with pytest.raises(SettingsError, match="JOBCAST_MAX_QUEUE must be from 0"):
        Settings.from_config({"JOBCAST_MAX_QUEUE": -1}, {})


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_URL": "redis+cluster://n1:7000,n2:7000"}, "JOBCAST_BROKER_URL"),
        ({"REDIS_URL": "redis+cluster://:s3cret@n1:70x0", "JOBCAST_BROKER_URL": "redis://b"}, "70x0"),
        (
            {"REDIS_URL": "redis+cluster://n1:7000", "JOBCAST_BROKER_URL": "redis://b",
             "JOBCAST_PREFIX": "{app}:"},
            "JOBCAST_PREFIX",
        ),
    ],
)  # fmt: skip
def test_a_cluster_store_is_refused_without_a_broker_a_good_address_or_a_plain_prefix(
    env: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(says)) as refused:
        Settings.from_env(env)
    assert "s3cret" not in str(refused.value)


def test_a_cluster_store_with_a_broker_is_taken() -> None:
    env = {"REDIS_URL": "redis+cluster://n1:7000,n2", "JOBCAST_BROKER_URL": "redis://b:6379/0"}
    settings = Settings.from_env(env)
    assert settings.store.cluster and settings.keys.cluster
    assert settings.store.nodes() == [("n1", 7000), ("n2", 6379)]
    assert settings.broker == "redis://b:6379/0"
