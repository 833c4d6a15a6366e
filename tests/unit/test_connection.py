"""Where Redis lives: a plain URL or a Sentinel set in kombu's form, and a broker apart."""

from __future__ import annotations

import importlib.metadata

import pytest

from tasks.app import create_celery
from tasks.config import Settings, SettingsError
from tasks.connection import RedisTarget, parse_sentinels

SENTINELS = "sentinel://h1:26379;sentinel://h2:26380;sentinel://h3/0"


def test_kombus_sentinel_form_names_every_sentinel_and_the_database() -> None:
    """The brief's form: every address, default port 26379, the database on the last."""
    parsed = parse_sentinels(SENTINELS)
    assert parsed.sentinels == [("h1", 26379), ("h2", 26380), ("h3", 26379)]
    assert (parsed.db, parsed.password) == (0, None)
    both = parse_sentinels("sentinel://:s%40cret@h1/2;sentinel://:s%40cret@h2/2")
    assert (both.db, both.password) == (2, "s@cret")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": SENTINELS}, "JOBCAST_SENTINEL_MASTER must name its master"),
        (
            {"REDIS_URL": "sentinel://h1;sentinel://h2/3", "JOBCAST_SENTINEL_MASTER": "m"},
            "REDIS_URL: every address must name the same database",
        ),
        (
            {"REDIS_URL": "sentinel://h1:port", "JOBCAST_SENTINEL_MASTER": "m"},
            "REDIS_URL: bad port",
        ),
        ({"JOBCAST_BROKER_URL": "redis+cluster://h1:7000"}, "cannot use a Redis Cluster"),
        ({"JOBCAST_BROKER_URL": SENTINELS}, "JOBCAST_SENTINEL_MASTER must name its master"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must start with redis://"),
        ({"REDIS_URL": "redis://h1:6379/0?protocol=3"}, "REDIS_URL: protocol=3 is not supported"),
    ],
)
def test_a_redis_it_cannot_use_is_refused_by_name(env: dict[str, str], message: str) -> None:
    """A Sentinel set without its master's name, addresses that disagree, or a broker that
    kombu cannot use stop the process with the variable named."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)


def test_resp2_named_in_the_url_is_accepted() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://h1:6379/0?protocol=2"}).redis_url.endswith("=2")


def test_celery_follows_the_same_sentinel_set() -> None:
    """REDIS_URL names a Sentinel set: Celery's broker is the same value, and kombu's
    sentinel transport gets the master's name and the sentinels' password."""
    settings = Settings.from_env(
        {
            "REDIS_URL": SENTINELS,
            "JOBCAST_SENTINEL_MASTER": "mymaster",
            "JOBCAST_SENTINEL_PASSWORD": "watchers",
        }
    )
    app = create_celery(settings)
    assert app.conf.broker_url == SENTINELS
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"password": "watchers"}
    assert options["visibility_timeout"] == settings.visibility_timeout


def test_a_broker_apart_from_the_event_store() -> None:
    """JOBCAST_BROKER_URL moves Celery's broker only; by default it is REDIS_URL."""
    assert create_celery(Settings.from_env({})).conf.broker_url == "redis://127.0.0.1:6379/0"
    settings = Settings.from_env(
        {"REDIS_URL": "redis://store:6379/0", "JOBCAST_BROKER_URL": "amqp://guest@rabbit//"}
    )
    assert create_celery(settings).conf.broker_url == "amqp://guest@rabbit//"
    assert settings.store.url == "redis://store:6379/0" and settings.broker_target is None


def test_a_target_describes_itself_without_its_password() -> None:
    """Log lines name the server, never its password."""
    assert RedisTarget("redis://:hunter2@db:6379/1").describe() == "redis://db:6379/1"
    sentinel = RedisTarget("sentinel://:hunter2@h1/0;sentinel://:hunter2@h2/0", "mymaster")
    assert "hunter2" not in sentinel.describe() and "h1:26379,h2:26379" in sentinel.describe()


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"REDIS_URL": "reddis://:hunter2-secret@store:6379/0"}, "reddis://store:6379/0"),
        (
            {"REDIS_URL": "sentinel://:hunter2-secret@h1:port", "JOBCAST_SENTINEL_MASTER": "m"},
            "sentinel://h1:port",
        ),
        (
            {"REDIS_URL": "sentinel://:hunter2-secret@:26379", "JOBCAST_SENTINEL_MASTER": "m"},
            "no host",
        ),
        ({"JOBCAST_BROKER_URL": "kafka://user:hunter2-secret@bus:9092"}, "kafka://user@bus:9092"),
        ({"REDIS_URL": "redis://:hunter2-secret@store:63790x/0"}, "REDIS_URL: bad port"),
        ({"REDIS_URL": "redis://:hunter2-secret@store:6379/zero"}, "REDIS_URL: the database"),
        ({"JOBCAST_BROKER_URL": "redis://:hunter2-secret@bus:port"}, "JOBCAST_BROKER_URL: bad"),
    ],
)
def test_a_refused_url_is_named_without_its_password(env: dict[str, str], shown: str) -> None:
    """The startup error for a URL it cannot use (a bad port or database is one: redis-py
    would fail deep inside on the first, and quietly use database 0 for the second) names
    the variable and shows where it points, never the password: it goes to the log."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert shown in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_every_connection_reports_redis_pys_version_resolved_once() -> None:
    """The connections of every pool tell Redis (CLIENT SETINFO) redis-py's name and
    version from one DriverInfo, not one looked up in importlib.metadata per connection."""
    plain = RedisTarget("redis://127.0.0.1:1/0").pool()
    sentinel = RedisTarget(SENTINELS, "mymaster").pool(blocking=True)
    first, second = plain.make_connection(), sentinel.make_connection()
    assert first.driver_info is second.driver_info
    assert first.driver_info.lib_version == importlib.metadata.version("redis")
    assert first.driver_info.formatted_name == "redis-py"
