"""A memif client in Python: enough of the protocol (memif 2.0, copy mode,
one ring each way) to stand in for a pod's application, well-behaved or
not, against the core's ``net_memif`` server port.

Layout of the one shared-memory region, as DPDK's own client makes it:

    [c2s ring: 128-byte header, 2^log2 descriptors of 16 bytes]
    [s2c ring: the same]
    [buffers: 2 * 2^log2 of BUF bytes]

A ring's header: cookie (u32) flags (u16) head (u16) at 0, tail (u16) at
64, descriptors at 128. A descriptor: flags (u16) region (u16) length
(u32) offset (u32) metadata (u32). Client to server (c2s): the client
fills descriptors and moves head; the server reads up to head and moves
tail. Messages are 128 bytes: type (u16) and a packed body; the region's
memfd and each ring's eventfd go with theirs as SCM_RIGHTS.
"""

import mmap
import os
import socket
import struct
import time

COOKIE = 0x3E31F20
VERSION = 0x0200
MSG = 128
HELLO, ACK, INIT, ADD_REGION, ADD_RING, CONNECT, CONNECTED, DISCONNECT = 2, 1, 3, 4, 5, 6, 7, 8
RING_HDR = 128
DESC = 16
BUF = 2048


class MemifError(RuntimeError):
    pass


class MemifPeer:
    """Connects to ``path`` as the client of interface ``id``; ``send``
    puts frames on the c2s ring; ``shrink`` truncates the shared memory
    under the server's mapping (what a hostile pod can do); ``close``
    drops the connection (what a pod's exit does). ``lie``: declare the
    region's size but hand over an empty file (the server's first look at
    the rings, as it accepts the connection, reads past its end).
    ``ring_offset``: both rings said to be there, far past the region."""

    def __init__(
        self,
        path: str,
        if_id: int = 0,
        log2: int = 4,
        name: str = "testpeer",
        lie: bool = False,
        ring_offset: int = 0,
    ):
        self.log2 = log2
        self.slots = 1 << log2
        ring = RING_HDR + DESC * self.slots
        self.c2s, self.s2c, self.bufs = 0, ring, 2 * ring
        self.size = self.bufs + 2 * self.slots * BUF
        self.fd = os.memfd_create("memif-peer", 0)
        os.ftruncate(self.fd, self.size)
        self.mem = mmap.mmap(self.fd, self.size)
        for off in (self.c2s, self.s2c):
            struct.pack_into("<IHH", self.mem, off, COOKIE, 1, 0)  # interrupts masked
            struct.pack_into("<H", self.mem, off + 64, 0)
        for j in range(self.slots):  # the s2c ring's buffers, not offered (head 0)
            self._desc(self.s2c, j, BUF, self.bufs + (self.slots + j) * BUF)
        self.head = 0
        self.events = [os.eventfd(0), os.eventfd(0)]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._connect(path, if_id, log2, name, lie, ring_offset)
        except BaseException:
            self.close()  # refused: nothing of it left open
            raise

    def _connect(self, path, if_id, log2, name, lie, ring_offset):
        self.sock.settimeout(5)
        self.sock.connect(path)
        self._expect(HELLO)
        self._send(INIT, struct.pack("<HIB24s32s", VERSION, if_id, 0, b"", name.encode()))
        self._expect(ACK)
        if lie:
            os.ftruncate(self.fd, 0)
        self._send(ADD_REGION, struct.pack("<HQ", 0, self.size), self.fd)
        self._expect(ACK)
        for flags, off, ev in ((1, self.c2s, self.events[0]), (0, self.s2c, self.events[1])):
            off = ring_offset or off  # a hostile pod's: past the region's end
            self._send(ADD_RING, struct.pack("<HHHIBH", flags, 0, 0, off, log2, 0), ev)
            self._expect(ACK)
        self._send(CONNECT, struct.pack("<32s", name.encode()))
        self._expect(CONNECTED)

    # ------------------------------------------------------------ protocol
    def _send(self, kind: int, body: bytes, fd: int = -1):
        msg = struct.pack("<H", kind) + body
        msg += bytes(MSG - len(msg))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))] if fd >= 0 else []
        self.sock.sendmsg([msg], anc)

    def _expect(self, kind: int):
        msg = self.sock.recv(MSG)
        if len(msg) < 2:
            raise MemifError(f"connection closed while waiting for message {kind}")
        got = struct.unpack_from("<H", msg)[0]
        if got == DISCONNECT:
            reason = msg[6:102].split(b"\0")[0].decode(errors="replace")
            raise MemifError(f"server disconnected: {reason}")
        if got != kind:
            raise MemifError(f"message {got} where {kind} was expected")

    def _desc(self, ring: int, slot: int, length: int, offset: int):
        struct.pack_into("<HHIII", self.mem, ring + RING_HDR + slot * DESC, 0, 0, length, offset, 0)

    # ---------------------------------------------------------------- data
    def send(self, frame: bytes):
        """One frame on the c2s ring; waits for the server to have room."""
        deadline = time.monotonic() + 5
        while self.head - self.tail() >= self.slots:
            if time.monotonic() > deadline:
                raise MemifError("the server takes nothing from the ring")
            time.sleep(0.001)
        slot = self.head & (self.slots - 1)
        off = self.bufs + slot * BUF
        self.mem[off : off + len(frame)] = frame
        self._desc(self.c2s, slot, len(frame), off)
        self.head = (self.head + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, self.c2s + 6, self.head)

    def tail(self) -> int:
        """How far the server has read the c2s ring."""
        return struct.unpack_from("<H", self.mem, self.c2s + 64)[0]

    def offer(self):
        """Give the server every s2c buffer to fill (frames to the peer)."""
        struct.pack_into("<H", self.mem, self.s2c + 6, self.slots)

    def received(self) -> int:
        """How many frames the server has put on the s2c ring."""
        return struct.unpack_from("<H", self.mem, self.s2c + 64)[0]

    def shrink(self, size: int = 0):
        """Truncate the region to ``size`` bytes under the server's mapping:
        its next access past that is a SIGBUS (0: the rings; one page: the
        rings stay, the buffers go). The peer's own view of it is then off
        limits too."""
        os.ftruncate(self.fd, size)

    def close(self):
        try:
            self.sock.close()
        finally:
            for fd in self.events:
                os.close(fd)
            try:
                self.mem.close()
            except (BufferError, ValueError):
                pass
            os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
