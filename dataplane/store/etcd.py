"""The cluster state store: the interface of
:class:`dataplane.store.base.StateStore`, kept in etcd (v3 API) so that every
node sees the same networks, pods, endpoints and address allocations. The
requests go through :class:`dataplane.store.etcdgw.EtcdGateway`; this module
knows what the keys mean.

The keys and the indexes kept with each record are described in
:mod:`dataplane.store.etcd_keys`.

Transactions
------------
Every write is one optimistic etcd transaction (``EtcdGateway.atomic``: the
reads at one revision, compared at commit, the change computed again from
fresh reads when another writer got there first). That makes each method
serialisable against every other writer, on any node:

- ``put_network`` compares ``P/vni/<vni>``: two nodes that give one VNI to two
  networks at once cannot both win; the loser sees the winner's network on
  its retry and gets the same ConfigError as with SQLite.
- ``allocate_ip``, ``allocate_mac`` and ``reserve_mac`` create the address's
  (the MAC's) key only if it is still absent, so that two nodes never get
  the same one; ``allocate_ip`` also compares the network's last handed-out
  address, so that the cluster goes on from one position (see
  :mod:`dataplane.store.etcd_alloc`).
- ``delete_pod`` removes the pod, its endpoints, addresses and MACs in one
  transaction.

etcd refuses a transaction of more than 128 operations (``--max-txn-ops``);
a pod with the core's maximum of 8 planes needs about 30.

Watching
--------
:meth:`EtcdStore.endpoints_snapshot` returns the endpoints and the revision
they were read at; :meth:`EtcdStore.watch_endpoints` delivers every change
after a revision to a callback, in a thread, in order; a watch that cannot
go on says so once with ``callback('error', exc)`` and ends: the caller
takes a new snapshot and watches again::

    eps, rev = store.endpoints_snapshot()
    w = store.watch_endpoints(rev + 1, callback)   # every change after the snapshot
    ...
    w.cancel()

Differences from the SQLite store: ``host_ifname`` is unique per node (the
SQLite file is one node's); ``allocate_mac`` reserves the MAC it returns
until ``delete_pod``; meta keys are shared by the cluster. Reads that list
(``endpoints``, ``pods``, ``allocations``) fetch the prefix and filter here.

Errors are those of the SQLite store (ConfigError, NotFound, AlreadyExists,
Busy, ResourceError) plus :class:`EtcdUnavailable` (also a ConnectionError)
when no endpoint answers, and :class:`EtcdCompacted` for a watch of history
etcd no longer has.
"""

import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

from ..checks import check_mac
from ..errors import AlreadyExists, Busy, ConfigError, DataplaneError, NotFound
from ..netutil import same_ip
from . import etcd_alloc as alloc
from .base import STORE_ID, StateStore
from .common import (
    check_network,
    check_state,
    ip_request,
    network_in_use,
    reserved_held,
    reserved_taken,
    subnet6_change_refused,
)
from .etcd_alloc import STATIC_NODE_PREFIX
from .etcd_keys import EtcdLayout, last_part
from .etcdgw import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TIMEOUT,
    EtcdCompacted,
    EtcdGateway,
    EtcdUnavailable,
    Txn,
    Watch,
)

__all__ = ["EtcdStore", "EtcdUnavailable", "EtcdCompacted", "STATIC_NODE_PREFIX"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/dataplane"
# a node's claim on its name lasts this long after its service last renewed
# it (a crash); renewed every third of it
NODE_TTL_S = 10
# one renewal waits at most this long for etcd (a hung etcd holds neither the
# next try nor a stopping service for the full request timeout)
RENEW_WAIT_S = 2.0
# a claim that could not be renewed is tried again this often, so that one
# lost while etcd did not answer is made again within about this long of it
# answering again (the name is free for anyone until then)
RENEW_RETRY_S = 1.0
# a stopping service waits at most this long to give its name back; if etcd
# does not answer, the claim lapses by itself NODE_TTL_S later
RELEASE_WAIT_S = 1.0


def _records(items) -> List[Dict[str, Any]]:
    """The values of ``items`` ((key, value) pairs read ``loose``) that are
    records: one another tool wrote that is not a JSON object is left out."""
    return [v for _, v in items if isinstance(v, dict)]


def _endpoint_order(ep) -> Tuple[str, str]:
    """(pod, plane) of an endpoint record, whatever it holds."""
    if not isinstance(ep, dict):
        return ("", "")
    return (str(ep.get("pod") or ""), str(ep.get("plane") or ""))


def _claimed(node: str, held: dict) -> str:
    """Why a service may not take the name ``node`` that the running
    service of record ``held`` has."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
    return (
        f"node: {node} is the name of a running node service (VTEP {held.get('vtep')}, "
        f"host {held.get('host')}, pid {held.get('pid')}, since {since}): two services "
        "under one name would each remove the other's pods; give this one its own "
        "'node:' name (it defaults to the host name, which cloned machines share). A "
        f"crashed service's claim lapses {NODE_TTL_S} s after it stopped"
    )


def _vtep_taken(vtep: str, held: dict) -> str:
    """Why a node may not claim a name with VTEP address ``vtep``, which the
    running service of record ``held`` (of another name) has."""
    return (
        f"vtep.address: {vtep} is the VTEP of node {held.get('node')}, running (host "
        f"{held.get('host')}, pid {held.get('pid')}): each node needs its own (the other "
        "nodes would send that node's pods' traffic to whichever answers). A crashed "
        f"service's claim lapses {NODE_TTL_S} s after it stopped"
    )


def _nodes_behind(endpoints, vtep: str):
    """The node of each endpoint record in ``endpoints`` ((key, record)
    pairs, read loose) that names VTEP ``vtep`` ("" where it names none;
    ``static:NAME`` for a static host's)."""
    for _, ep in endpoints:
        if isinstance(ep, dict) and same_ip(ep.get("vtep"), vtep):
            yield str(ep.get("node") or "")


def _claim_refusal(node: str, rec: dict, claims) -> Optional[str]:
    """Why the claim ``rec`` on name ``node`` is refused, given the live
    ``claims`` ((key, record) pairs under nodes/, read loose): the name held
    by another VTEP or host, or the VTEP held under another name; else None."""
    for _, cur in claims:
        if not isinstance(cur, dict):
            continue
        if cur.get("node") == node:
            if (cur.get("vtep"), cur.get("host")) != (rec["vtep"], rec["host"]):
                return _claimed(node, cur)
        elif same_ip(cur.get("vtep"), rec["vtep"]):
            return _vtep_taken(rec["vtep"], cur)
    return None


class EtcdStore(StateStore):
    """The cluster's state in etcd at ``endpoints`` (URLs like
    ``http://127.0.0.1:2379``; several members of one cluster may be given:
    when one does not answer the next is tried), under key ``prefix``.

    ``timeout`` bounds every request (seconds). ``node`` is this node's name,
    kept as ``self.node`` for the caller (the store does not fill it in).
    ``ca_cert``, ``cert_cert``, ``cert_key``: TLS files for https endpoints.
    One store may be shared by threads. Opening checks that etcd answers
    (EtcdUnavailable if not). ``client`` is the :class:`EtcdGateway` it
    sends its requests through. What each method promises is written once,
    in :class:`StateStore`."""

    kind = "etcd"
    can_watch = True

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        node: Optional[str] = None,
        ca_cert: Optional[str] = None,
        cert_cert: Optional[str] = None,
        cert_key: Optional[str] = None,
        connect: bool = True,
        user: Optional[str] = None,
        password: Optional[str] = None,
    ):
        self.client = EtcdGateway(
            endpoints,
            timeout=timeout,
            ca_cert=ca_cert,
            cert_cert=cert_cert,
            cert_key=cert_key,
            user=user,
            password=password,
        )
        self.layout = EtcdLayout(prefix)
        self.prefix = self.layout.prefix
        self._k = self.layout.key
        self.node = node
        self._claim = None  # (node, lease, record) while this service holds its name
        self._claim_stop = threading.Event()
        self._claim_thread = None
        if connect:
            self.client.ping(self._k("meta/"))

    def __repr__(self):
        return f"EtcdStore({self.client.urls!r}, prefix={self.prefix!r})"

    @property
    def urls(self) -> List[str]:
        return self.client.urls

    @property
    def timeout(self) -> float:
        return self.client.timeout

    def close(self):
        """Give up the node's name (claim_node), close the HTTP sessions and
        cancel the watches (no 'error' for them)."""
        self._release_node()
        self.client.close()

    # --------------------------------------------------------------- nodes
    def claim_node(self, node: str, vtep: str, host: str, networks: Sequence[str] = ()) -> None:
        """The name as a key under a lease of NODE_TTL_S, renewed by a thread
        until ``close``, with the ``networks`` the node carries. A claim of
        the same VTEP and host is this node's own from before a crash (its
        service's local lock is held by the caller): taken over at once."""
        lease = self.client.lease_grant(NODE_TTL_S)
        rec = {
            "node": node,
            "vtep": vtep,
            "host": host,
            "pid": os.getpid(),
            "started": time.time(),
            "networks": sorted(networks),
        }
        try:
            held = self._put_claim(node, lease, rec)
        except BaseException:
            self._revoke_quietly(lease)
            raise
        if held is not None:
            self._revoke_quietly(lease)
            raise ConfigError(held)
        self._claim = (node, lease, rec)
        self._claim_stop.clear()
        self._claim_thread = threading.Thread(target=self._renew, name="node-claim", daemon=True)
        self._claim_thread.start()

    def set_claim_networks(self, networks: Sequence[str]) -> None:
        """The claim's record rewritten under its lease with ``networks``
        (the renewals keep it so); one another service holds now is left
        alone (the renewal thread says so)."""
        if self._claim is None:
            return
        node, lease, rec = self._claim
        rec = {**rec, "networks": sorted(networks)}
        key = self._k("nodes", node)

        def body(tx):
            cur = tx.get(key)
            if cur is not None and (cur.get("vtep"), cur.get("host")) != (rec["vtep"], rec["host"]):
                return
            tx.put(key, rec, lease=lease)

        self.client.atomic(body)
        self._claim = (node, lease, rec)

    def claim_problem(self, node: str, vtep: str, host: str) -> Optional[str]:
        """Why :meth:`claim_node` would refuse the name now (a running
        service of another VTEP or host holds it, or the VTEP is another
        node's or a static host's), or None; read only."""
        claims = self.client.items(self._k("nodes", ""), loose=True)
        why = _claim_refusal(node, {"vtep": vtep, "host": host}, claims)
        if why is None:
            why = self._static_vtep(self.client.items(self._k("endpoints", ""), loose=True), vtep)
        return why

    @staticmethod
    def _static_vtep(endpoints, vtep: str) -> Optional[str]:
        """Why a node may not have VTEP address ``vtep``: a static host's
        endpoint in ``endpoints`` ((key, record) pairs) is behind it; else
        None."""
        for node in _nodes_behind(endpoints, vtep):
            if node.startswith(STATIC_NODE_PREFIX):
                return (
                    f"vtep.address: {vtep} is the VTEP of static host "
                    f"{node[len(STATIC_NODE_PREFIX) :]} ('dataplane host list'): each node "
                    "needs a VTEP of its own (the other nodes would send this node's pods' "
                    "traffic to that host); remove the host ('dataplane host del') or give "
                    "this node another address"
                )
        return None

    def _put_claim(self, node, lease, rec):
        """Write the claim unless another VTEP or host holds the name, or a
        running service of another name has its VTEP address: None, or why
        not. One transaction: the claims read are required unchanged (two
        services claiming one VTEP at once: the second's commit fails, and
        its retry finds the first's claim); lapsed claims are gone (their
        lease's keys went with it) and refuse nothing."""
        key = self._k("nodes", node)

        def body(tx):
            tx.get(key)  # the name's own key compared too (deleted meanwhile)
            why = _claim_refusal(node, rec, tx.items(self._k("nodes", ""), loose=True))
            if why is None:
                # the endpoints are read, not guarded (any pod's change
                # would fail the commit): a static host added once this
                # claim is in is refused by its own transaction (it guards
                # the claims), one added in the moment between this read and
                # the commit is not seen
                eps = tx.items(self._k("endpoints", ""), guard=False, loose=True)
                why = self._static_vtep(eps, rec["vtep"])
            if why is None:
                tx.put(key, rec, lease=lease)
            return why

        return self.client.atomic(body)

    def _revoke_quietly(self, lease):
        try:
            self.client.lease_revoke(lease)
        except DataplaneError:
            pass  # it lapses by itself

    def _renew(self):
        """Keep the claim alive; one lost while etcd did not answer for longer
        than its TTL is made again (unless another service took the name
        meanwhile: said, and tried again). Nothing ends the thread but
        ``close``: a renewal that fails in any way is logged (once while it
        fails the same way) and tried again RENEW_RETRY_S later."""
        said = None
        while not self._claim_stop.wait(NODE_TTL_S / 3 if said is None else RENEW_RETRY_S):
            node, lease, _ = self._claim
            trace = False
            try:
                with self.client.bounded(RENEW_WAIT_S):
                    why = self._renew_once(node, lease)
            except DataplaneError as e:
                why = f"node {node}: its claim on the name could not be renewed: {e}"
            except Exception as e:  # noqa: BLE001 - a bug here must not end the claim
                why = (
                    f"node {node}: its claim on the name could not be renewed "
                    f"({type(e).__name__}: {e}); tried again in {NODE_TTL_S / 3:.1f} s"
                )
                trace = True
            if why is None:
                said = None
            elif why != said:
                log.error("%s", why, exc_info=trace)
                said = why

    def _renew_once(self, node, lease) -> Optional[str]:
        """One renewal: None when the claim is held, else why not."""
        if self.client.lease_keepalive(lease):
            return None
        lease = self.client.lease_grant(NODE_TTL_S)
        rec = self._claim[2]  # as it is now: a reload may have changed its networks
        held = self._put_claim(node, lease, rec)
        if held is None:
            self._claim = (node, lease, rec)
            log.warning("node %s: its claim on the name had lapsed; made again", node)
            return None
        self._revoke_quietly(lease)
        return (
            f"node {node}: its claim lapsed while etcd did not answer, and is refused now: {held}"
        )

    def _release_node(self):
        if self._claim is None:
            return
        self._claim_stop.set()
        if self._claim_thread is not None:
            self._claim_thread.join()
            self._claim_thread = None
        _, lease, _ = self._claim
        self._claim = None
        with self.client.bounded(RELEASE_WAIT_S):
            self._revoke_quietly(lease)

    def node_claims(self) -> List[Dict[str, Any]]:
        return [v for _, v in self.client.items(self._k("nodes", ""))]

    def _not_running(self, node: str, held) -> None:
        """ConfigError if node ``node``'s service holds its claim (``held``)."""
        if held is not None:
            raise ConfigError(
                f"node {node} is running (VTEP {held.get('vtep')}, host {held.get('host')}, pid "
                f"{held.get('pid')}): stop its service first (a crashed one's claim lapses "
                f"{NODE_TTL_S} s after it stopped)"
            )

    def remove_node(self, node: str) -> Dict[str, int]:
        self._not_running(node, self.client.get(self._k("nodes", node)))
        pods = [p["name"] for p in self.pods(node=node)]
        atts = [a["name"] for a in self.attachments(node=node)]
        if not pods and not atts:  # a misspelt name, or one removed already
            raise NotFound(
                f"node {node}: the cluster's store has no pod or CNI attachment of a node of "
                "that name ('dataplane node list' shows the names it has)"
            )
        # each delete checks again, in its own transaction, that the node
        # is not running and that the record is still its: a service that
        # started meanwhile, or a pod of that name added elsewhere since
        # the list was read, is left alone
        for name in pods:
            self._delete_pod(name, stopped_node=node)
        for name in atts:
            self._delete_attachment(name, stopped_node=node)
        return {"pods": len(pods), "attachments": len(atts)}

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str) -> Optional[str]:
        """A cluster-wide setting (shared by every node)."""
        return self.client.get(self._k("meta", key))

    def set_meta(self, key: str, value: str):
        def body(tx):
            tx.put(self._k("meta", key), str(value))

        self.client.atomic(body)

    def identity(self) -> str:
        key = self._k("meta", STORE_ID)

        def body(tx):  # made once: a node that made it meanwhile wins
            v = tx.get(key)
            if not v:
                v = uuid.uuid4().hex
                tx.put(key, v)
            return v

        return self.client.atomic(body)

    # --------------------------------------------------------- attachments
    def put_attachment(self, name: str, record: Dict[str, Any], node: Optional[str] = None):
        try:
            rec = json.loads(json.dumps(record, sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"attachment {name}: record is not JSON data ({e})") from None

        def body(tx):
            key = self._k("attachments", name)
            if tx.get(key) is not None:
                raise AlreadyExists(f"attachment {name} exists already")
            tx.put(key, {**rec, "name": name, "node": node, "created": time.time()})

        self.client.atomic(body)

    def attachment(self, name: str) -> Optional[Dict[str, Any]]:
        return self.client.get(self._k("attachments", name))

    def attachments(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        out = [
            a
            for _, a in self.client.items(self._k("attachments", ""))
            if node is None or a.get("node") == node
        ]
        return sorted(out, key=lambda a: (a["created"], a["name"]))

    def delete_attachment(self, name: str) -> bool:
        return self._delete_attachment(name)

    def _delete_attachment(self, name: str, stopped_node: Optional[str] = None) -> bool:
        """delete_attachment; with ``stopped_node``: only while that node is
        not running and the attachment is still its (remove_node)."""

        def body(tx):
            if stopped_node is not None:
                self._not_running(stopped_node, tx.get(self._k("nodes", stopped_node)))
            key = self._k("attachments", name)
            rec = tx.get(key)
            if rec is None or (stopped_node is not None and rec.get("node") != stopped_node):
                return False
            tx.delete(key)
            return True

        return bool(self.client.atomic(body))

    # ------------------------------------------------------------ networks
    def put_network(
        self,
        name: str,
        vni: int,
        plane: str,
        subnet: str,
        gateway: Optional[str] = None,
        mtu: Optional[int] = None,
        check_only: bool = False,
        subnet6: Optional[str] = None,
    ):
        """Insert or update network ``name``. A VNI used by another network
        (anywhere in the cluster, checked atomically), a new subnet that
        leaves allocated addresses outside, a change that makes a pod's
        address the gateway (network, broadcast) address, or a definition
        (VNI, plane, subnets, gateway) other than the one other nodes use,
        is refused.
        ``check_only``: only the checks, nothing written."""
        net = check_network(name, vni, subnet)

        def body(tx):
            old = tx.get(self._k("networks", name))
            if old is not None and (
                old["vni"],
                old["plane"],
                old["subnet"],
                old.get("subnet6"),
                old.get("gateway"),
            ) != (vni, plane, str(net), subnet6, gateway):
                # every node must agree on a network: one whose pods live on
                # other nodes, or that another running node carries (its
                # claim says so, or does not say), is not redefined by this
                # node's config alone
                users = sorted(
                    {
                        ep.get("node") or "?"
                        for ep in _records(
                            tx.items(self._k("endpoints", ""), guard=False, loose=True)
                        )
                        if ep.get("network") == name and ep.get("node") != self.node
                    }
                    | {
                        c.get("node") or "?"
                        for c in _records(tx.items(self._k("nodes", ""), loose=True))
                        if c.get("node") != self.node and name in c.get("networks", (name,))
                    }
                )
                if users:
                    # (subnet6 said when either side is dual-stack)
                    dual = old.get("subnet6") or subnet6

                    def six(v):
                        return f", subnet6 {v or 'none'}" if dual else ""

                    # (the gateway said when the two differ in it: each
                    # node keeps its own gateway's address from its pods)
                    other_gw = old.get("gateway") != gateway

                    def gw(v):
                        return f", gateway {v or 'none'}" if other_gw else ""

                    raise ConfigError(
                        f"network {name}: the cluster has it as VNI {old['vni']}, plane "
                        f"{old['plane']}, subnet {old['subnet']}{six(old.get('subnet6'))}"
                        f"{gw(old.get('gateway'))}, used by {', '.join(users)}; this node's "
                        f"config says VNI {vni}, plane {plane}, subnet {net}{six(subnet6)}"
                        f"{gw(gateway)}: make every node's networks "
                        "agree (a network is redefined when no other node has an endpoint on "
                        "it or runs with it)"
                    )
            owner = tx.get(self._k("vni", vni))
            if owner is not None and owner["name"] != name:
                raise ConfigError(
                    f"network {name}: VNI {vni} is used by network {owner['name']} already (one no node "
                    f"carries any more is freed by 'dataplane net forget {owner['name']}')"
                )
            allocs = [(a["ip"], a["pod"]) for _, a in tx.items(self._k("alloc", name, ""))]
            outside = [ip for ip, _ in allocs if ipaddress.IPv4Address(ip) not in net]
            if outside:
                raise Busy(
                    f"network {name}: subnet {net} would leave allocated "
                    f"addresses outside it ({', '.join(sorted(outside)[:5])})"
                )
            taken, _ = reserved_held(net, gateway, allocs, old)
            if taken:
                raise reserved_taken(name, taken)
            refused = subnet6_change_refused(name, old, net, subnet6, allocs)
            if refused:
                raise refused
            if check_only:
                return
            tx.put(
                self._k("networks", name),
                {
                    "name": name,
                    "vni": vni,
                    "plane": plane,
                    "subnet": str(net),
                    "gateway": gateway,
                    "mtu": mtu,
                    "updated": time.time(),
                    "subnet6": subnet6,
                },
            )
            tx.put(self._k("vni", vni), {"name": name})
            if old is not None and old["vni"] != vni:
                prev = tx.get(self._k("vni", old["vni"]))
                if prev is not None and prev["name"] == name:
                    tx.delete(self._k("vni", old["vni"]))

        if check_only:
            body(Txn(self.client))  # its reads, never committed
        else:
            self.client.atomic(body)

    def network(self, name: str) -> Optional[Dict[str, Any]]:
        return self.client.get(self._k("networks", name))

    def networks(self) -> List[Dict[str, Any]]:
        return sorted(
            (v for _, v in self.client.items(self._k("networks", ""))), key=lambda n: n["name"]
        )

    def delete_network(self, name: str) -> bool:
        """Remove network ``name``; Busy while it has endpoints or addresses."""

        def body(tx):
            net = tx.get(self._k("networks", name))
            eps = [
                ep
                for ep in _records(tx.items(self._k("endpoints", ""), loose=True))
                if ep.get("network") == name
            ]
            allocs = [a["pod"] for _, a in tx.items(self._k("alloc", name, ""))]
            if eps or allocs:
                raise network_in_use(name, eps, allocs)
            if net is None:
                return False
            # a running node that carries it would keep using the VNI
            # while another network could be given it
            for _, c in tx.items(self._k("nodes", "")):
                if name in c.get("networks", (name,)):
                    raise Busy(
                        f"network {name}: node {c['node']} (VTEP {c.get('vtep')}) runs with it in "
                        "its configuration: take it out of that node's networks and reload it "
                        "first"
                    )
            tx.delete(self._k("networks", name))
            tx.delete(self._k("lastip", name))
            owner = tx.get(self._k("vni", net["vni"]))
            if owner is not None and owner["name"] == name:
                tx.delete(self._k("vni", net["vni"]))
            return True

        return self.client.atomic(body)

    # ---------------------------------------------------------------- pods
    def put_pod(
        self,
        name: str,
        netns: str,
        spec_dict: Dict[str, Any],
        state: str = "pending",
        node: Optional[str] = None,
        netns_id: Optional[str] = None,
    ):
        """Record pod ``name`` (intent: state 'pending') run by ``node``.
        AlreadyExists if a pod of that name is recorded (on any node)."""
        check_state(state)
        try:
            spec = json.loads(json.dumps(spec_dict, sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"pod {name}: spec is not JSON data ({e})") from None

        def body(tx):
            key = self._k("pods", name)
            old = tx.get(key)
            if old is not None:
                where = f" on node {old['node']}" if old.get("node") else ""
                raise AlreadyExists(f"pod {name} exists already{where}")
            # a static host is endpoints without a pod record: a pod of its
            # name would take its address and replace its endpoint
            for ep in _records(tx.items(self._k("endpoints", name, ""), loose=True)):
                if str(ep.get("node")).startswith(STATIC_NODE_PREFIX):
                    raise AlreadyExists(
                        f"pod {name}: a static host of that name exists (dataplane host list)"
                    )
            tx.put(
                key,
                {
                    "name": name,
                    "netns": netns,
                    "spec": spec,
                    "state": state,
                    "created": time.time(),
                    "node": node,
                    "netns_id": netns_id,
                },
            )

        self.client.atomic(body)

    def set_pod_state(self, name: str, state: str):
        check_state(state)

        def body(tx):
            key = self._k("pods", name)
            pod = tx.get(key)
            if pod is None:
                raise NotFound(f"pod {name} is not recorded")
            tx.put(key, dict(pod, state=state))

        self.client.atomic(body)

    def pod(self, name: str) -> Optional[Dict[str, Any]]:
        return self.client.get(self._k("pods", name))

    def pods(self, state: Optional[str] = None, node: Optional[str] = None) -> List[Dict[str, Any]]:
        if state is not None:
            check_state(state)
        out = [
            p
            for _, p in self.client.items(self._k("pods", ""))
            if (state is None or p["state"] == state) and (node is None or p.get("node") == node)
        ]
        return sorted(out, key=lambda p: (p["created"], p["name"]))

    def delete_pod(self, name: str) -> bool:
        """Remove the pod, its endpoints, its addresses and its MACs in one
        transaction. False if nothing was recorded under ``name``."""
        return self._delete_pod(name)

    def _delete_pod(self, name: str, stopped_node: Optional[str] = None) -> bool:
        """delete_pod; with ``stopped_node``: only while that node is not
        running and the pod is still its (remove_node)."""

        def body(tx):
            if stopped_node is not None:
                self._not_running(stopped_node, tx.get(self._k("nodes", stopped_node)))
            pod = tx.get(self._k("pods", name))
            if stopped_node is not None and (pod is None or pod.get("node") != stopped_node):
                return False
            eps = [v for _, v in tx.items(self._k("endpoints", name, ""))]
            allocs = tx.items(self._k("podalloc", name, ""))
            pmacs = tx.items(self._k("podmacs", name, ""))
            for ep in eps:
                self.layout.drop_hostif(tx, ep)
                self.layout.drop_mac(tx, ep["mac"], name, ep["plane"])
            for k, v in pmacs:
                self.layout.drop_mac(tx, v["mac"], name, last_part(k))
            for k, v in allocs:
                net = last_part(k)
                akey = self._k("alloc", net, v["ip"])
                owner = tx.get(akey)
                if owner is not None and owner["pod"] == name:
                    tx.delete(akey)
            tx.delete(self._k("pods", name))
            for what in ("endpoints", "podalloc", "podmacs"):
                tx.delete(self._k(what, name, ""), prefix=True)
            return (pod is not None) + len(eps) + len(allocs) > 0

        return self.client.atomic(body)

    # ----------------------------------------------------------- endpoints
    def add_endpoint(
        self,
        pod: str,
        plane: str,
        network: str,
        ifname: Optional[str],
        host_ifname: Optional[str],
        mac: str,
        ip: Optional[str],
        node: Optional[str] = None,
        vtep: Optional[str] = None,
        state: str = "pending",
    ):
        """Record (or update) the endpoint of ``pod`` on ``plane``. Local
        endpoints have a host_ifname (unique per node); remote ones a node
        and a VTEP."""
        check_state(state)
        rec = {
            "pod": pod,
            "plane": plane,
            "network": network,
            "ifname": ifname,
            "host_ifname": host_ifname,
            "mac": mac,
            "ip": ip,
            "node": node,
            "vtep": vtep,
            "state": state,
        }
        self.client.atomic(lambda tx: self.layout.write_endpoint(tx, rec))

    def set_endpoint_state(self, pod: str, plane: str, state: str):
        check_state(state)

        def body(tx):
            key = self._k("endpoints", pod, plane)
            ep = tx.get(key)
            if ep is None:
                raise NotFound(f"endpoint of pod {pod} on plane {plane} is not recorded")
            tx.put(key, dict(ep, state=state))

        self.client.atomic(body)

    def delete_endpoint(self, pod: str, plane: str) -> bool:
        def body(tx):
            key = self._k("endpoints", pod, plane)
            ep = tx.get(key)
            if ep is None:
                return False
            tx.delete(key)
            self.layout.drop_hostif(tx, ep)
            self.layout.drop_mac(tx, ep["mac"], pod, plane)
            pm = tx.get(self._k("podmacs", pod, plane))
            if pm is not None and pm["mac"] == ep["mac"]:
                tx.delete(self._k("podmacs", pod, plane))
            return True

        return self.client.atomic(body)

    def endpoints(
        self,
        pod: Optional[str] = None,
        network: Optional[str] = None,
        state: Optional[str] = None,
        node: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Endpoints (dicts with the columns), filtered by whatever is given."""
        prefix = self._k("endpoints", pod, "") if pod is not None else self._k("endpoints", "")
        want = {"network": network, "state": state, "node": node}
        # a record another tool wrote that is not an endpoint's is left out
        # here (the cluster view counts it as malformed: ClusterSync)
        out = [
            ep
            for ep in _records(self.client.items(prefix, loose=True))
            if isinstance(ep.get("pod"), str)
            and isinstance(ep.get("plane"), str)
            and all(v is None or ep.get(f) == v for f, v in want.items())
        ]
        return sorted(out, key=lambda e: (e["pod"], e["plane"]))

    def endpoints_snapshot(self) -> Tuple[List[Dict[str, Any]], int]:
        """Every endpoint of the cluster and the etcd revision they were read
        at: watch from ``revision + 1`` to get every change after them."""
        tx = Txn(self.client)
        # records as they are (one written by another tool may lack fields,
        # or not be JSON: then its text): the reader judges each
        eps = [
            self.layout.keyed_endpoint(k, ep)
            for k, ep in tx.items(self._k("endpoints", ""), guard=False, loose=True, raw_keys=True)
        ]
        return sorted(eps, key=_endpoint_order), tx.revision

    def watch_endpoints(
        self,
        start_revision: Optional[int],
        callback: Callable[[str, Any], None],
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> Watch:
        """Deliver every endpoint change from etcd revision ``start_revision``
        on (None: from now) to ``callback(kind, data)`` in a thread, in order:

        - ``('put', endpoint)``: an endpoint was added or changed (the dict of
          :meth:`endpoints`);
        - ``('delete', {'pod', 'plane', ...})``: an endpoint was removed; the
          dict has the removed endpoint's fields when etcd still had them;
        - ``('error', exception)``: the watch cannot go on (EtcdUnavailable:
          etcd stopped, unreachable or silent for ``heartbeat`` seconds plus
          the request timeout; EtcdCompacted; or what the callback raised). It
          comes once and the watch ends: take a new snapshot, watch again.

        The watch is established when this returns (EtcdUnavailable if etcd
        does not answer). ``heartbeat`` 0 turns the liveness check off."""
        return self.client.watch(
            self._k("endpoints", ""),
            start_revision,
            callback,
            self.layout.endpoint_event,
            heartbeat,
        )

    def put_static_endpoint(
        self, name: str, network: str, mac: str, ip: str, vtep: str
    ) -> Dict[str, Any]:
        """Describe to the cluster a host that is not a dataplane node (e.g. a
        Linux host whose VTEP is the kernel's vxlan device): its address
        ``ip`` with ``mac`` on ``network`` (recorded), behind VTEP ``vtep``.

        Stored as the endpoint of pod ``name`` on the network's plane, node
        ``static:<name>``, state 'ready'; its address is allocated to
        ``name`` (no pod gets it). Calling it again updates it (a new MAC,
        address or VTEP). A static host has one network per plane (use another
        name for a second network of the same plane). ``delete_pod(name)``
        removes it. Returns the endpoint."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"static endpoint: name {name!r} is not a non-empty string")
        mac = check_mac(mac, "mac")
        try:
            vtep_ip = ipaddress.IPv4Address(str(vtep))
        except ValueError:
            raise ConfigError(
                f"static endpoint {name}: vtep {vtep!r} is not an IPv4 address"
            ) from None
        if vtep_ip.is_multicast or vtep_ip.is_unspecified or vtep_ip.is_loopback:
            raise ConfigError(f"static endpoint {name}: {vtep_ip} cannot be a VTEP address")

        def body(tx):
            # a node's VTEP: the node has no entry for the host's MAC. Its
            # claim (running) is required unchanged, so a node that claims
            # the address meanwhile fails the commit and the retry finds it;
            # a stopped node's VTEP is in its pods' endpoint records
            why = self._node_vtep(tx, str(vtep_ip))
            if why:
                raise ConfigError(
                    f"static endpoint {name}: vtep {vtep_ip} is the VTEP of {why}: a static "
                    "host's VTEP must be its own (the node has no entry for the host's MAC)"
                )
            return alloc.record_static_host(tx, self.layout, name, network, mac, ip, str(vtep_ip))

        return self.client.atomic(body)

    def _node_vtep(self, tx, vtep: str) -> Optional[str]:
        """The node (and whether it runs) whose VTEP ``vtep`` is, as words
        ('node node1, running (host H, pid P)'), or None: a live claim's
        (read in ``tx``, guarded), else one of the pods' endpoint records of a
        node (not a static host) that names it."""
        for _, c in tx.items(self._k("nodes", ""), loose=True):
            if isinstance(c, dict) and same_ip(c.get("vtep"), vtep):
                return f"node {c.get('node')}, running (host {c.get('host')}, pid {c.get('pid')})"
        for node in _nodes_behind(
            tx.items(self._k("endpoints", ""), guard=False, loose=True), vtep
        ):
            if node and not node.startswith(STATIC_NODE_PREFIX):
                return f"node {node}, not running with it (its pods' records name it)"
        return None

    # ---------------------------------------------------------------- IPAM
    def allocate_ip(
        self,
        network: str,
        subnet_cidr: str,
        gateway: Optional[str],
        pod: str,
        fixed: Optional[str] = None,
        avoid: Collection[str] = (),
    ) -> str:
        """An address of ``subnet_cidr`` for ``pod`` on ``network``, recorded
        (the first free one after the last handed out on the network, in the
        whole cluster, or ``fixed``); the rules and errors of
        :meth:`StateStore.allocate_ip`. Safe when several nodes allocate at
        once (see :func:`dataplane.store.etcd_alloc.take_address`)."""
        subnet, reserved, want = ip_request(network, subnet_cidr, gateway, fixed, avoid)
        return self.client.atomic(
            lambda tx: alloc.take_address(tx, self.layout, network, subnet, reserved, want, pod)
        )

    def release_ips(self, pod: str) -> int:
        return self.client.atomic(lambda tx: alloc.give_back_addresses(tx, self.layout, pod))

    def allocations(self, network: Optional[str] = None) -> List[Dict[str, Any]]:
        prefix = self._k("alloc", network, "") if network is not None else self._k("alloc", "")
        return sorted(
            (v for _, v in self.client.items(prefix)), key=lambda a: (a["network"], a["ip"])
        )

    def allocate_mac(self, pod: str, plane: str) -> str:
        """A locally administered unicast MAC (02:xx:xx:xx:xx:xx) derived from
        (pod, plane), as the SQLite store derives it, reserved for the pair in
        the whole cluster: the same pair gets the same MAC; a MAC another
        endpoint has (or another pair reserved) is skipped for the next
        derivation. The reservation goes with ``delete_pod``."""
        return self.client.atomic(lambda tx: alloc.take_mac(tx, self.layout, pod, plane))

    def reserve_mac(self, pod: str, plane: str, mac: str) -> str:
        """``mac`` reserved for (pod, plane) in the whole cluster, atomically:
        ConfigError if another pair has it (see
        :func:`dataplane.store.etcd_alloc.reserve_mac`). The reservation goes
        with ``delete_pod``."""
        return self.client.atomic(lambda tx: alloc.reserve_mac(tx, self.layout, pod, plane, mac))
