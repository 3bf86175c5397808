"""The shared Redis module: URLs validated at configuration time, and the redis-py client each one names."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from fastapps_auth.backends.redis_client import RedisURL, close, make_client, parse_redis_url

H = "127.0.0.1"


@pytest.mark.parametrize(
    ("url", "kind", "tls", "nodes", "db", "service"),
    [
        ("redis://127.0.0.1", "server", False, (("127.0.0.1", 6379),), 0, None),
        ("redis://localhost:6380/3", "server", False, (("localhost", 6380),), 3, None),
        ("rediss://cache.example:6380/1", "server", True, (("cache.example", 6380),), 1, None),
        ("redis://[::1]:7000", "server", False, (("::1", 7000),), 0, None),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "cluster", False, ((H, 7000), (H, 7001)), 0, None),
        ("rediss+cluster://c.example:6379/0", "cluster", True, (("c.example", 6379),), 0, None),
        (
            "redis+sentinel://127.0.0.1,[::1]:26380/mymaster",
            "sentinel",
            False,
            ((H, 26379), ("::1", 26380)),
            0,
            "mymaster",
        ),
        ("rediss+sentinel://s.example:26379/cache/2", "sentinel", True, (("s.example", 26379),), 2, "cache"),
        ("unix:///run/redis.sock?db=4", "unix", False, (), 4, None),
        ("REDIS://127.0.0.1", "server", False, (("127.0.0.1", 6379),), 0, None),
    ],
)
def test_urls_of_every_kind(
    url: str, kind: str, tls: bool, nodes: tuple[tuple[str, int], ...], db: int, service: str | None
) -> None:
    parsed = parse_redis_url(url)
    assert (parsed.kind, parsed.tls, parsed.nodes, parsed.db, parsed.service) == (kind, tls, nodes, db, service)


def test_credentials_are_read_and_never_shown() -> None:
    url = parse_redis_url("rediss://app:p%40ss@cache.example:6380/0?client_name=web")
    assert (url.username, url.password, url.param("client_name")) == ("app", "p@ss", "web")
    assert str(url) == "rediss://***@cache.example:6380" and "p@ss" not in repr(url)
    assert parse_redis_url("redis://:secret@127.0.0.1").password == "secret"
    only_user = parse_redis_url("redis://someone@127.0.0.1")  # a lone userinfo is a username, as redis-py has it
    assert (only_user.username, only_user.password, str(only_user)) == ("someone", None, "redis://***@127.0.0.1:6379")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("cache.example:6379", "not a Redis URL"),
        ("redis:/pw@host", "not a Redis URL"),
        ("memcached://host", "unsupported Redis URL scheme 'memcached://'"),
        ("redis://10.0.0.5:6379", "unencrypted; use rediss:// or set insecure_backend = true"),
        ("redis+cluster://127.0.0.1:7000,10.0.0.5:7000", "(10.0.0.5) is unencrypted; use rediss+cluster://"),
        ("redis://127.attacker.example", "unencrypted"),
        ("redis://127.0.0.1?cluster=true", "unknown Redis URL parameter 'cluster'"),
        ("redis://127.0.0.1?cluster=true", "for Redis Cluster use redis+cluster://"),
        ("redis://127.0.0.1?db=2", "applies only to unix URLs"),
        ("redis://127.0.0.1?ssl_ca_certs=/ca.pem", "needs TLS"),
        ("rediss://c.example?ssl_cert_reqs=maybe", "ssl_cert_reqs is one of none, optional, required"),
        ("rediss://c.example?ssl_check_hostname=perhaps", "true or false"),
        ("redis://127.0.0.1/x", "must be a number"),
        ("redis://127.0.0.1:0", "not a valid port"),
        ("redis://127.0.0.1:99999", "not a valid port"),
        ("redis://:6379", "needs a host"),
        ("redis://127.0.0.1,127.0.0.2", "names one server"),
        ("redis://127.0.0.1/1/2", "unexpected path"),
        ("redis+cluster://127.0.0.1:7000/1", "only database 0"),
        ("redis+sentinel://127.0.0.1:26379", "needs the service name"),
        ("unix://host/sock", "takes a path, not a host"),
        ("unix://", "needs the socket's path"),
        ("redis://127.0.0.1#frag", "no #fragment"),
        ("redis://[::1:6379", "not a valid host:port"),
    ],
)
def test_bad_urls_say_why_without_the_password(url: str, words: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_redis_url(url.replace("://", "://:hunter2@", 1) if "://" in url and "@" not in url else url)
    assert words in str(exc.value)
    assert "hunter2" not in str(exc.value) and "pw@" not in str(exc.value)


def test_plaintext_may_be_allowed_explicitly() -> None:
    assert parse_redis_url("redis://10.0.0.5", allow_plaintext=True).nodes == (("10.0.0.5", 6379),)
    with pytest.raises(ValueError, match="set tls_off = true"):
        parse_redis_url("redis://10.0.0.5", plaintext_option="tls_off")


async def test_clients_are_redis_pys_own_bounded_and_never_resend() -> None:
    server = make_client(parse_redis_url("redis://127.0.0.1:1/2?client_name=x"), max_connections=7, timeout=0.5)
    cluster = make_client(parse_redis_url("redis+cluster://127.0.0.1:1"), max_connections=7, timeout=0.5)
    sentinel = make_client(parse_redis_url("redis+sentinel://127.0.0.1:1/mymaster"), max_connections=7, timeout=0.5)
    try:
        assert isinstance(server, Redis) and isinstance(server.connection_pool, BlockingConnectionPool)
        pool = server.connection_pool
        assert (pool.max_connections, pool.timeout) == (7, 0.5)
        kwargs = pool.connection_kwargs
        assert kwargs["retry"].get_retries() == 0 and (kwargs["db"], kwargs["client_name"]) == (2, "x")
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
        assert isinstance(cluster, RedisCluster) and cluster.retry.get_retries() == 0
        assert isinstance(sentinel, Redis) and isinstance(sentinel.connection_pool, SentinelConnectionPool)
        assert sentinel.connection_pool.max_connections == 7
        assert sentinel.connection_pool.connection_kwargs["retry"].get_retries() == 0
    finally:
        for client in (server, cluster, sentinel):
            await close(client)


def test_a_parsed_url_is_immutable() -> None:
    url = parse_redis_url("redis://127.0.0.1")
    assert isinstance(url, RedisURL)
    with pytest.raises(AttributeError):
        url.db = 3  # type: ignore[misc]
