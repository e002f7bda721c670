"""Pods on this node: attach, detach, and replay after a restart.

Order of work for every change: validate, write the intent to the store,
apply it (netlink, core tables), mark it done. A pod add that fails half-way
is undone (interfaces, ports, records). On start the store is replayed: pod
interfaces that still exist are re-attached with the MACs and addresses they
had; nothing is allocated twice.
"""

import os
import socket
from typing import Callable, Dict, List, Optional

from .checks import AF_XDP_FILL_MBUFS
from .errors import ConfigError, DataplaneError, NotFound, ResourceError
from .logs import event, log

#: mbufs of the core's pool that af_xdp ports leave for forwarding (bursts,
#: tx buffers, plane queues)
AF_XDP_SPARE_MBUFS = 4095


def add_kernel_port(
    engine, ifname: str, driver: str, role: str = "pod", network: Optional[int] = None
) -> int:
    """Kernel interface ``ifname`` as a port of ``engine`` through ``driver``
    (``config.KERNEL_DRIVERS``): the core's native AF_PACKET driver, or
    DPDK's ``net_af_xdp`` on the interface's queue 0 (it loads an XDP
    program that redirects every frame to its socket, removed with the
    port). The port's index; the engine's error, naming the interface, if
    it cannot be made - nothing is left attached then."""
    if driver == "afpacket":
        return engine.add_afpacket_port(ifname, role=role, network=network)
    if driver == "af_xdp":
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            raise NotFound(f"{ifname}: no such interface (kernel_driver af_xdp)") from None
        n = engine.config.n_mbufs
        have = sum(1 for p in engine.ports() if p.name.startswith("net_af_xdp"))
        if (have + 1) * AF_XDP_FILL_MBUFS > n - AF_XDP_SPARE_MBUFS:
            raise ResourceError(
                f"{ifname}: kernel_driver af_xdp: the core's pool of {n} mbufs has room for "
                f"{have} af_xdp ports (each keeps {AF_XDP_FILL_MBUFS} in its fill ring, "
                f"{AF_XDP_SPARE_MBUFS} stay for forwarding): raise memory_mb, or use "
                "kernel_driver afpacket"
            )
        # named for the interface: the port's name in status and metrics
        dev = f"net_af_xdp_{ifname},iface={ifname},start_queue=0,queue_count=1"
        try:
            return engine.add_port(dev, role=role, network=network)
        except DataplaneError as e:
            raise type(e)(
                f"{ifname}: kernel_driver af_xdp: {e}; the DPDK log says why (an XDP "
                "program it cannot load, a queue the interface does not have)",
                e.errno,
            ) from e
    raise ConfigError(f"kernel_driver: {driver!r} is not a kernel-port driver")


class PodLife:
    """The pods of node ``config.node``: their records in ``store``, their
    interfaces (netlink) and their ports in ``engine``. Changes to the
    engine's tables are made under ``lock``; ``networks`` maps a network's
    name to the core's index. ``on_removed()`` is called (under ``lock``)
    after a pod was deleted: a remote endpoint may have its MAC again."""

    def __init__(
        self,
        config,
        store,
        engine,
        lock,
        networks: Dict[str, int],
        on_removed: Callable[[], None] = lambda: None,
    ):
        self.config = config
        self.store = store
        self.engine = engine
        self.lock = lock
        self.networks = networks
        self.on_removed = on_removed
        self.ports: Dict[str, int] = {}  # host_ifname -> core port

    # ------------------------------------------------------------- replay
    def replay(self):
        """Re-attach the pods the store knows whose interfaces still exist;
        remove the others (half-made, or their namespace died)."""
        from .podnet import find_plane

        for pod in self.store.pods(node=self.config.node):
            eps = self.store.endpoints(pod=pod["name"])
            missing = [e for e in eps if find_plane(e["host_ifname"]) is None]
            if missing or pod["state"] != "ready":
                event(
                    "replay: removing incomplete pod",
                    pod=pod["name"],
                    state=pod["state"],
                    missing=[e["plane"] for e in missing],
                )
                self._remove(pod["name"], eps)
                continue
            for e in eps:
                self._attach_port(e)
            event("replay: pod re-attached", pod=pod["name"], planes=[e["plane"] for e in eps])

    def _attach_port(self, e) -> int:
        net = self.networks[e["network"]]
        port = add_kernel_port(
            self.engine, e["host_ifname"], self.config.kernel_driver, network=net
        )
        self.ports[e["host_ifname"]] = port
        self.engine.fdb_add_local(net, e["mac"], port)
        return port

    # -------------------------------------------------------- transactions
    def add_pod(self, name: str, netns: str, spec) -> dict:
        """Attach pod ``name`` (its network namespace ``netns``) as ``spec``
        says; the pod's info (see ``pod_info``)."""
        from .podnet import announce, attach_plane
        from .podspec import host_ifname, parse_pod_spec

        if not isinstance(name, str) or not name or len(name) > 200 or "/" in name:
            raise ConfigError(f"name: {name!r} is not a pod name")
        if not isinstance(netns, str) or not netns.startswith("/"):
            raise ConfigError(
                f"netns: {netns!r} must be a path such as /var/run/netns/NAME or /proc/PID/ns/net"
            )
        if not os.path.exists(netns):
            raise NotFound(f"netns: {netns} does not exist")
        ps = parse_pod_spec(spec, self.config)
        node = self.config.node
        with self.lock:
            self.store.put_pod(name, netns, ps.to_dict(), node=node)  # intent first
            try:
                for p in ps.planes:
                    n = self.config.network(p.network)
                    ip = self.store.allocate_ip(n.name, n.subnet, n.gateway, name, fixed=p.ip)
                    mac = p.mac or self.store.allocate_mac(name, p.plane)
                    hif = host_ifname(name, p.plane)
                    self.store.add_endpoint(
                        name,
                        p.plane,
                        n.name,
                        p.ifname,
                        hif,
                        mac,
                        ip,
                        node=node,
                        vtep=self.config.vtep.ip,
                    )
                    attach_plane(
                        name,
                        netns,
                        p.ifname,
                        hif,
                        mac,
                        f"{ip}/{n.prefixlen}",
                        n.gateway,
                        n.mtu,
                        p.default_route,
                        plane=p.plane,
                        offloads=self.config.kernel_driver != "af_xdp",
                    )
                    self._attach_port({"host_ifname": hif, "network": n.name, "mac": mac})
                    announce(netns, p.ifname, mac, ip)
                    self.store.set_endpoint_state(name, p.plane, "ready")
                self.store.set_pod_state(name, "ready")
            except BaseException:
                self._remove(name, self.store.endpoints(pod=name))
                raise
        event("pod added", pod=name, netns=netns, planes=[p.plane for p in ps.planes])
        return self.pod_info(name)

    def _remove(self, name, eps):
        """Detach what is left of pod ``name`` (ports, interfaces) and forget it."""
        from .podnet import detach_plane

        for e in eps:
            hif = e["host_ifname"]
            port = self.ports.pop(hif, None)
            if port is not None:
                try:
                    self.engine.del_port(port)
                except DataplaneError as err:
                    log.warning("removing port %s: %s", hif, err)
            try:
                detach_plane(hif)
            except DataplaneError as err:
                log.warning("removing %s: %s", hif, err)
        self.store.delete_pod(name)

    def del_pod(self, name: str) -> dict:
        """Detach pod ``name``; NotFound unless this node runs it."""
        with self.lock:
            pod = self.store.pod(name)
            if not pod or pod.get("node") not in (None, self.config.node):
                raise NotFound(f"pod {name} is not attached to this node")
            self._remove(name, self.store.endpoints(pod=name))
            self.on_removed()
        event("pod deleted", pod=name)
        return {"deleted": name}

    # -------------------------------------------------------------- reads
    def pod_info(self, name: str) -> dict:
        pod = self.store.pod(name)
        if not pod:
            raise NotFound(f"pod {name} is not attached")
        eps = self.store.endpoints(pod=name)
        return {
            "name": name,
            "netns": pod["netns"],
            "state": pod["state"],
            "planes": [
                {k: e[k] for k in ("plane", "network", "ifname", "host_ifname", "mac", "ip")}
                | {"port": self.ports.get(e["host_ifname"])}
                for e in eps
            ],
        }

    def list_pods(self) -> List[dict]:
        return [self.pod_info(p["name"]) for p in self.store.pods(node=self.config.node)]
