"""redis.url: one server, a Sentinel-watched master or a Cluster; a bad URL is a clear error at
start, not a failure on the first call."""

from __future__ import annotations

import pytest

from zvonok_agi.config import ConfigError, load_settings
from zvonok_agi.store.connection import RedisTarget, parse_redis_url


@pytest.mark.parametrize("url", ["redis://10.0.0.5:6379/0", "unix:///run/r.sock?db=0"])
def test_a_single_server_url_is_left_to_redis_py(url: str) -> None:
    assert parse_redis_url(url) == RedisTarget("single", url)


def test_the_rediss_schemes_are_over_tls() -> None:
    assert parse_redis_url("rediss://:pw@redis.example:6380/2").tls
    sentinel = parse_redis_url("rediss+sentinel://h1:26379,h2/mymaster/1")
    assert (sentinel.kind, sentinel.tls, sentinel.db) == ("sentinel", True, 1)
    assert sentinel.nodes == (("h1", 26379), ("h2", 26379))
    cluster = parse_redis_url("rediss+cluster://h1:7000")
    assert (cluster.kind, cluster.tls) == ("cluster", True)
    assert not parse_redis_url("redis+sentinel://h1/m").tls


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"ZVONOK_REDIS_URL": "rediss://h:6380/0?ssl_ca_certs=/ca.pem"}, "redis.tls_"),
        ({"ZVONOK_REDIS_URL": "redis://h/0", "ZVONOK_REDIS_TLS_CA_FILE": "ca.pem"}, "not over TLS"),
        ({"ZVONOK_REDIS_TLS_CHECK_HOSTNAME": "no"}, "not over TLS"),  # the embedded server
        (
            {"ZVONOK_REDIS_URL": "rediss://h/0", "ZVONOK_REDIS_TLS_CA_FILE": "/no/such/ca.pem"},
            "redis.tls_ca_file '/no/such/ca.pem'",
        ),
        (
            {"ZVONOK_REDIS_URL": "rediss+cluster://h", "ZVONOK_REDIS_TLS_CERT_FILE": "c.pem"},
            "redis.tls_cert_file and redis.tls_key_file go together",
        ),
        (
            {
                "ZVONOK_REDIS_URL": "rediss+sentinel://h/m",
                "ZVONOK_REDIS_TLS_CERT_FILE": "/no/c.pem",
                "ZVONOK_REDIS_TLS_KEY_FILE": "/no/k.pem",
            },
            "redis.tls_cert_file '/no/c.pem'",
        ),
    ],
)
def test_tls_settings_that_cannot_work_are_refused_at_start(environ: dict, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ)
    assert says in str(refused.value)


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.5:26380,10.0.0.6,[::1]:26381/mymaster/2"
    target = parse_redis_url(url + "?sentinel_password=other")
    assert target.kind == "sentinel"
    assert target.nodes == (("10.0.0.5", 26380), ("10.0.0.6", 26379), ("::1", 26381))
    assert (target.service, target.db) == ("mymaster", 2)
    assert (target.username, target.password) == (None, "s@cret")
    assert target.sentinel_password == "other"
    assert parse_redis_url("redis+sentinel://h:1/m").db == 0


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = parse_redis_url("redis+cluster://app:pw@10.0.0.5:7000,10.0.0.6")
    assert target.kind == "cluster"
    assert target.nodes == (("10.0.0.5", 7000), ("10.0.0.6", 6379))
    assert (target.username, target.password) == ("app", "pw")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("10.0.0.5:6379", "not a URL"),
        ("http://10.0.0.5", "unknown scheme http://"),
        ("redis+sentinel://h1:26379,h2:26379", "name the service"),
        ("redis+sentinel://h1:26379/mymaster/x", "database 'x' is not a number"),
        ("redis+sentinel://h1:26379/m?password=x", "unknown option(s) password"),
        ("redis+sentinel://h1:port/m", "'port' is not a port"),
        ("redis+sentinel://h1:70000/m", "'70000' is not a port"),
        ("redis+cluster://h1:7000,,h2:7001", "a host is missing"),
        ("redis+cluster://h1:7000/1", "database 0 only"),
    ],
)
def test_a_bad_url_is_refused_at_start_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match="redis.url: ") as refused:
        load_settings(environ={"ZVONOK_REDIS_URL": url})
    assert says in str(refused.value)


def test_a_refused_url_is_shown_without_its_passwords() -> None:
    url = "redis+sentinel://app:s3cret@h1:26379/m/x?sentinel_password=0ther"
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"ZVONOK_REDIS_URL": url})
    message = str(refused.value)
    assert "app:***@h1:26379" in message and "sentinel_password=***" in message
    assert "s3cret" not in message and "0ther" not in message


def test_a_key_prefix_with_braces_is_refused() -> None:
    """Braces would move the engine's keys off the slots its scripts expect on a Cluster."""
    with pytest.raises(ConfigError, match="hash tags"):
        load_settings(environ={"ZVONOK_REDIS_KEY_PREFIX": "zv:{a}:"})
