"""The state store's interface: what the node service may ask of a store,
whichever keeps the state (one SQLite file, or etcd for a cluster).

Order of work for every change: the intent is written *before* it is
applied, so that a crash in the middle leaves a record of what was being
done::

    store.put_pod(name, netns, spec)                  # pod state 'pending'
    for each plane:
        ip  = store.allocate_ip(net, subnet, gw, name, fixed)
        mac = store.allocate_mac(name, plane)        # or reserve_mac(name, plane, asked)
        store.add_endpoint(name, plane, net, ifname, host_ifname, mac, ip)
                                                      # endpoint 'pending'
        ... create the interfaces, attach the port ...
        store.set_endpoint_state(name, plane, "ready")
    store.set_pod_state(name, "ready")

    store.set_pod_state(name, "deleting")             # pod del: intent first
    ... detach everything ...
    store.delete_pod(name)                            # endpoints + addresses too

After a restart, 'ready' rows are replayed (interfaces found again and
re-attached), 'pending' and 'deleting' rows are finished or rolled back.
Nothing is allocated twice: allocations survive until ``release_ips`` or
``delete_pod``.

Every write is one transaction, done before the call returns. Errors:
ConfigError (a bad value, a conflict with what is recorded), NotFound,
AlreadyExists, Busy (in use), ResourceError (nothing free left).

A store that sees the changes other nodes make says so with ``can_watch``;
only then do ``endpoints_snapshot`` and ``watch_endpoints`` work.
"""

import abc
import uuid
from typing import Any, Callable, Collection, Dict, List, Optional, Protocol, Sequence, Tuple

from ..errors import ConfigError
from .common import mac_taken

#: the meta key of the store's identity (StateStore.identity)
STORE_ID = "store_id"


class WatchHandle(Protocol):
    """What ``watch_endpoints`` returns."""

    #: the exception that ended the watch (None while it runs or after a cancel)
    error: Optional[BaseException]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the watch to end; True if it has."""

    def cancel(self) -> None:
        """Stop it: no callback after this returns, except one already running."""


class StateStore(abc.ABC):
    """The node's (or the cluster's) networks, pods, endpoints and address
    allocations. One store may be shared by threads."""

    #: which store this is: 'sqlite', 'etcd'
    kind: str = ""
    #: the node's name when opened by ``open_store`` (kept for the caller)
    node: Optional[str] = None
    #: whether ``endpoints_snapshot`` and ``watch_endpoints`` are available
    can_watch: bool = False

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (files, connections, watches)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --------------------------------------------------------------- nodes
    def claim_node(self, node: str, vtep: str, host: str, networks: Sequence[str] = ()) -> None:
        """Hold the name ``node`` for the calling service while it runs
        (until ``close``): ConfigError if a running service of another VTEP
        or host holds it - two services under one name would each take the
        other's pods for its own - or if a running service of another name
        has the VTEP address ``vtep`` (the other nodes would send its pods'
        traffic to whichever answers). The claim also says the ``networks`` the
        node carries (its configuration's), so that no other node forgets
        their records under it (:meth:`delete_network`). A store of one
        node (SQLite) has nothing to claim: its file's lock is the claim."""

    def set_claim_networks(self, networks: Sequence[str]) -> None:
        """The networks this node's claim says it carries, after a reload
        changed them (``claim_node``); nothing without a claim."""

    def keep_file(self) -> Optional[str]:
        """A store in a file of its own (SQLite) puts the file back where it
        was removed while open: what was done, or None; DataplaneError if
        it cannot. Nothing to do for the others."""
        return None

    def claim_problem(self, node: str, vtep: str, host: str) -> Optional[str]:
        """Why :meth:`claim_node` would refuse the name now, or None; read
        only (``dataplane check``)."""
        return None

    def node_claims(self) -> List[Dict[str, Any]]:
        """The names held by running services: dicts with node, vtep, host,
        pid, started, networks."""
        return []

    def remove_node(self, node: str) -> Dict[str, int]:
        """Forget node ``node`` for good: its pods (endpoints, addresses,
        MACs) and CNI attachments, so that the other nodes stop sending to
        it (etcd), or so that a renamed node's old name leaves its own store
        (SQLite). ConfigError while a service holds the name (etcd) or for
        the name of the service running on the store (SQLite); NotFound for
        a name no pod or attachment has. Counts of what was removed."""
        raise ConfigError(
            f"node {node}: a {self.kind} store keeps one node's state; removing a node is for a "
            "cluster store (etcd)"
        )

    # ---------------------------------------------------------------- meta
    @abc.abstractmethod
    def get_meta(self, key: str) -> Optional[str]:
        """A setting kept with the state (None if unset)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Keep setting ``key`` (as a string)."""

    def identity(self) -> str:
        """This store's own name: 32 random hex digits, made the first time
        any node asks (meta ``store_id``) and the same for every node after.
        It tells this store from another one, or from one made anew."""
        v = self.get_meta(STORE_ID)
        if not v:
            v = uuid.uuid4().hex
            self.set_meta(STORE_ID, v)
        return v

    # ------------------------------------------------------------ networks
    @abc.abstractmethod
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
    ) -> None:
        """Insert or update network ``name``. A VNI used by another network
        (ConfigError), a new subnet that leaves allocated addresses outside
        (Busy), or a new subnet or gateway that makes an allocated address
        the network's gateway, network or broadcast address (ConfigError,
        naming the pods), is refused; so is a changed ``subnet6`` (a
        dual-stack network's IPv6 subnet, kept in the record) while pods
        hold addresses on the network (Busy). ``check_only``: the same
        checks, nothing written (``dataplane check``)."""

    @abc.abstractmethod
    def network(self, name: str) -> Optional[Dict[str, Any]]:
        """Network ``name`` (see ``networks``) or None."""

    @abc.abstractmethod
    def networks(self) -> List[Dict[str, Any]]:
        """Every network: dicts with name, vni, plane, subnet, gateway, mtu."""

    @abc.abstractmethod
    def delete_network(self, name: str) -> bool:
        """Remove network ``name``; Busy while it has endpoints or addresses
        (naming whose), or (etcd) while a running node's claim says it
        carries the network. False if it was not recorded."""

    # ---------------------------------------------------------------- pods
    @abc.abstractmethod
    def put_pod(
        self,
        name: str,
        netns: str,
        spec_dict: Dict[str, Any],
        state: str = "pending",
        node: Optional[str] = None,
        netns_id: Optional[str] = None,
    ) -> None:
        """Record pod ``name`` (intent: state 'pending'), run by ``node`` (in a
        cluster; None on a single node), its namespace ``netns`` being the
        one of identity ``netns_id`` (dataplane.podlife.netns_identity; the
        record's ``netns_id``, None in records from before it was kept).
        AlreadyExists if a pod of that name is recorded."""

    @abc.abstractmethod
    def set_pod_state(self, name: str, state: str) -> None:
        """NotFound if the pod is not recorded."""

    @abc.abstractmethod
    def pod(self, name: str) -> Optional[Dict[str, Any]]:
        """{name, netns, spec (dict), state, created, node} or None."""

    @abc.abstractmethod
    def pods(self, state: Optional[str] = None, node: Optional[str] = None) -> List[Dict[str, Any]]:
        """Pods, oldest first, filtered by state and/or node when given."""

    @abc.abstractmethod
    def delete_pod(self, name: str) -> bool:
        """Remove the pod, its endpoints and its addresses in one transaction.
        False if nothing was recorded under ``name``."""

    # ----------------------------------------------------------- endpoints
    @abc.abstractmethod
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
    ) -> None:
        """Record (or update) the endpoint of ``pod`` on ``plane``. Local
        endpoints have a host_ifname (AlreadyExists if another endpoint has
        it); remote ones a node and a VTEP."""

    @abc.abstractmethod
    def set_endpoint_state(self, pod: str, plane: str, state: str) -> None:
        """NotFound if the endpoint is not recorded."""

    @abc.abstractmethod
    def delete_endpoint(self, pod: str, plane: str) -> bool:
        """False if it was not recorded."""

    @abc.abstractmethod
    def endpoints(
        self,
        pod: Optional[str] = None,
        network: Optional[str] = None,
        state: Optional[str] = None,
        node: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Endpoints (dicts with pod, plane, network, ifname, host_ifname, mac,
        ip, node, vtep, state, created), by pod and plane, filtered by
        whatever is given."""

    # ---------------------------------------------------------------- IPAM
    @abc.abstractmethod
    def allocate_ip(
        self,
        network: str,
        subnet_cidr: str,
        gateway: Optional[str],
        pod: str,
        fixed: Optional[str] = None,
        avoid: Collection[str] = (),
    ) -> str:
        """An address of ``subnet_cidr`` for ``pod`` on ``network``, recorded.
        ``avoid``: addresses not to hand out unless asked for by ``fixed``
        (pods' floating addresses).

        Never the network, broadcast or gateway address, never one already
        given. Without ``fixed``, the first free address after the last one
        handed out on the network (kept in the store, so it survives a
        restart; in a cluster, shared by the nodes), going round to the
        start of the subnet after its end: an address a deleted pod gave
        back is given again only once the rest of the subnet has been used,
        so peers are not left with the old pod's MAC for it (a new pod's MAC
        is derived from its name). With nothing handed out yet (or a
        position outside the subnet) the lowest free one. ``fixed`` asks for
        that address (ConfigError if it is outside the subnet, reserved or
        taken) and does not move the position. A pod has at most one
        address per network: asking again returns the one it has (so a
        retried or replayed pod add gets the same address). ResourceError
        when the subnet is full."""

    @abc.abstractmethod
    def release_ips(self, pod: str) -> int:
        """Give back every address of ``pod``; returns how many."""

    @abc.abstractmethod
    def allocations(self, network: Optional[str] = None) -> List[Dict[str, Any]]:
        """Address allocations (dicts with network, ip, pod, created)."""

    @abc.abstractmethod
    def allocate_mac(self, pod: str, plane: str) -> str:
        """A locally administered unicast MAC (02:xx:xx:xx:xx:xx) derived from
        (pod, plane): the same pair gets the same MAC. Should it equal the MAC
        of another recorded endpoint, the next derivation is taken."""

    def reserve_mac(self, pod: str, plane: str, mac: str) -> str:
        """Reserve ``mac`` (checked and normalised by the caller) for (pod,
        plane), as ``allocate_mac`` reserves a derived one: ConfigError if
        another endpoint has it (or, in a cluster, another pair reserved
        it). Returns ``mac``. The reservation goes with ``delete_pod``."""
        for e in self.endpoints():
            if e["mac"] == mac and (e["pod"], e["plane"]) != (pod, plane):
                raise mac_taken(plane, mac, e["pod"], e["plane"])
        return mac

    # --------------------------------------------------------- attachments
    # A CNI attachment's identity (container ID, interface name, network
    # configuration, Kubernetes pod), kept next to the pod that plumbs it
    # (see dataplane.attach). Implemented by both stores; a store of
    # another kind says so.
    def put_attachment(self, name: str, record: Dict[str, Any], node: Optional[str] = None):
        """Record attachment ``name`` (JSON data ``record``) made by ``node``.
        AlreadyExists if one of that name is recorded."""
        raise NotImplementedError(f"the {self.kind} store keeps no CNI attachments")

    def attachment(self, name: str) -> Optional[Dict[str, Any]]:
        """{name, node, created, **record} or None."""
        raise NotImplementedError(f"the {self.kind} store keeps no CNI attachments")

    def attachments(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every attachment (of ``node``, when given), oldest first."""
        raise NotImplementedError(f"the {self.kind} store keeps no CNI attachments")

    def delete_attachment(self, name: str) -> bool:
        """False if it was not recorded."""
        raise NotImplementedError(f"the {self.kind} store keeps no CNI attachments")

    # ------------------------------------------------------------ watching
    def endpoints_snapshot(self) -> Tuple[List[Dict[str, Any]], int]:
        """Every endpoint and the revision they were read at: watch from
        ``revision + 1`` to get every change after them. Only when
        ``can_watch``; NotImplementedError otherwise."""
        raise NotImplementedError(f"the {self.kind} store cannot watch (can_watch is False)")

    def watch_endpoints(
        self, start_revision: Optional[int], callback: Callable[[str, Any], None]
    ) -> WatchHandle:
        """Deliver every endpoint change from ``start_revision`` on (None:
        from now) to ``callback(kind, data)`` in a thread, in order:
        ``('put', endpoint)``, ``('delete', {'pod', 'plane', ...})``, and
        once, when the watch cannot go on, ``('error', exception)`` (take a
        new snapshot and watch again). Only when ``can_watch``;
        NotImplementedError otherwise."""
        raise NotImplementedError(f"the {self.kind} store cannot watch (can_watch is False)")
