"""Static hosts: hosts that are not dataplane nodes (a Linux host or VM
whose VTEP is the kernel's own vxlan device) described to the cluster, so
that every node has their MAC behind their VTEP and their VTEP in the
network's flood list (``dataplane host add|del|list``, ``/v1/hosts``).

They live in the cluster store (etcd) as the endpoint of a "pod" of their
name on node ``static:<name>`` (:meth:`EtcdStore.put_static_endpoint`); every
node's cluster view follows them like any remote pod. A node on the
single-node SQLite store has no cluster to tell: it refuses, and says what
to do instead.
"""

from typing import Any, Dict, List

from .api import Route
from .checks import check_mac, check_name, check_pod_name, check_vtep_ip, fail, parse_ipv4
from .errors import ConfigError, NotFound
from .store import reach
from .store.common import STATIC_NODE_PREFIX


def is_static(endpoint: Dict[str, Any]) -> bool:
    """Whether a store endpoint is a static host's."""
    return str(endpoint.get("node") or "").startswith(STATIC_NODE_PREFIX)


def _row(e: Dict[str, Any]) -> Dict[str, Any]:
    """A static host's endpoint as the API shows it (its "pod" is its name)."""
    return {"name": e["pod"], **{k: e[k] for k in ("network", "plane", "mac", "ip", "vtep")}}


class StaticHosts:
    """Add, list and remove the static hosts of ``store``; ``networks``:
    the names of the networks this node has (a host goes on one of them, or
    on one the store has from other nodes): the service's own map, which a
    reload changes, read as it is at each call."""

    def __init__(self, store, networks, vtep):
        self.store = store
        self.networks = networks
        self.vtep = vtep  # this node's VtepConfig: a host's VTEP must be reachable

    def _need_cluster_store(self):
        if not hasattr(self.store, "put_static_endpoint"):
            raise ConfigError(
                f"static hosts are recorded in the cluster store (store.kind: etcd); this "
                f"node's store is {self.store.kind}: list the host's VTEP under remotes "
                "in the node config (its networks' flood lists) and set vtep.learning: true"
            )

    def list(self) -> List[Dict[str, Any]]:
        if not hasattr(self.store, "put_static_endpoint"):
            return []
        with reach.needed(
            self.store,
            "the static hosts are recorded in it, so none can be listed; the core forwards "
            "to those the cluster view had ('dataplane fdb' shows them, origin host)",
        ):
            eps = self.store.endpoints()
        rows = [_row(e) for e in eps if is_static(e)]
        return sorted(rows, key=lambda r: (r["name"], r["network"]))

    def add(self, body: Dict[str, Any]) -> Dict[str, Any]:
        self._need_cluster_store()
        name, network = body["name"], body["network"]
        # a network of the cluster: this node's, or one only other nodes have
        if network not in self.networks:
            if self.store.network(network) is None:
                known = set(self.networks) | {n["name"] for n in self.store.networks()}
                raise fail(
                    "network",
                    f"no network {network!r} in the cluster (it has "
                    f"{', '.join(sorted(known)) or 'none'})",
                )
            # a record outlives the network in every node's file: a host on
            # it would be forwarded to by no node, and keep its record from
            # being forgotten. A claim that lists no networks (a node of an
            # older version) may carry it.
            if not any(network in c.get("networks", (network,)) for c in self.store.node_claims()):
                raise fail(
                    "network",
                    f"network {network!r}: no node carries it (it is in no running node's "
                    f"configuration; its record is kept until 'dataplane net forget {network}')",
                )
        problem = self.vtep.remote_problem(body["vtep"])
        if problem:
            raise fail("vtep", problem)
        e = self.store.put_static_endpoint(
            name, network, body["mac"], str(body["ip"]), str(body["vtep"])
        )
        return _row(e)

    def delete(self, name: str) -> Dict[str, Any]:
        self._need_cluster_store()
        eps = self.store.endpoints(pod=name)
        if not eps or not all(is_static(e) for e in eps):
            raise NotFound(
                f"name: no static host {name!r}"
                + (" (it is a pod: dataplane pod del)" if eps or self.store.pod(name) else "")
            )
        self.store.delete_pod(name)
        return {"deleted": name, "endpoints": [_row(e) for e in eps]}


def host_routes(hosts: StaticHosts) -> Dict[tuple, Route]:
    """The control API's static-host routes."""
    return {
        ("GET", "/v1/hosts"): Route(lambda b, q: hosts.list()),
        ("POST", "/v1/hosts"): Route(
            lambda b, q: hosts.add(b),
            body={
                "name": check_pod_name,
                "network": lambda v, p: check_name(v, p, "network name"),
                "mac": check_mac,
                "ip": lambda v, p: str(parse_ipv4(v, p)),
                "vtep": lambda v, p: str(check_vtep_ip(v, p)),
            },
            required=("name", "network", "mac", "ip", "vtep"),
        ),
        ("DELETE", "/v1/hosts"): Route(
            lambda b, q: hosts.delete(q.get("name") or b.get("name")),
            body={"name": check_pod_name},
            query={"name": check_pod_name},
            required=("name",),
        ),
    }
