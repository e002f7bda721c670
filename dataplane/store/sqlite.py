"""The embedded state store: one SQLite file (WAL journal), one node's state.

Every write is one transaction, committed before the call returns
(``synchronous=FULL``). One store may be shared by threads (a lock serialises
its calls); several processes may open the same file (``BEGIN IMMEDIATE``
serialises writers). The interface and the order of work are those of
:class:`dataplane.store.base.StateStore`.
"""

import contextlib
import ipaddress
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from typing import Any, Collection, Dict, List, Optional

from ..checks import VNI_MAX
from ..errors import AlreadyExists, Busy, ConfigError, DataplaneError, NotFound, ResourceError
from .base import STORE_ID, StateStore
from .common import (
    STATES,
    check_network,
    check_state,
    derive_mac,
    host_ifname_taken,
    ip_request,
    mac_taken,
    network_in_use,
    next_free,
    no_free_address,
    reserved_held,
    reserved_taken,
    subnet6_change_refused,
)

SCHEMA_VERSION = 1
# columns of pods added after the first files were written: NULL in those
_LATER_POD_COLUMNS = ("node", "netns_id")
_LATER_NETWORK_COLUMNS = ("subnet6",)
_STATES_SQL = ", ".join(f"'{s}'" for s in STATES)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS networks (
    name    TEXT PRIMARY KEY,
    vni     INTEGER NOT NULL UNIQUE CHECK (vni BETWEEN 1 AND {VNI_MAX}),
    plane   TEXT NOT NULL,
    subnet  TEXT NOT NULL,
    gateway TEXT,
    mtu     INTEGER,
    updated REAL NOT NULL,
    subnet6 TEXT
);
CREATE TABLE IF NOT EXISTS pods (
    name    TEXT PRIMARY KEY,
    netns   TEXT NOT NULL,
    spec    TEXT NOT NULL,                       -- JSON
    state   TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ({_STATES_SQL})),
    created REAL NOT NULL,
    node    TEXT,                                -- the node that runs it (a cluster)
    netns_id TEXT                                -- the namespace's identity at the add
);
CREATE TABLE IF NOT EXISTS endpoints (
    pod         TEXT NOT NULL,
    plane       TEXT NOT NULL,
    network     TEXT NOT NULL,
    ifname      TEXT,                            -- inside the pod
    host_ifname TEXT UNIQUE,                     -- NULL for a remote endpoint
    mac         TEXT NOT NULL,
    ip          TEXT,
    node        TEXT,
    vtep        TEXT,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ({_STATES_SQL})),
    created     REAL NOT NULL,
    PRIMARY KEY (pod, plane)
);
CREATE INDEX IF NOT EXISTS endpoints_network ON endpoints (network);
CREATE TABLE IF NOT EXISTS allocations (
    network TEXT NOT NULL,
    ip      TEXT NOT NULL,
    pod     TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (network, ip),
    UNIQUE (network, pod)
);
CREATE INDEX IF NOT EXISTS allocations_pod ON allocations (pod);
CREATE TABLE IF NOT EXISTS last_ip (             -- where allocation goes on, per network
    network TEXT PRIMARY KEY,
    ip      TEXT NOT NULL                        -- the last address handed out (not a fixed one)
);
CREATE TABLE IF NOT EXISTS attachments (         -- CNI attachments (dataplane.attach)
    name    TEXT PRIMARY KEY,                    -- the pod that plumbs it
    record  TEXT NOT NULL,                       -- JSON: container ID, ifname, ...
    node    TEXT,
    created REAL NOT NULL
);
"""


log = logging.getLogger(__name__)


class SqliteStore(StateStore):
    """The node's state in the SQLite file ``path`` (created if missing; its
    directory is created with mode 0700, the file with mode 0600). What
    each method promises is written once, in :class:`StateStore`."""

    kind = "sqlite"
    can_watch = False  # one node's file: nothing changes behind its back

    def __init__(self, path: str, timeout: float = 10.0, read_only: bool = False):
        self.path = os.fspath(path)
        self.read_only = read_only
        self._file = None  # (device, inode) of the file opened for writing
        self._opened = False  # its schema checked: open for changes
        self._abspath = os.path.abspath(self.path)  # where it is looked for again
        self._lock = threading.RLock()
        self._claimed = None  # the node name of the service running on it (claim_node)
        if read_only:
            self._open_read_only(timeout)
            return
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)  # makedirs' mode is filtered by the umask
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._timeout = timeout
        self._db = None
        try:
            self._connect()
            with self._tx() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                # files written before pods had these columns get them (NULL)
                cols = {r[1] for r in db.execute("PRAGMA table_info(pods)")}
                for col in _LATER_POD_COLUMNS:
                    if col not in cols:
                        db.execute(f"ALTER TABLE pods ADD COLUMN {col} TEXT")
                cols = {r[1] for r in db.execute("PRAGMA table_info(networks)")}
                for col in _LATER_NETWORK_COLUMNS:
                    if col not in cols:
                        db.execute(f"ALTER TABLE networks ADD COLUMN {col} TEXT")
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) != SCHEMA_VERSION:
                    raise ConfigError(
                        f"store {self.path}: schema version {row[0]}, "
                        f"this program knows {SCHEMA_VERSION}"
                    )
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
            raise ConfigError(f"store {self.path}: not a usable SQLite state file ({e})") from None
        except Exception:
            if self._db is not None:
                self._db.close()
            raise
        self._opened = True

    def _connect(self):
        """The file at the path opened for writing (WAL, synchronous), and
        which file that is (``_file``: device and inode)."""
        # autocommit mode: transactions are opened explicitly by _tx()
        self._db = sqlite3.connect(
            self._abspath, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - e.g. a read-only medium
            raise sqlite3.OperationalError(f"journal mode is {mode}, not WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        st = os.stat(self._abspath)
        self._file = (st.st_dev, st.st_ino)

    def keep_file(self) -> Optional[str]:
        """The state file as it should be at its path: one removed while
        this store had it open (the file, or its directory with it) is
        written back from the open copy, which holds every change, and used
        from then on: what was done, for the log; None if nothing was
        needed. DataplaneError if the path holds another file (replaced
        while it ran: the changes would go where no restart reads them) or
        the copy cannot be written."""
        if self.read_only:
            return None
        with self._lock:
            try:
                st = os.stat(self._abspath)
            except FileNotFoundError:
                st = None
            if st is not None:
                if (st.st_dev, st.st_ino) == self._file:
                    return None
                raise DataplaneError(
                    f"store {self.path}: not the file this service opened (replaced while it "
                    "ran); nothing changed: the service's pods are in the one it has open, "
                    "which no restart would read - put the file back, or restart the service "
                    "to use the new one"
                )
            parent = os.path.dirname(self._abspath)
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
                tmp = f"{self._abspath}.restore"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
                dst = sqlite3.connect(tmp)
                try:
                    self._db.backup(dst)
                finally:
                    dst.close()
                os.rename(tmp, self._abspath)
                old = self._db
                self._connect()
                old.close()
            except (OSError, sqlite3.Error) as e:
                raise DataplaneError(
                    f"store {self.path}: the file was removed while the service ran and "
                    f"cannot be written back ({e}); nothing changed"
                ) from None
            return (
                f"store {self.path}: the state file was removed while the service ran; "
                "written back from the copy the service had open (every pod and record kept)"
            )

    def _open_read_only(self, timeout: float):
        """The file read, never written (``dataplane check``): no file is
        made, no lock taken, nothing changed, and a running service's
        writes are not held up. While a service has the file open (its WAL
        file is there) it is read through the WAL as SQLite's readers do;
        otherwise it is opened immutable, so that not even the WAL's side
        files are left behind. NotFound if there is no file."""
        if not os.path.exists(self.path):
            raise NotFound(f"store {self.path}: no such file")
        mode = "ro" if os.path.exists(self.path + "-wal") else "ro&immutable=1"
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=" + mode
        self._db = None
        try:
            self._db = sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            tables = {
                r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "meta" in tables:
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key='schema_version'"
                ).fetchone()
                if row is not None and int(row[0]) != SCHEMA_VERSION:
                    raise ConfigError(
                        f"store {self.path}: schema version {row[0]}, "
                        f"this program knows {SCHEMA_VERSION}"
                    )
            # a file no service has written yet reads as an empty store
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                name = stmt.split("EXISTS", 1)[1].split()[0]
                if stmt.lstrip().startswith("CREATE TABLE") and name not in tables:
                    self._db.execute(stmt.replace("CREATE TABLE", "CREATE TEMP TABLE"))
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(pods)")}
            missing = [c for c in _LATER_POD_COLUMNS if c not in cols]
            if missing:  # a file from before pods had these columns
                nulls = "".join(f", NULL AS {c}" for c in missing)
                self._db.execute(f"CREATE TEMP VIEW pods AS SELECT *{nulls} FROM main.pods")
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
            what = "a directory, not" if os.path.isdir(self.path) else "not"
            raise ConfigError(
                f"store {self.path}: {what} a readable SQLite state file ({e})"
            ) from None
        except Exception:
            if self._db is not None:
                self._db.close()
            raise

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _read(self):
        """One read transaction: what it reads is of one moment."""
        with self._lock, self._readable():
            self._db.execute("BEGIN")
            try:
                yield _Cursor(self._db)
            finally:
                self._db.execute("ROLLBACK")

    @contextmanager
    def _readable(self):
        """A damaged file (pages past those read at open) read: said as a
        DataplaneError naming the file, not as SQLite's exception."""
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:
            msg = f"store {self.path}: not a readable SQLite state file ({e})"
            log.error("%s", msg)
            raise DataplaneError(msg) from None

    @contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE: takes the write lock now)."""
        if self.read_only:
            raise DataplaneError(f"store {self.path}: opened read only, nothing is written")
        with self._lock, self._readable():
            if self._opened:  # (its schema's check at the open: the file just opened)
                said = self.keep_file()
                if said:
                    log.warning("%s", said)
            cur = _Cursor(self._db)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                else:
                    self._db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise self._write_failed(e) from None

    def _write_failed(self, e: sqlite3.OperationalError) -> DataplaneError:
        """The file could not be written (its file system full or read-only,
        the file locked by another program): what failed and where, nothing
        changed."""
        text = str(e)
        hint = {
            "database or disk is full": "free space on its file system",
            "attempt to write a readonly database": "make it writable again",
            "database is locked": "another program holds its write lock",
        }.get(text)
        if not self._opened:  # its opening's own schema check
            msg = f"store {self.path}: cannot be opened for writing ({text})"
        else:
            msg = f"store {self.path}: the change was not written ({text}); nothing changed"
        msg += f": {hint}" if hint else ""
        log.error("%s", msg)
        return DataplaneError(msg)

    def _query(self, sql, args=()):
        with self._lock, self._readable():
            return self._db.execute(sql, args).fetchall()

    def close(self):
        with self._lock:
            self._db.close()

    # --------------------------------------------------------------- nodes
    def claim_node(self, node: str, vtep: str, host: str, networks=()) -> None:
        # the file's lock (the service's) is the claim; the name is kept so
        # that the node removed is never the one this store serves
        self._claimed = node

    def remove_node(self, node: str) -> Dict[str, int]:
        """The records of node ``node`` - its pods (endpoints, addresses,
        MACs) and CNI attachments - removed in one transaction: a node
        renamed (``node:``, or the host name it defaults to) leaves its old
        name's pods here, never replayed. ConfigError for the name this
        store's running service holds (``claim_node``); NotFound for a name
        no pod or attachment has. Either way nothing changed."""
        if node == self._claimed:
            raise ConfigError(
                f"node {node} is the node of the service running on the store {self.path}: "
                "its own pods are deleted one by one ('dataplane pod del'); 'dataplane node "
                "remove' forgets the pods of an old name of this node"
            )
        with self._tx() as db:
            pods = [r[0] for r in db.execute("SELECT name FROM pods WHERE node=?", (node,))]
            atts = [r[0] for r in db.execute("SELECT name FROM attachments WHERE node=?", (node,))]
            if not pods and not atts:
                raise NotFound(
                    f"node {node}: the store {self.path} has no pod or CNI attachment of a node "
                    "of that name ('dataplane node list' shows the names it has)"
                )
            for name in pods:
                db.execute("DELETE FROM endpoints WHERE pod=?", (name,))
                db.execute("DELETE FROM allocations WHERE pod=?", (name,))
                db.execute("DELETE FROM pods WHERE name=?", (name,))
            db.execute("DELETE FROM attachments WHERE node=?", (node,))
        return {"pods": len(pods), "attachments": len(atts)}

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str) -> Optional[str]:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str):
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value=excluded.value",
                (key, str(value)),
            )

    def identity(self) -> str:
        with self._tx() as db:  # made once, in one transaction
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                (STORE_ID, uuid.uuid4().hex),
            )
            return db.execute("SELECT value FROM meta WHERE key=?", (STORE_ID,)).fetchone()[0]

    # --------------------------------------------------------- attachments
    def put_attachment(self, name: str, record: Dict[str, Any], node: Optional[str] = None):
        try:
            text = json.dumps(record, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"attachment {name}: record is not JSON data ({e})") from None
        with self._tx() as db:
            if db.execute("SELECT 1 FROM attachments WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"attachment {name} exists already")
            db.execute(
                "INSERT INTO attachments (name, record, node, created) VALUES (?, ?, ?, ?)",
                (name, text, node, time.time()),
            )

    @staticmethod
    def _attachment_row(r) -> Dict[str, Any]:
        return {
            **json.loads(r["record"]),
            "name": r["name"],
            "node": r["node"],
            "created": r["created"],
        }

    def attachment(self, name: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM attachments WHERE name=?", (name,))
        return self._attachment_row(rows[0]) if rows else None

    def attachments(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        if node is None:
            rows = self._query("SELECT * FROM attachments ORDER BY created, name")
        else:
            rows = self._query(
                "SELECT * FROM attachments WHERE node=? ORDER BY created, name", (node,)
            )
        return [self._attachment_row(r) for r in rows]

    def delete_attachment(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM attachments WHERE name=?", (name,)).rowcount > 0

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
        """Insert or update network ``name``. A VNI used by another network, a
        new subnet that leaves allocated addresses outside, or a change that
        makes a pod's address the gateway (network, broadcast) address, is
        refused. ``check_only``: only the checks, nothing written."""
        net = check_network(name, vni, subnet)
        with self._read() if check_only else self._tx() as db:
            other = db.execute(
                "SELECT name FROM networks WHERE vni=? AND name<>?", (vni, name)
            ).fetchone()
            if other:
                raise ConfigError(
                    f"network {name}: VNI {vni} is used by network {other[0]} already (one no node "
                    f"carries any more is freed by 'dataplane net forget {other[0]}')"
                )
            outside = [
                r[0]
                for r in db.execute("SELECT ip FROM allocations WHERE network=?", (name,))
                if ipaddress.IPv4Address(r[0]) not in net
            ]
            if outside:
                raise Busy(
                    f"network {name}: subnet {net} would leave allocated "
                    f"addresses outside it ({', '.join(sorted(outside)[:5])})"
                )
            # (a file read only, written before networks had subnet6: none)
            old = db.execute("SELECT * FROM networks WHERE name=?", (name,)).fetchone()
            old = dict(old) if old else None
            allocs = db.execute("SELECT ip, pod FROM allocations WHERE network=?", (name,))
            allocs = allocs.fetchall()
            taken, _ = reserved_held(net, gateway, allocs, old)
            if taken:
                raise reserved_taken(name, taken)
            refused = subnet6_change_refused(name, old, net, subnet6, allocs)
            if refused:
                raise refused
            if check_only:
                return
            db.execute(
                "INSERT INTO networks (name, vni, plane, subnet, gateway, mtu, updated, subnet6) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "vni=excluded.vni, plane=excluded.plane, subnet=excluded.subnet, "
                "gateway=excluded.gateway, mtu=excluded.mtu, updated=excluded.updated, "
                "subnet6=excluded.subnet6",
                (name, vni, plane, str(net), gateway, mtu, time.time(), subnet6),
            )

    def network(self, name: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM networks WHERE name=?", (name,))
        return dict(rows[0]) if rows else None

    def networks(self) -> List[Dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM networks ORDER BY name")]

    def delete_network(self, name: str) -> bool:
        """Remove network ``name``; Busy while it has endpoints or addresses."""
        with self._tx() as db:
            eps = db.execute("SELECT pod FROM endpoints WHERE network=?", (name,)).fetchall()
            allocs = db.execute("SELECT pod FROM allocations WHERE network=?", (name,)).fetchall()
            if eps or allocs:
                raise network_in_use(name, [{"pod": p} for (p,) in eps], [p for (p,) in allocs])
            db.execute("DELETE FROM last_ip WHERE network=?", (name,))
            return db.execute("DELETE FROM networks WHERE name=?", (name,)).rowcount > 0

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
        """Record pod ``name`` (intent: state 'pending'), run by ``node`` (in a
        cluster; None on a single node). AlreadyExists if a pod of that name is
        recorded."""
        check_state(state)
        try:
            spec = json.dumps(spec_dict, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"pod {name}: spec is not JSON data ({e})") from None
        with self._tx() as db:
            if db.execute("SELECT 1 FROM pods WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"pod {name} exists already")
            db.execute(
                "INSERT INTO pods (name, netns, spec, state, created, node, netns_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, netns, spec, state, time.time(), node, netns_id),
            )

    def set_pod_state(self, name: str, state: str):
        check_state(state)
        with self._tx() as db:
            if db.execute("UPDATE pods SET state=? WHERE name=?", (state, name)).rowcount == 0:
                raise NotFound(f"pod {name} is not recorded")

    @staticmethod
    def _pod_row(r):
        d = dict(r)
        d["spec"] = json.loads(d["spec"])
        return d

    def pod(self, name: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT * FROM pods WHERE name=?", (name,))
        return self._pod_row(rows[0]) if rows else None

    def pods(self, state: Optional[str] = None, node: Optional[str] = None) -> List[Dict[str, Any]]:
        where, args = [], []
        if state is not None:
            where.append("state=?")
            args.append(check_state(state))
        if node is not None:
            where.append("node=?")
            args.append(node)
        sql = "SELECT * FROM pods"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._pod_row(r) for r in self._query(sql + " ORDER BY created, name", args)]

    def delete_pod(self, name: str) -> bool:
        with self._tx() as db:
            n = db.execute("DELETE FROM endpoints WHERE pod=?", (name,)).rowcount
            n += db.execute("DELETE FROM allocations WHERE pod=?", (name,)).rowcount
            n += db.execute("DELETE FROM pods WHERE name=?", (name,)).rowcount
            return n > 0

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
        endpoints have a host_ifname; remote ones a node and a VTEP."""
        check_state(state)
        with self._tx() as db:
            if host_ifname is not None:
                other = db.execute(
                    "SELECT pod, plane FROM endpoints WHERE host_ifname=? "
                    "AND NOT (pod=? AND plane=?)",
                    (host_ifname, pod, plane),
                ).fetchone()
                if other:
                    raise host_ifname_taken(host_ifname, other[0], other[1])
            db.execute(
                "INSERT INTO endpoints (pod, plane, network, ifname, host_ifname, mac, ip, "
                "node, vtep, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(pod, plane) DO UPDATE SET network=excluded.network, "
                "ifname=excluded.ifname, host_ifname=excluded.host_ifname, "
                "mac=excluded.mac, ip=excluded.ip, node=excluded.node, "
                "vtep=excluded.vtep, state=excluded.state",
                (pod, plane, network, ifname, host_ifname, mac, ip, node, vtep, state, time.time()),
            )

    def set_endpoint_state(self, pod: str, plane: str, state: str):
        check_state(state)
        with self._tx() as db:
            if (
                db.execute(
                    "UPDATE endpoints SET state=? WHERE pod=? AND plane=?", (state, pod, plane)
                ).rowcount
                == 0
            ):
                raise NotFound(f"endpoint of pod {pod} on plane {plane} is not recorded")

    def delete_endpoint(self, pod: str, plane: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("DELETE FROM endpoints WHERE pod=? AND plane=?", (pod, plane)).rowcount
                > 0
            )

    def endpoints(
        self,
        pod: Optional[str] = None,
        network: Optional[str] = None,
        state: Optional[str] = None,
        node: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Endpoints (dicts with the columns), filtered by whatever is given."""
        where, args = [], []
        for col, val in (("pod", pod), ("network", network), ("state", state), ("node", node)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM endpoints"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [dict(r) for r in self._query(sql + " ORDER BY pod, plane", args)]

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
        subnet, reserved, want = ip_request(network, subnet_cidr, gateway, fixed, avoid)
        with self._tx() as db:
            mine = db.execute(
                "SELECT ip FROM allocations WHERE network=? AND pod=?", (network, pod)
            ).fetchone()
            if mine is not None:
                if want is not None and str(want) != mine[0]:
                    raise ConfigError(
                        f"ips: pod {pod} has address {mine[0]} on network "
                        f"{network} already, not {want}"
                    )
                return mine[0]
            if want is not None:
                owner = db.execute(
                    "SELECT pod FROM allocations WHERE network=? AND ip=?", (network, str(want))
                ).fetchone()
                if owner is not None:
                    raise ConfigError(
                        f"ips: {want} on network {network} is taken by pod {owner[0]}"
                    )
                ip = want
            else:
                taken = {
                    int(ipaddress.IPv4Address(r[0]))
                    for r in db.execute("SELECT ip FROM allocations WHERE network=?", (network,))
                }
                taken |= {int(a) for a in reserved}
                last = db.execute("SELECT ip FROM last_ip WHERE network=?", (network,)).fetchone()
                cand = next_free(subnet, taken, last[0] if last else None)
                if cand is None:
                    raise no_free_address(network, subnet, len(taken))
                ip = ipaddress.IPv4Address(cand)
                db.execute(
                    "INSERT INTO last_ip (network, ip) VALUES (?, ?) "
                    "ON CONFLICT(network) DO UPDATE SET ip=excluded.ip",
                    (network, str(ip)),
                )
            db.execute(
                "INSERT INTO allocations (network, ip, pod, created) VALUES (?, ?, ?, ?)",
                (network, str(ip), pod, time.time()),
            )
            return str(ip)

    def release_ips(self, pod: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM allocations WHERE pod=?", (pod,)).rowcount

    def allocations(self, network: Optional[str] = None) -> List[Dict[str, Any]]:
        if network is None:
            rows = self._query("SELECT * FROM allocations ORDER BY network, ip")
        else:
            rows = self._query("SELECT * FROM allocations WHERE network=? ORDER BY ip", (network,))
        return [dict(r) for r in rows]

    def allocate_mac(self, pod: str, plane: str) -> str:
        """A locally administered unicast MAC (02:xx:xx:xx:xx:xx) derived from
        (pod, plane): the same pair gets the same MAC. Should it equal the MAC
        of another recorded endpoint, the next derivation is taken (still
        deterministic for a given store content)."""
        used = {
            r[0]
            for r in self._query(
                "SELECT mac FROM endpoints WHERE NOT (pod=? AND plane=?)", (pod, plane)
            )
        }
        for i in range(1 << 16):
            mac = derive_mac(pod, plane, i)
            if mac not in used:
                return mac
        raise ResourceError(f"no free MAC for pod {pod} plane {plane}")  # pragma: no cover

    def reserve_mac(self, pod: str, plane: str, mac: str) -> str:
        """``mac`` for (pod, plane); ConfigError if another recorded endpoint
        (requested or derived MAC) has it."""
        with self._tx() as db:
            other = db.execute(
                "SELECT pod, plane FROM endpoints WHERE mac=? AND NOT (pod=? AND plane=?)",
                (mac, pod, plane),
            ).fetchone()
            if other is not None:
                raise mac_taken(plane, mac, other[0], other[1])
            return mac


class _Cursor:
    """What a transaction body sees: ``execute`` only."""

    def __init__(self, db):
        self._db = db

    def execute(self, sql, args=()):
        return self._db.execute(sql, args)
