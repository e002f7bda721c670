"""Open the state store a node's configuration names.

    store = open_store(cfg.store, cfg.node)

``kind: sqlite`` (the default, one node) gives :class:`dataplane.store.Store`
on ``path``; ``kind: etcd`` (a cluster) gives
:class:`dataplane.store_etcd.EtcdStore` on ``endpoints`` under ``prefix``
(etcd3gw is imported only then). Both have the same methods; the etcd one
adds ``endpoints_snapshot``, ``watch_endpoints`` and ``put_static_endpoint``.
Either way ``store.node`` is the node's name and ``store.kind`` the kind.
"""
from typing import Optional

from .config import StoreConfig
from .errors import ConfigError


def open_store(store_config: StoreConfig, node: Optional[str] = None, **kwargs):
    """The store of ``store_config`` for node ``node``. Extra keyword
    arguments go to the store's constructor (e.g. ``timeout``)."""
    kind = store_config.kind
    if kind == "sqlite":
        from .store import Store
        store = Store(store_config.path, **kwargs)
    elif kind == "etcd":
        from .store_etcd import EtcdStore
        store = EtcdStore(list(store_config.endpoints), prefix=store_config.prefix,
                          node=node, **kwargs)
    else:
        raise ConfigError(f"store.kind: {kind!r} is not supported (supported: sqlite, etcd)")
    store.node = node
    return store
