"""Azure Managed Redis with the **OSS clustering policy**, locally: a real redis-server cluster whose every
node signs clients in with Entra tokens and closes their connections at token expiry, as each AMR shard does.

* ``shards`` masters share the 16,384 slots; an **entry node** that owns none answers on :attr:`port` (AMR's
  ``:10000``): a client that is not cluster-aware gets ``MOVED``; a cluster client reads ``CLUSTER SLOTS``
  there and connects to the shards.
* Each node is fronted by the enforcer (:mod:`.redisproxy`) on its own TLS port, which the cluster announces
  with the host name ``localhost`` (AMR announces host names and per-node ports, 85xx): ``MOVED`` and
  ``CLUSTER SLOTS`` name the enforcers, never the servers behind them.
* ACL users and their token passwords are set on **every** node: a connection to any node authenticates (and
  re-authenticates) on its own.
* :meth:`move_slot` moves a slot and its keys to another shard (a topology change: clients get ``MOVED`` and
  refresh their slot map), as AMR does when it rebalances or scales.

    with RedisClusterStandIn() as redis:
        redis.add_identity(imds.object_id())
        redis.attach(imds)
        LOCATION = redis.url            # rediss://localhost:PORT/0 ; CA in redis.ca_file

Where it differs from AMR (docs/azure-behaviour.md): ``SELECT 1`` gets redis-server's "SELECT is not allowed
in cluster mode" where AMR answers "DB index is out of range"; shards have no replicas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .certs import make_tls_files
from .net import free_port
from .redis import REDIS_RESOURCE, PortTaken, RedisStandIn, bootstrap_acl, launch_redis, server_context

SLOTS = 16384


@dataclass
class Node:
    """One redis-server of the cluster and the enforcer port in front of it."""

    name: str
    redis_port: int
    bus_port: int
    port: int = 0  # the enforcer's (announced to clients)
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    slots: list[tuple[int, int]] = field(default_factory=list)


class RedisClusterStandIn(RedisStandIn):
    """See the module docstring. Context manager; thread-safe."""

    policy = "oss"

    def __init__(self, *, shards: int = 3, resource: str = REDIS_RESOURCE) -> None:
        super().__init__(resource=resource)
        self.announced_host = "localhost"
        self.nodes: list[Node] = []
        self.shards = shards

    @property
    def url(self) -> str:
        return f"rediss://{self.announced_host}:{self.port}/0"

    @property
    def entry(self) -> Node:
        return self.nodes[0]

    @property
    def shard_nodes(self) -> list[Node]:
        return self.nodes[1:]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RedisClusterStandIn:
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-redis-cluster-")
        self.tls = make_tls_files(os.path.join(self._tmp, "tls"))
        self._context = server_context(self.tls)
        for attempt in range(1, 4):
            try:
                self._launch_nodes()
                break
            except PortTaken:  # another worker's server took a port picked here: pick them all again
                self._stop_server()
                self._close_listeners()
                if attempt == 3:
                    raise
        self._form_cluster()
        threading.Thread(target=self._expiry_loop, name="redis-enforcer-expiry", daemon=True).start()
        return self

    def _launch_nodes(self) -> None:
        names = ["entry"] + [f"shard{i}" for i in range(self.shards)]
        self.nodes = [Node(name, free_port(), free_port()) for name in names]
        for node in self.nodes:
            node.port = self._front(node.redis_port)
        self.port = self.entry.port
        self.redis_port = self.entry.redis_port
        for node in self.nodes:
            shutil.rmtree(os.path.join(self._tmp or "", node.name), ignore_errors=True)  # a failed attempt
            self._launch(node)

    def _launch(self, node: Node) -> None:
        assert self._tmp
        node.process = launch_redis(
            os.path.join(self._tmp, node.name),
            node.redis_port,
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-port", str(node.bus_port), "--cluster-announce-bus-port", str(node.bus_port)),
            *("--cluster-announce-port", str(node.port), "--cluster-announce-hostname", self.announced_host),
            *("--cluster-preferred-endpoint-type", "hostname", "--cluster-node-timeout", "5000"),
        )
        bootstrap_acl(self.host, node.redis_port, self.admin_password)
        node.node_id = self._node_admin(node).execute_command("CLUSTER", "MYID").decode()

    def _form_cluster(self) -> None:
        shards = self.shard_nodes
        for index, node in enumerate(shards):
            first, last = SLOTS * index // len(shards), SLOTS * (index + 1) // len(shards) - 1
            node.slots = [(first, last)]
            self._node_admin(node).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        entry = self._node_admin(self.entry)
        for node in shards:
            entry.execute_command("CLUSTER", "MEET", self.host, node.redis_port, node.bus_port)
        deadline = time.monotonic() + 30
        while not all(self._converged(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster stand-in did not converge in 30 s")
            time.sleep(0.1)

    def _converged(self, node: Node) -> bool:
        info = self._node_admin(node).execute_command("CLUSTER", "INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        known = int(fields.get("cluster_known_nodes", 0))
        return fields.get("cluster_state") == "ok" and known == len(self.nodes)

    def _stop_server(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    node.process.kill()

    def restart(self, downtime: float = 1.0, *, keep_data: bool = False) -> None:
        raise NotImplementedError("restarting the cluster stand-in is not supported yet")

    # ------------------------------------------------------------------ admin

    def _node_admin(self, node: Node) -> Any:
        import redis

        return redis.Redis(
            host=self.host, port=node.redis_port, username="admin", password=self.admin_password
        )

    def admin(self) -> Any:
        """A cluster client to the real servers as ``admin`` (not through the enforcers)."""
        import redis
        from redis.cluster import ClusterNode

        nodes = [ClusterNode(self.host, node.redis_port) for node in self.shard_nodes]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(
            startup_nodes=nodes,
            username="admin",
            password=self.admin_password,
            # the servers announce the enforcers' ports: map them back to the servers behind
            address_remap=self._behind,
        )

    def _behind(self, address: tuple[str, int]) -> tuple[str, int]:
        ports = {node.port: node.redis_port for node in self.nodes}
        host, port = address
        return (self.host, ports[port]) if port in ports else (host, port)

    def admins(self) -> list[Any]:
        return [self._node_admin(node) for node in self.nodes]

    # ------------------------------------------------------------------ topology

    def owner(self, slot: int) -> Node:
        for node in self.shard_nodes:
            if any(first <= slot <= last for first, last in node.slots):
                return node
        raise ValueError(f"no shard owns slot {slot}")

    def move_slot(self, slot: int, to: int) -> None:
        """Move ``slot`` and its keys to shard ``to`` (0-based), as a rebalance does: clients holding the
        old slot map get ``MOVED`` and refresh it."""
        source, target = self.owner(slot), self.shard_nodes[to]
        if source is target:
            return
        src, dst = self._node_admin(source), self._node_admin(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command(
                "MIGRATE", self.host, target.redis_port, "", 0, 5000,
                "AUTH2", "admin", self.admin_password, "KEYS", *keys,
            )  # fmt: skip
        for node in self.nodes:
            self._node_admin(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        source.slots = _without(source.slots, slot)
        target.slots = sorted([*target.slots, (slot, slot)])


def _without(ranges: list[tuple[int, int]], slot: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        if first <= slot <= last:
            out += [r for r in ((first, slot - 1), (slot + 1, last)) if r[0] <= r[1]]
        else:
            out.append((first, last))
    return out
