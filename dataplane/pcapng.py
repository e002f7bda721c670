"""pcapng files and one-line frame summaries for ``dataplane capture``.

Pure standard library: the CLI imports this without the core. The writer
puts one interface description block per captured interface (its name,
nanosecond timestamps) and one enhanced packet block per frame with its
direction in ``epb_flags``, as tcpdump and Wireshark read them; a frame the
core dropped has no direction and says why in its comment (Wireshark's
``frame.comment``).
"""

import errno
import ipaddress
import os
import select
import signal
import struct
import time

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
LINKTYPE_ETHERNET = 1
_DIR_FLAG = {"rx": 1, "tx": 2}  # epb_flags bits 0-1: inbound, outbound


def _opt(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _idb(name: str, snaplen: int) -> bytes:
    """An Ethernet interface's description block: its name, ns timestamps."""
    opts = _opt(2, name.encode()) + _opt(9, bytes([9])) + _opt(0, b"")
    return _block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + opts)


def _shb(app: str) -> bytes:
    """The section header block: little-endian, version 1.0, the application."""
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, app.encode()) + _opt(0, b"")
    return _block(_SHB, body)


def headers_size(interfaces, app="dataplane") -> int:
    """Bytes of the blocks a file of ``interfaces`` ([(name, snaplen)])
    begins with, before any frame: the least ``max_size`` it can have."""
    return len(_shb(app)) + sum(len(_idb(name, snaplen)) for name, snaplen in interfaces)


class PcapngWriter:
    """pcapng into an open binary file; ``interfaces``: [(name, snaplen)].

    Blocks are gathered (``add``) and written by ``flush`` (each call of
    ``write`` past 1 MiB gathered, or the caller's): give it a raw file
    (``open(..., buffering=0)``) and it only ever ends on a whole block. A
    write that fails (a full disk) cuts the file back to its last whole
    block and raises; ``size`` and ``frames`` say what the file holds.
    ``max_size`` (bytes, headers included; 0: no limit) bounds the file: a
    frame whose block would pass it is not taken and ``write`` answers
    False; headers that alone pass it (``headers_size``) are refused
    (ValueError) before anything is written."""

    FLUSH_AT = 1 << 20

    def __init__(self, f, interfaces, app="dataplane", max_size=0):
        self.f = f
        self.max_size = max_size
        self.size = 0  # bytes of whole blocks in the file
        self.frames = 0  # frames in the file
        self._buf = bytearray()
        self._ends = []  # (end of a block in _buf, whether it is a frame's)
        least = headers_size(interfaces, app)
        if max_size and least > max_size:
            raise ValueError(f"max_size {max_size}: the headers alone take {least} bytes")
        self._add(_shb(app), False)
        for name, snaplen in interfaces:
            self._add(_idb(name, snaplen), False)
        self.flush()

    def add_interface(self, name: str, snaplen: int) -> bool:
        """One more interface (its description block), the next number for
        ``write`` (the first is 0); False, and not added, where its block
        would pass ``max_size``."""
        block = _idb(name, snaplen)
        if self.max_size and self.size + len(self._buf) + len(block) > self.max_size:
            return False
        self._add(block, False)
        return True

    def _add(self, block: bytes, frame: bool):
        self._buf += block
        self._ends.append((len(self._buf), frame))

    def write(
        self, iface: int, ts_ns: int, direction: str, orig_len: int, data: bytes, why=None
    ) -> bool:
        """A frame; ``direction`` rx, tx or drop (``why``: its reason);
        what is gathered is written once it passes 1 MiB."""
        if not self.add(iface, ts_ns, direction, orig_len, data, why):
            return False
        if len(self._buf) >= self.FLUSH_AT:
            self.flush()
        return True

    def add(
        self, iface: int, ts_ns: int, direction: str, orig_len: int, data: bytes, why=None
    ) -> bool:
        """A frame gathered, as ``write`` takes it, written only by the
        next ``flush``: no I/O, nothing to wait for."""
        body = (
            struct.pack("<IIIII", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), orig_len)
            + data
            + b"\0" * ((-len(data)) % 4)
        )
        if direction == "drop":
            body += _opt(1, f"dropped: {why}".encode())
        else:
            body += _opt(2, struct.pack("<I", _DIR_FLAG[direction]))
        body += _opt(0, b"")
        block = _block(_EPB, body)
        if self.max_size and self.size + len(self._buf) + len(block) > self.max_size:
            return False
        self._add(block, True)
        return True

    @property
    def seekable(self) -> bool:
        """A file (not a pipe, socket or terminal)."""
        try:
            return self.f.seekable()
        except (OSError, ValueError):
            return False

    @property
    def pending(self) -> int:
        """Frames gathered that are not (wholly) in the file yet."""
        return sum(1 for _, frame in self._ends if frame)

    def flush(self, wait=True):
        """Write what was gathered. On an error (or an interrupt) a file is
        cut back to its last whole block, the blocks not written are kept
        for the next flush, and the error is raised. A pipe keeps what it
        took: the rest of a block it took part of is kept instead, for the
        next flush to go on with. Without ``wait`` a pipe is given only what
        it has room for now, and BlockingIOError raised if that is not all."""
        done = 0
        seekable = self.seekable
        self._taken = 0  # a pipe's: counted by _write_some
        try:
            with memoryview(self._buf) as view:
                while (self._taken if not seekable else done) < len(view):
                    if seekable:
                        done += self.f.write(view[done:]) or 0  # a raw file may take part
                    else:  # a copy: a traceback keeps no view of _buf
                        t = self._taken
                        self._write_some(bytes(view[t : t + select.PIPE_BUF]), wait)
        except BaseException:
            if not seekable:
                self._commit(self._taken)
                raise
            whole = max((end for end, _ in self._ends if end <= done), default=0)
            self._commit(whole)
            try:  # drop a block cut short (a full disk frees it)
                self.f.truncate(self.size)
                self.f.seek(self.size)
            except OSError:
                pass
            raise
        self._commit(done if seekable else self._taken)

    #: signals held off while a pipe takes a piece: what a handler raises
    #: then (Ctrl-C) comes once the piece is counted, never between
    _HOLD = frozenset(signal.valid_signals()) - {
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
    }

    def _write_some(self, data: bytes, wait=True):
        """``data`` (at most PIPE_BUF bytes) into a pipe (or socket,
        terminal), what it took added to ``_taken``. Waits for room (without
        ``wait``: BlockingIOError where there is none now) with
        signals as they are (an interrupt then finds nothing written), then
        writes - all or none into a pipe that has room - and counts with
        signals held: a handler's exception (Ctrl-C) comes when they are let
        go again, after the count (a single-threaded reader of signals, as
        the capture is). The mask is read before it is changed, and put back
        whatever is raised."""
        fd = self.f.fileno()
        if not select.select([], [fd], [], None if wait else 0)[1]:
            raise BlockingIOError(errno.EAGAIN, "no room in the pipe")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # as it is; nothing changed
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, self._HOLD)
            self._taken += os.write(fd, data)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _commit(self, n: int):
        """The first ``n`` bytes gathered are in the file (whole blocks but
        on a pipe, where ``size`` counts a block's part too; ``frames`` the
        whole ones)."""
        self.size += n
        self.frames += sum(1 for end, frame in self._ends if frame and end <= n)
        self._ends = [(end - n, frame) for end, frame in self._ends if end > n]
        del self._buf[:n]


# ------------------------------------------------------------------ summary
def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip4(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


_ICMP = {0: "echo reply", 3: "unreachable", 8: "echo request", 11: "time exceeded"}


def _l4(proto: int, data: bytes, src: str, dst: str, depth: int, l4len: int) -> str:
    """``l4len``: the L4 length the IP header gives (the captured ``data``
    may be cut by the snap length, or carry the Ethernet padding)."""
    if proto == 17 and len(data) >= 8:
        sp, dp, ln = struct.unpack_from("!HHH", data)
        if dp == 4789 and len(data) >= 16 and depth < 2:
            vni = int.from_bytes(data[12:15], "big")
            return f"{src}.{sp} > {dst}.{dp}: VXLAN vni {vni}: " + summary(data[16:], depth + 1)
        return f"{src}.{sp} > {dst}.{dp}: UDP, length {max(ln - 8, 0)}"
    if proto == 6 and len(data) >= 20:
        sp, dp, seq, ack, off, fl = struct.unpack_from("!HHIIBB", data)
        flags = "".join(c for c, bit in zip("FSRP.U", range(6)) if fl & (1 << bit)) or "none"
        plen = max(l4len - (off >> 4) * 4, 0)
        return f"{src}.{sp} > {dst}.{dp}: TCP [{flags}] seq {seq} ack {ack}, length {plen}"
    if proto == 1 and len(data) >= 8 and data[0] == 3 and data[1] == 4:
        # a router's "fragmentation needed" (RFC 1191): the MTU of its next
        # link, and the datagram it could not send on (an underlay's word
        # that vtep.underlay_mtu is too large: the frag_needed drop)
        about = ""
        q = data[8:]
        if len(q) >= 20 and q[0] >> 4 == 4:
            qs, qd, qhl = _ip4(q[12:16]), _ip4(q[16:20]), (q[0] & 0xF) * 4
            if q[9] == 17 and qhl >= 20 and len(q) >= qhl + 4:
                sp, dp = struct.unpack_from("!HH", q, qhl)
                about = f", about {qs}.{sp} > {qd}.{dp}: UDP"
            else:
                about = f", about {qs} > {qd}: ip-proto-{q[9]}"
        mtu = struct.unpack_from("!H", data, 6)[0]  # 0: a router before RFC 1191
        said = f" (mtu {mtu})" if mtu else ""
        return f"{src} > {dst}: ICMP unreachable - need to frag{said}{about}"
    if proto == 1 and len(data) >= 4:
        return f"{src} > {dst}: ICMP {_ICMP.get(data[0], f'type {data[0]}')}"
    if proto == 58 and len(data) >= 4:
        return f"{src} > {dst}: ICMP6 type {data[0]}"
    return f"{src} > {dst}: ip-proto-{proto}"


def summary(frame: bytes, depth: int = 0) -> str:
    """One tcpdump-like line for an Ethernet frame (VXLAN inner frames too)."""
    if len(frame) < 14:
        return f"runt, length {len(frame)}"
    dst, src = _mac(frame[0:6]), _mac(frame[6:12])
    et, off, vlans = struct.unpack_from("!H", frame, 12)[0], 14, ""
    while et in (0x8100, 0x88A8) and len(frame) >= off + 4:
        vlans += f"vlan {struct.unpack_from('!H', frame, off)[0] & 0xFFF}, "
        et = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    head = f"{src} > {dst}, {vlans}"
    p = frame[off:]
    if et == 0x0806 and len(p) >= 28:
        op = struct.unpack_from("!H", p, 6)[0]
        spa, tpa = _ip4(p[14:18]), _ip4(p[24:28])
        if op == 1:
            return head + f"ARP, Request who-has {tpa} tell {spa}"
        return head + f"ARP, Reply {spa} is-at {_mac(p[8:14])}"
    if et == 0x0800 and len(p) >= 20 and (p[0] & 0x0F) >= 5:
        ihl = (p[0] & 0x0F) * 4
        l4len = struct.unpack_from("!H", p, 2)[0] - ihl
        proto, s, d = p[9], _ip4(p[12:16]), _ip4(p[16:20])
        frag = struct.unpack_from("!H", p, 6)[0] & 0x3FFF
        if frag & 0x1FFF:
            return head + f"IP {s} > {d}: fragment"
        return head + "IP " + _l4(proto, p[ihl:], s, d, depth, l4len)
    if et == 0x86DD and len(p) >= 40:
        s = str(ipaddress.IPv6Address(p[8:24]))
        d = str(ipaddress.IPv6Address(p[24:40]))
        l4len = struct.unpack_from("!H", p, 4)[0]
        return head + "IP6 " + _l4(p[6], p[40:], s, d, depth, l4len)
    return head + f"ethertype 0x{et:04x}, length {len(frame)}"


def clock(ts_ns: int) -> str:
    """HH:MM:SS.uuuuuu of a wall-clock time in ns, local time as tcpdump."""
    return (
        time.strftime("%H:%M:%S", time.localtime(ts_ns // 10**9)) + f".{ts_ns % 10**9 // 1000:06d}"
    )
