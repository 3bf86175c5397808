"""Redis by URL: validate a Redis URL at configuration time, and build the redis-py client it names.

Every component that keeps state in Redis goes through here, so they all accept the same URLs
and get the same client settings. Schemes (each also with ``rediss`` for TLS):

- ``redis://[[user]:password@]host[:port][/db]``: one server (a bounded ``BlockingConnectionPool``);
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: Redis Cluster, through redis-py's
  ``RedisCluster`` (it discovers the nodes, follows MOVED and ASK, retries TRYAGAIN briefly);
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``: the primary
  that a set of Sentinels names, through redis-py's ``Sentinel.master_for`` (failover followed);
- ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: a local socket.

redis-py is imported only when a client is built, so validating a URL needs no driver. No client
built here resends a command by itself after a connection error or a timeout: a command that may
already have run is never run twice (``Retry(NoBackoff(), 0)``); a cluster redirection is
followed, since the command did not run on the node that redirected it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote

from fastapps_auth.endpoints import is_loopback

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

Kind = Literal["server", "cluster", "sentinel", "unix"]

SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "unix": ("unix", False),
}
#: URL query parameters, and the kinds of URL that take each (TLS ones need a rediss scheme).
PARAMETERS: dict[str, str] = {
    "client_name": "any",
    "db": "unix",
    "sentinel_password": "sentinel",
    "ssl_ca_certs": "tls",
    "ssl_certfile": "tls",
    "ssl_keyfile": "tls",
    "ssl_cert_reqs": "tls",
    "ssl_check_hostname": "tls",
}
#: What a plain client is told when the server it reached is a Redis Cluster node.
CLUSTER_NODE = "this Redis is a cluster node: use redis+cluster://"
_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A validated Redis URL. ``str()`` gives it without its credentials (for logs and errors)."""

    scheme: str
    kind: Kind
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    service: str | None = None
    path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)

    def __str__(self) -> str:
        user = "***@" if self.username or self.password else ""
        if self.kind == "unix":
            return f"unix://{user}{self.path}" + (f"?db={self.db}" if self.db else "")
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        tail = f"/{self.service}" if self.service else ""
        if self.db:
            tail += f"/{self.db}"
        return f"{self.scheme}://{user}{hosts}{tail}"


def parse_redis_url(url: str, *, allow_plaintext: bool = False, plaintext_option: str = "insecure_backend") -> RedisURL:
    """The validated form of ``url``; ``ValueError`` with a readable reason (never the password) otherwise.

    Plaintext (``redis``, not ``rediss``) is accepted only when every listed host is loopback, unless
    ``allow_plaintext``; the error names ``plaintext_option``, the caller's option that allows it.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    known = ", ".join(f"{s}://" for s in SCHEMES)
    if not sep:  # never echoed: what is not a URL may still hold a password
        raise ValueError(f"not a Redis URL (expected scheme://host...; use {known})")
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme[:20] + '://'!r} (use {known})")
    kind, tls = SCHEMES[scheme]
    if "#" in rest:
        raise ValueError("a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    params = _parameters(query, kind, tls)
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:  # user:password@, :password@, or user@ (a username alone, as redis-py reads it)
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if kind == "unix":
        if hosts:
            raise ValueError("unix:// takes a path, not a host: unix:///path/to/redis.sock")
        if not path:
            raise ValueError("unix:// needs the socket's path: unix:///path/to/redis.sock")
        db = _int(dict(params).get("db", "0"), "db")
        return RedisURL(scheme, kind, tls, (), db, None, "/" + path, username, password, params)
    nodes = tuple(_node(h, 26379 if kind == "sentinel" else 6379) for h in hosts.split(","))
    if kind == "server" and len(nodes) > 1:
        raise ValueError(f"{scheme}:// names one server; for several nodes use {scheme}+cluster:// or +sentinel://")
    db, service = 0, None
    parts = [unquote(p) for p in path.split("/")] if path else []
    if kind == "sentinel":
        if not parts or not parts[0]:
            raise ValueError(f"{scheme}:// needs the service name: {scheme}://host:26379/mymaster")
        service, parts = parts[0], parts[1:]
    if len(parts) > 1 or (parts and parts[0] and kind == "cluster" and parts[0] != "0"):
        raise ValueError(
            "Redis Cluster has only database 0" if kind == "cluster" else f"unexpected path {'/' + path!r}"
        )
    if parts and parts[0]:
        db = _int(parts[0], "the database number")
    if not tls and not allow_plaintext:
        remote = [h for h, _ in nodes if not is_loopback(h)]
        if remote:
            raise ValueError(
                f"{scheme}:// to a non-loopback host ({remote[0]}) is unencrypted; "
                f"use {scheme.replace('redis', 'rediss', 1)}:// or set {plaintext_option} = true"
            )
    return RedisURL(scheme, kind, tls, nodes, db, service, None, username, password, params)


def _parameters(query: str, kind: Kind, tls: bool) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        where = PARAMETERS.get(name)
        if where is None:
            hint = "; for Redis Cluster use redis+cluster://" if name == "cluster" else ""
            known = ", ".join(PARAMETERS)
            raise ValueError(f"unknown Redis URL parameter {name!r} (known: {known}){hint}")
        if where == "tls" and not tls:
            raise ValueError(f"URL parameter {name!r} needs TLS (a rediss scheme)")
        if where not in ("any", "tls") and where != kind:
            raise ValueError(f"URL parameter {name!r} applies only to {where} URLs")
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs is one of {', '.join(_CERT_REQS)}")
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise ValueError("ssl_check_hostname is true or false")
        out.append((name, value))
    return tuple(out)


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"not a valid host:port: {text!r}")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("a Redis URL needs a host (redis://host:port)")
    port = _int(port_text, "the port") if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError(f"not a valid port: {port}")
    return unquote(host), port


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} must be a number, not {text!r}")
    return int(text)


def make_client(
    url: RedisURL,
    *,
    max_connections: int,
    timeout: float,
    caller_bounds: bool = False,
) -> Redis | RedisCluster:
    """The redis-py asyncio client for ``url``: at most ``max_connections`` per server, no automatic resend.

    ``timeout`` bounds each connection attempt, each wait for a free connection, and each socket read
    and write. ``caller_bounds=True`` sets none of these, for a caller that runs every operation
    under its own ``asyncio.timeout`` (Sentinel queries keep ``timeout``): with a socket timeout, redis-py
    runs each write under ``asyncio.wait_for``, a task per command on Python 3.11 and a large part
    of the client's cost of a call (docs/benchmarks/rate-limit.md).

    Nothing connects here: redis-py connects on first use (a cluster discovers its nodes then, under its lock).
    A single server's pool is a ``BlockingConnectionPool``: a caller waits for a free connection
    instead of opening more. A cluster's per-node pools and a Sentinel's pool refuse beyond
    ``max_connections`` instead (``MaxConnectionsError``): bound the commands in flight to ``max_connections``
    (``needs_bound``) with a semaphore, whose waiting then counts inside the caller's timeout.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.maint_notifications import MaintNotificationsConfig

    common: dict[str, Any] = {
        "socket_timeout": None if caller_bounds else timeout,
        "socket_connect_timeout": None if caller_bounds else timeout,
        "health_check_interval": 0,
        "username": url.username,
        "password": url.password,
        "client_name": url.param("client_name"),
    }
    if url.tls:
        common.update(_tls_options(url))
    if url.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
            require_full_coverage=False,  # a slot range without a node fails alone, not every key
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),
            ssl=url.tls,
            **common,
        )
    common["retry"] = Retry(NoBackoff(), 0)
    # With maintenance notices on ("auto" under RESP3), redis-py's pool no longer checks a pooled
    # connection for a close before reusing it, so every check after a Redis restart would fail once.
    common["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    if url.kind == "sentinel":
        assert url.service is not None
        sentinel_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "password": url.param("sentinel_password"),
            "retry": Retry(NoBackoff(), 0),
        }
        if url.tls:
            sentinel_options.update({"ssl": True, **_tls_options(url)})
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(url.nodes), sentinel_kwargs=sentinel_options, ssl=url.tls, db=url.db, **common
        )
        master: Redis = sentinel.master_for(url.service, max_connections=max_connections)
        return master
    if url.kind == "unix":
        pool = BlockingConnectionPool(
            max_connections=max_connections,
            timeout=None if caller_bounds else timeout,
            connection_class=UnixDomainSocketConnection,
            path=url.path,
            db=url.db,
            **common,
        )
    else:
        (host, port), *_ = url.nodes
        pool = BlockingConnectionPool(
            max_connections=max_connections,
            timeout=None if caller_bounds else timeout,
            connection_class=SSLConnection if url.tls else Connection,
            host=host,
            port=port,
            db=url.db,
            **common,
        )
    client: Redis = Redis.from_pool(pool)
    return client


def _tls_options(url: RedisURL) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        value = url.param(name)
        if value is not None:
            out[name] = value
    check = url.param("ssl_check_hostname")
    if check is not None:
        out["ssl_check_hostname"] = _BOOLEANS[check.lower()]
    return out


def needs_bound(url: RedisURL) -> bool:
    """True if the client's pools refuse, rather than wait, beyond ``max_connections`` (cluster, Sentinel)."""
    return url.kind in ("cluster", "sentinel")


async def warm(client: Redis | RedisCluster, connections: int) -> None:
    """Open ``connections`` connections now (split between the primaries of a cluster): concurrent PINGs."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        await client.initialize()
        primaries = client.get_primaries()
        each = -(-connections // max(1, len(primaries)))
        pings = [client.ping(target_nodes=node) for node in primaries for _ in range(each)]
    else:
        pings = [client.ping() for _ in range(connections)]
    await asyncio.gather(*pings)


async def probe(client: Redis | RedisCluster) -> None:
    """Reach the server (every primary of a cluster) once; raise ``RedisUnusable`` with a one-line reason."""
    from redis.asyncio.cluster import RedisCluster

    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
            state = (await client.cluster_info()).get("cluster_state")
            if state not in ("ok", b"ok"):
                raise RedisUnusable(f"the cluster's state is {state!r}, not 'ok'")
            return
        await client.ping()
        if await cluster_enabled(client):
            raise RedisUnusable(CLUSTER_NODE)
    except RedisUnusable:
        raise
    except Exception as exc:
        raise RedisUnusable(one_line(exc)) from None


async def cluster_enabled(client: Redis | RedisCluster) -> bool:
    """True if the server a plain client reached is a Redis Cluster node (``INFO cluster``)."""
    info = await client.info("cluster")
    return bool(info.get("cluster_enabled"))


async def close(client: Redis | RedisCluster) -> None:
    """Close the client and every connection it holds (a Sentinel master's Sentinel clients too)."""
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    await client.aclose()
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (redis-py's messages name host and port, never a password)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class RedisUnusable(Exception):
    """Redis is unreachable or is not what the URL says (a cluster node behind redis://); the message is one line."""
