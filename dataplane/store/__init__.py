"""The state store: what a node (or a cluster) knows and must find again
after a restart — networks, pods, their endpoints and address allocations.

    store = open_store(cfg.store, cfg.node)

``kind: sqlite`` (the default, one node) gives
:class:`~dataplane.store.sqlite.SqliteStore` on ``path``; ``kind: etcd`` (a
cluster) gives :class:`~dataplane.store.etcd.EtcdStore` on ``endpoints``
under ``prefix`` (etcd3gw is imported only then). Both implement
:class:`~dataplane.store.base.StateStore`; only the etcd one can watch
(``store.can_watch``) and adds ``put_static_endpoint``. Either way
``store.node`` is the node's name and ``store.kind`` the kind.

    base.py       the interface (StateStore)
    common.py     the checks and derivations every store shares
    sqlite.py     one node's state in a SQLite file
    etcd.py       the cluster's state in etcd
    etcd_keys.py  its key layout and the index keys kept with an endpoint
    etcdgw.py     a generic client of etcd's v3 JSON gateway (txn, watch)
"""

from typing import Optional

from ..config import StoreConfig
from ..errors import ConfigError
from .base import StateStore, WatchHandle
from .sqlite import SqliteStore

__all__ = ["StateStore", "WatchHandle", "SqliteStore", "open_store"]


def open_store(store_config: StoreConfig, node: Optional[str] = None, **kwargs) -> StateStore:
    """The store of ``store_config`` for node ``node``. Extra keyword
    arguments go to the store's constructor (e.g. ``timeout``)."""
    kind = store_config.kind
    if kind == "sqlite":
        store = SqliteStore(store_config.path, **kwargs)
    elif kind == "etcd":
        from .etcd import EtcdStore

        store = EtcdStore(
            list(store_config.endpoints),
            prefix=store_config.prefix,
            node=node,
            ca_cert=store_config.tls_ca,
            cert_cert=store_config.tls_cert,
            cert_key=store_config.tls_key,
            user=store_config.user,
            password=store_config.password(),
            **kwargs,
        )
    else:
        raise ConfigError(f"store.kind: {kind!r} is not supported (supported: sqlite, etcd)")
    store.node = node
    return store
