"""Real Redis servers of a test's own: a Redis Cluster (3 primaries + 3 replicas), a Sentinel setup, one server.

Each is a ``redis-server`` process on free loopback ports with its files in a temporary directory,
stopped by its PID (never by name), so tests can kill, reshard and fail over without touching the
shared Redis. ``require_redis_server()`` fails in CI (FASTAPPS_AUTH_REQUIRE_SERVICES) and skips
elsewhere when ``redis-server`` is not installed. Waits are bounded polls on the servers' own state.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.support.services import services_required

HOST = "127.0.0.1"
#: Cluster failure detection and Sentinel down-after, in ms: small, so that failover tests take seconds.
NODE_TIMEOUT_MS = 1000


def require_redis_server() -> None:
    """Fail (CI) or skip (laptop) when ``redis-server`` or ``redis-cli`` is not installed."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        message = f"{' and '.join(missing)} not found: install Redis (apt-get install redis-server)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on (and, for a cluster node, its bus port + 10000 too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 < 65536 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def wait_for(what: str, ready: Callable[[], bool], *, deadline: float = 30.0) -> None:
    """Poll ``ready`` until it is true; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def command(server: RedisServer, *args: str) -> str:
    """One command's reply as text (a list reply: its items, space-separated)."""
    reply = server.client(decode_responses=True).execute_command(*args)  # type: ignore[no-untyped-call]
    return " ".join(map(str, reply)) if isinstance(reply, list) else str(reply)


class RedisServer:
    """One ``redis-server`` process (a plain server, a cluster node, or a Sentinel)."""

    def __init__(self, directory: Path, port: int, *args: str, sentinel: bool = False) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> RedisServer:
        if self.sentinel:
            command = ["redis-server", str(self.directory / "sentinel.conf"), "--sentinel"]
        else:
            command = ["redis-server"]
        command += ["--port", str(self.port), "--bind", HOST, "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(self.directory / "log")]
        self.process = subprocess.Popen([*command, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"redis-server on {self.address}", lambda: self.client().ping() is True, deadline=15)
        return self

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, protocol=2, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to clients or peers."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisClusterServers:
    """Six nodes, ``redis-cli --cluster create --cluster-replicas 1``: three primaries with one replica each."""

    def __init__(self, nodes: int = 6) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fastapps-rl-cluster-"))
        self.servers = [
            RedisServer(
                self.root / str(i),
                free_port(with_bus=True),
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage",
                "no",
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(s.address for s in self.servers[:3])

    def start(self) -> RedisClusterServers:
        for s in self.servers:
            s.start()
        addresses = [s.address for s in self.servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()
        return self

    def wait_healthy(self, *, deadline: float = 30.0) -> None:
        """Every running node says the cluster is ok and knows three primaries, each with a linked replica."""

        def healthy() -> bool:
            for s in self.running():
                info = self.cluster_info(s)
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.servers):
                    return False
            primaries = [n for n in self.nodes() if "master" in n["flags"] and "fail" not in n["flags"]]
            linked = [n for n in self.nodes() if "slave" in n["flags"] and n["link"] == "connected"]
            return len(primaries) == 3 and len(linked) == len(self.servers) - 3

        wait_for("a healthy cluster", healthy, deadline=deadline)

    @staticmethod
    def cluster_info(server: RedisServer) -> dict[str, str]:
        text = command(server, "CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def running(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a running node: id, address, flags, primary id, link, slots."""
        text = command(self.running()[0], "CLUSTER", "NODES")
        out = []
        for line in text.splitlines():
            parts = line.split()
            out.append(
                {
                    "id": parts[0],
                    "address": parts[1].split("@")[0],
                    "flags": parts[2],
                    "primary": parts[3],
                    "link": parts[7],
                    "slots": " ".join(parts[8:]),
                }
            )
        return out

    def server(self, address: str) -> RedisServer:
        return next(s for s in self.servers if s.address == address)

    def owner(self, slot: int) -> RedisServer:
        """The server whose node serves ``slot`` now."""
        for n in self.nodes():
            if "master" not in n["flags"] or "fail" in n["flags"]:
                continue
            for part in n["slots"].split():
                if part.startswith("["):
                    continue
                lo, _, hi = part.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return self.server(n["address"])
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, server: RedisServer) -> str:
        return command(server, "CLUSTER", "MYID")

    def primaries(self) -> list[RedisServer]:
        return [self.server(n["address"]) for n in self.nodes() if "master" in n["flags"] and "fail" not in n["flags"]]

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class SentinelServers:
    """A primary, a replica of it, and one Sentinel (quorum 1) watching service ``mymaster``."""

    SERVICE = "mymaster"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fastapps-rl-sentinel-"))
        self.primary = RedisServer(self.root / "a", free_port())
        self.replica = RedisServer(self.root / "b", free_port(), "--replicaof", HOST, str(self.primary.port))
        self.sentinel_dir = self.root / "s"
        self.sentinel = RedisServer(self.sentinel_dir, free_port(), sentinel=True)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.sentinel.address}/{self.SERVICE}"

    def start(self) -> SentinelServers:
        self.primary.start()
        self.replica.start()
        self.sentinel_dir.mkdir(parents=True, exist_ok=True)
        (self.sentinel_dir / "sentinel.conf").write_text(
            f"sentinel monitor {self.SERVICE} {HOST} {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n"
        )
        self.sentinel.start()
        wait_for("the replica in sync", self.replica_in_sync, deadline=30)
        wait_for("the sentinel to see the replica", lambda: len(self.sentinel_replicas()) == 1, deadline=30)
        return self

    def replica_in_sync(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def sentinel_replicas(self) -> list[dict[str, object]]:
        replicas: list[dict[str, object]] = self.sentinel.client().sentinel_slaves(self.SERVICE)
        return replicas

    def master_port(self) -> int:
        _host, port = command(self.sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE).split()
        return int(port)

    def stop(self) -> None:
        for s in (self.sentinel, self.replica, self.primary):
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)
