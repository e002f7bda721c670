"""The etcd store's keys, and the index keys written and removed with an
endpoint record (within the record's transaction).

Key layout (``P`` is the prefix, default ``/dataplane``; names are
percent-quoted, so that a '/' in a name cannot make two keys meet)::

    P/meta/<key>                      "value"                (cluster-wide)
    P/nodes/<node>                    {node, vtep, host, pid, started}   under a lease:
                                                             held while its service runs
    P/networks/<name>                 {name, vni, plane, subnet, gateway, mtu, updated}
    P/vni/<vni>                       {name}                 one network per VNI
    P/pods/<name>                     {name, netns, spec, state, created, node}
    P/endpoints/<pod>/<plane>         {pod, plane, network, ifname, host_ifname,
                                       mac, ip, node, vtep, state, created}
    P/hostif/<node>/<host_ifname>     {pod, plane}           unique per node
    P/attachments/<name>              {name, node, created, container_id, ifname, ...}
    P/alloc/<network>/<ip>            {network, ip, pod, created}
    P/podalloc/<pod>/<network>        {ip}                   one address per pod and network
    P/lastip/<network>                {ip}                   the last address handed out
                                                             (not a fixed one): the next
                                                             is looked for after it
    P/macs/<mac>                      {pod, plane}           who has the MAC, cluster-wide
    P/podmacs/<pod>/<plane>           {mac}                  the MAC reserved for the pair

An endpoint's ``hostif``, ``macs`` and ``podmacs`` keys are written with it
and removed with it (only while they still name its pod and plane).
"""

import time
import urllib.parse
from typing import Any, Dict, Tuple

from ..errors import AlreadyExists, ConfigError
from .common import host_ifname_taken
from .etcdgw import Txn, _json, key_text, unb64

_EP_FIELDS = (
    "pod",
    "plane",
    "network",
    "ifname",
    "host_ifname",
    "mac",
    "ip",
    "node",
    "vtep",
    "state",
    "created",
)


def quote(name) -> str:
    """One key component: percent-quoted, so that it holds no '/'."""
    return urllib.parse.quote(str(name), safe=":@")


def last_part(key: str) -> str:
    """The last component of ``key``, unquoted."""
    return urllib.parse.unquote(key.rsplit("/", 1)[1])


def check_prefix(prefix: str) -> str:
    if (
        not isinstance(prefix, str)
        or not prefix.startswith("/")
        or not prefix.strip("/")
        or any(c.isspace() or c == "\0" for c in prefix)
    ):
        raise ConfigError(f"etcd prefix {prefix!r} is not a key prefix like /dataplane")
    return prefix.rstrip("/")


class EtcdLayout:
    """The keys under ``prefix`` (checked, without its trailing '/')."""

    def __init__(self, prefix: str):
        self.prefix = check_prefix(prefix)

    def key(self, *parts) -> str:
        """The key of ``parts`` under the prefix: the last one may be '' to
        make a prefix ending in '/'."""
        head, *rest = parts
        return "/".join([self.prefix, head] + [quote(p) for p in rest])

    def hostif(self, node, host_ifname) -> str:
        """The key that makes ``host_ifname`` unique on ``node``."""
        return self.key("hostif", node if node else "@", host_ifname)

    def drop_hostif(self, tx: Txn, ep):
        """Remove the host interface key of endpoint ``ep`` if it is still its."""
        if ep.get("host_ifname") is None:
            return
        key = self.hostif(ep.get("node"), ep["host_ifname"])
        owner = tx.get(key)
        if owner is not None and (owner["pod"], owner["plane"]) == (ep["pod"], ep["plane"]):
            tx.delete(key)

    def drop_mac(self, tx: Txn, mac, pod, plane):
        """Remove the key of ``mac`` if it still names (pod, plane)."""
        key = self.key("macs", mac)
        owner = tx.get(key)
        if owner is not None and (owner["pod"], owner["plane"]) == (pod, plane):
            tx.delete(key)

    def write_endpoint(self, tx: Txn, rec, strict_mac=False):
        """Put endpoint ``rec`` (every field but created) with its indexes."""
        pod, plane = rec["pod"], rec["plane"]
        key = self.key("endpoints", pod, plane)
        old = tx.get(key)
        hkey = None
        if rec["host_ifname"] is not None:
            hkey = self.hostif(rec["node"], rec["host_ifname"])
            other = tx.get(hkey)
            if other is not None and (other["pod"], other["plane"]) != (pod, plane):
                raise host_ifname_taken(rec["host_ifname"], other["pod"], other["plane"])
        mkey = self.key("macs", rec["mac"])
        mac_owner = tx.get(mkey)
        if (
            strict_mac
            and mac_owner is not None
            and (mac_owner["pod"], mac_owner["plane"]) != (pod, plane)
        ):
            raise AlreadyExists(
                f"MAC {rec['mac']} belongs to pod {mac_owner['pod']} "
                f"plane {mac_owner['plane']} already"
            )
        created = time.time()
        if old is not None:
            created = old.get("created", created)
            if (
                old.get("host_ifname") is not None
                and self.hostif(old.get("node"), old["host_ifname"]) != hkey
            ):
                self.drop_hostif(tx, old)
            if old["mac"] != rec["mac"]:
                self.drop_mac(tx, old["mac"], pod, plane)
        reserved = tx.get(self.key("podmacs", pod, plane))
        if (
            reserved is not None
            and reserved["mac"] != rec["mac"]
            and (old is None or reserved["mac"] != old["mac"])
        ):
            self.drop_mac(tx, reserved["mac"], pod, plane)
        ep = {f: rec.get(f) for f in _EP_FIELDS}
        ep["created"] = created
        tx.put(key, ep)
        if hkey is not None:
            tx.put(hkey, {"pod": pod, "plane": plane})
        tx.put(mkey, {"pod": pod, "plane": plane})
        tx.put(self.key("podmacs", pod, plane), {"mac": rec["mac"]})
        return ep

    def endpoint_name(self, key: str) -> Tuple[str, str]:
        """(pod, plane) of endpoint key ``key``."""
        pod, _, plane = key[len(self.key("endpoints", "")) :].partition("/")
        return urllib.parse.unquote(pod), urllib.parse.unquote(plane)

    def keyed_endpoint(self, raw_key: bytes, value) -> Dict[str, Any]:
        """Endpoint record ``value`` read at the key of bytes ``raw_key``,
        named by its key (the pod and plane a record lacks are its key's): a
        record of another tool that is not an object, or names another pod
        or plane than its key, comes as {pod, plane, "unreadable": value} -
        still the key's, so that the reader drops what the key held before
        and refuses it; one at a key that is not UTF-8 alike, whatever it
        holds, named by the key's :func:`key_text`, which it has as
        "bad_key"."""
        try:
            key = raw_key.decode()
        except UnicodeDecodeError:
            key = key_text(raw_key)
            pod, plane = self.endpoint_name(key)
            return {"pod": pod, "plane": plane, "unreadable": value, "bad_key": key}
        pod, plane = self.endpoint_name(key)
        if (
            isinstance(value, dict)
            and value.get("pod", pod) == pod
            and value.get("plane", plane) == plane
        ):
            return {**value, "pod": pod, "plane": plane}
        return {"pod": pod, "plane": plane, "unreadable": value}

    def endpoint_event(self, ev) -> Tuple[str, Dict[str, Any]]:
        """A watch event of an endpoint key as ('put', endpoint: see
        :meth:`keyed_endpoint`) or ('delete', {pod, plane, and what the
        endpoint had})."""
        kv = ev["kv"]
        raw = unb64(kv["key"])
        if ev.get("type", "PUT") == "PUT":  # (a value that is not JSON: its text)
            return "put", self.keyed_endpoint(raw, _json(unb64(kv.get("value")), loose=True))
        pod, plane = self.endpoint_name(key_text(raw))  # as the put named it
        data = {}
        if ev.get("prev_kv") and ev["prev_kv"].get("value"):
            data = _json(unb64(ev["prev_kv"]["value"]), loose=True)
            if not isinstance(data, dict):
                data = {}
        data.update(pod=pod, plane=plane)
        return "delete", data
