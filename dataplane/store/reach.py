"""How the node's views reach the state store without waiting on it.

A cluster store (etcd) may be stopped or hung while the node forwards on.
The views of the node service (status, fdb, pod list, ...) then answer from
the core and the service's own memory, and say that the store does not
answer; those that only the store can answer fail at once, naming what is
missing. Neither waits the store's full request timeout:

    err = probe(store)                  # None: it answers (within PROBE_WAIT_S)
    with bounded(store):                # reads wait at most VIEW_WAIT_S
        ...
    rows = read(store, lambda: store.attachments(node=n),
                "the CNI attachments are recorded in it")

A SQLite store is a local file: it always answers, and nothing is bounded.
"""

from contextlib import contextmanager, nullcontext
from typing import Callable, Optional, TypeVar

from ..errors import Refused, Unavailable

#: how long a view waits for the store to answer a probe (seconds)
PROBE_WAIT_S = 1.0
#: how long one read of a view may wait for the store (seconds)
VIEW_WAIT_S = 2.0

T = TypeVar("T")


#: what a store's request raises when the store cannot serve the node: it
#: does not answer (EtcdUnavailable, a ConnectionError) or it refuses the
#: node (EtcdRefused: access control)
NOT_SERVED = (ConnectionError, Refused)


class StoreDown(Unavailable):
    """The state store does not answer, or refuses this node, and the view
    needs it."""


def where(store) -> str:
    """The store as an operator names it: 'etcd http://a:2379', 'sqlite /path'."""
    urls = getattr(store, "urls", None)
    if urls:
        return f"{store.kind} {', '.join(urls)}"
    path = getattr(store, "path", None)
    return f"{store.kind} {path}" if path else str(store.kind)


def bounded(store, seconds: float = VIEW_WAIT_S):
    """A block in which this thread's requests to ``store`` wait at most
    ``seconds`` (a store without a network client: no bound)."""
    gw = getattr(store, "client", None)
    if gw is None or not hasattr(gw, "bounded"):
        return nullcontext()
    return gw.bounded(seconds)


def probe(store, seconds: float = PROBE_WAIT_S) -> Optional[str]:
    """None if ``store`` answers within ``seconds``, else why not (the
    store's message: its endpoint and what failed)."""
    gw = getattr(store, "client", None)
    if gw is None or not hasattr(gw, "ping"):
        return None
    try:
        with gw.bounded(seconds):
            gw.ping(store.prefix)
        return None
    except NOT_SERVED as e:
        return str(e)


def last_answer(store) -> Optional[float]:
    """When ``store`` last answered (time.time()), None if unknown."""
    return getattr(getattr(store, "client", None), "last_answer", None)


#: the words of a refusal: in a request's error (etcdgw), and in
#: down_message's sentence made of it
REFUSES_REQUEST = "refuses the request"
REFUSES_NODE = "refuses this node's requests"


def refuses(error: str) -> bool:
    """Is ``error`` (a probe's or a request's message, or a view's
    down_message) the store refusing this node, rather than not answering?"""
    return REFUSES_REQUEST in error or REFUSES_NODE in error


def why(error: str) -> str:
    """What failed, from the store's message ('etcd URL does not answer
    (connection refused: ...)' -> 'connection refused: ...'; 'etcd URL
    refuses the request (kv/range: etcdserver: permission denied)' ->
    'kv/range: etcdserver: permission denied')."""
    head, sep, rest = error.partition(REFUSES_REQUEST if refuses(error) else "does not answer")
    rest = rest.strip(" :") if sep else error
    if rest.startswith("(") and rest.endswith(")") and rest.count("(") == 1:
        rest = rest[1:-1]
    return rest or error


def down_message(store, error: str, consequence: str) -> str:
    """'the store (etcd URL) does not answer (WHY): CONSEQUENCE', or 'the
    store (etcd URL) refuses this node's requests (WHY): CONSEQUENCE'."""
    state = REFUSES_NODE if refuses(error) else "does not answer"
    return f"the store ({where(store)}) {state} ({why(error)}): {consequence}"


@contextmanager
def required(store, consequence: str):
    """A block whose store requests wait as long as the store's own
    timeout; if the store does not answer, :class:`StoreDown` saying
    ``consequence`` (what was not done); the same if it refuses this node."""
    try:
        yield
    except NOT_SERVED as e:
        raise StoreDown(down_message(store, str(e), consequence)) from None


@contextmanager
def needed(store, consequence: str, seconds: float = VIEW_WAIT_S):
    """A block whose store reads wait at most ``seconds``; if the store does
    not answer, :class:`StoreDown` saying ``consequence`` (what the view
    cannot show, and what goes on regardless)."""
    with required(store, consequence), bounded(store, seconds):
        yield


def read(store, fn: Callable[[], T], consequence: str, seconds: float = VIEW_WAIT_S) -> T:
    """``fn()``, whose store reads wait at most ``seconds``; StoreDown
    saying ``consequence`` if the store does not answer."""
    with needed(store, consequence, seconds):
        return fn()
