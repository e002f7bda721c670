"""The express lane while its tables change: an engine in this process, two
pods (namespaces) on one network in the lane, a stream of numbered UDP
datagrams from pod a to pod b, and meanwhile a thread of the control
process that changes what the lane's two programs read:

* ``switch``: the lane on and off (what a capture does);
* ``member``: pod b out of the lane and in again (what removing and
  re-making its port does);
* ``underlay``: the lane on and off while the datagrams come to pod b from
  a host behind the kernel's own VXLAN VTEP (namespace h, on the uplink's
  veth), which the lane decapsulates;
* ``stream``: the lane on and off while the host behind that kernel VTEP
  sends pod b a TCP stream (the kernel's own TCP, its VTEP's super-frames
  whole), whose data the lane decapsulates while it is on and the core
  while it is off: the stream must arrive whole and intact (``frames``
  KiB of it; ``received`` and ``sent`` count bytes, ``intact`` compares
  their SHA-256);
* ``move``: pod a sends numbered TCP segments (raw frames) to a MAC
  behind that host, which the lane encapsulates, while the MAC moves from
  one VTEP to another and back (each move makes the new VTEP's tunnel and
  frees the old one's, whose slot the next move takes again): each frame
  on the underlay must carry one tunnel's header or the other's whole -
  next-hop MAC, VTEP address and checksum of the same template.

The sender runs on another CPU than the changing thread, so that a change
can land between the socket filter and tc ingress of one frame, and
waits after each thousand frames for thirty more changes: at least 30
changes per 1000 frames land while frames flow, on a busy machine too.
Prints
one JSON object: sent, received, duplicates, pod b's socket overflows
(the kernel's), the changes made, the frames the lane took from the
sending port, the engine's non-zero drops; ``move`` adds the frames seen
on the underlay with an outer header neither template gives (``torn``).

    python tests/lanerace.py switch|member|underlay|stream|move [frames]
"""

import json
import os
import subprocess
import sys
import threading
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane.engine import DROP_REASONS, Engine, EngineConfig  # noqa: E402

MA, MB = "02:00:00:00:10:0a", "02:00:00:00:10:0b"
IPA, IPB, UDP_PORT = "10.77.0.1", "10.77.0.2", 7000
# underlay: the kernel VTEP host's inner interface (as pod a), its VTEP,
# ours, their MACs
MH, VNI = "02:00:00:00:10:0c", 101
HOST_VTEP, NODE_VTEP = "10.78.0.2", "10.78.0.1"
HOST_UL_MAC, NODE_UL_MAC = "02:00:00:00:20:02", "02:00:00:00:20:01"

RECEIVER = """
import socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: past rmem_max
s.bind((sys.argv[2], int(sys.argv[3])))
print("ready", flush=True)
s.settimeout(5)  # the first comes once the sender runs
seen = bytearray(n)
dup = 0
try:
    while True:
        i = int.from_bytes(s.recv(64)[:4], "little")
        dup += seen[i]
        seen[i] = 1
        s.settimeout(1)  # then: done after a second without one (late doubles too)
except socket.timeout:
    pass
snmp = [ln.split() for ln in open("/proc/net/snmp") if ln.startswith("Udp:")]
print(sum(seen), dup, snmp[1][snmp[0].index("RcvbufErrors")])
"""

# the senders wait, after each PACE_FRAMES frames, for PACE_CHANGES more
# changes (one byte on their stdin from the changing thread): every run
# makes PACE_CHANGES * frames / PACE_FRAMES changes while frames flow,
# however fast the machine runs either side
PACE_FRAMES = 1000
PACE_CHANGES = 30

SENDER = """
import os, socket, sys, time
PACE_FRAMES = 1000  # = lanerace.PACE_FRAMES
os.sched_setaffinity(0, {int(sys.argv[4])})
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = bytes(28)
for i in range(n):
    s.sendto(i.to_bytes(4, "little") + pad, (sys.argv[2], int(sys.argv[3])))
    if i % 64 == 63:
        time.sleep(0.0002)  # below what b's socket and the core keep up with
    if i % PACE_FRAMES == PACE_FRAMES - 1:
        sys.stdin.buffer.read(1)  # the changes' pace (main)
"""


# move: the two VTEPs the MAC moves between, and their MACs (the host's
# interface has the first; the second answers nothing, the frames to it
# are only looked at), and pod a's raw sender
RACE_VTEPS = ((HOST_VTEP, HOST_UL_MAC), ("10.78.0.3", "06:11:22:33:44:55"))

TCP_SENDER = """
import os, socket, struct, sys, time
PACE_FRAMES = 1000  # = lanerace.PACE_FRAMES
os.sched_setaffinity(0, {int(sys.argv[2])})
n = int(sys.argv[1])
mac = lambda s: bytes.fromhex(s.replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
eth = mac(sys.argv[3]) + mac(sys.argv[4]) + b"\\x08\\x00"
src, dst = socket.inet_aton(sys.argv[5]), socket.inet_aton(sys.argv[6])
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t & 0xffff) + (t >> 16)
    return ~((t & 0xffff) + (t >> 16)) & 0xffff
ip0 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, 0, 0x4000, 64, 6, 0, src, dst)
ip = ip0[:10] + struct.pack("!H", csum(ip0)) + ip0[12:]
for i in range(n):
    tcp = struct.pack("!HHIIBBHHH", 40000, 7000, i, 0, 0x50, 0x10, 512, 0, 0) + bytes(20)
    s.send(eth + ip + tcp)
    if i % 64 == 63:
        time.sleep(0.0002)
    if i % PACE_FRAMES == PACE_FRAMES - 1:
        sys.stdin.buffer.read(1)  # the changes' pace (main)
"""

TCP_RECEIVER = """
import socket, struct, sys
ok = set()
for v in sys.argv[1].split(","):
    ip, mac = v.split("=")
    ok.add((bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
s.bind(("eth0", 0))
print("ready", flush=True)
s.settimeout(5)
seen, torn = set(), 0
try:
    while True:
        f = s.recv(2048)
        # VXLAN (UDP 4789) around IPv4 TCP: the numbered segments
        if len(f) < 104 or f[12:14] != b"\\x08\\x00" or f[23] != 17 or f[36:38] != b"\\x12\\xb5":
            continue
        if (f[0:6], f[30:34]) not in ok or sum(struct.unpack("!10H", f[14:34])) % 0xffff:
            torn += 1
        seen.add(struct.unpack("!I", f[50 + 38 : 50 + 42])[0])
        s.settimeout(1)
except socket.timeout:
    pass
print(len(seen), 0, 0, torn)
"""


# stream: pod b's TCP receiver and the kernel VTEP host's sender (SHA-256
# of what each saw; the receiver prints bytes, 0, 0 as RECEIVER's columns)
STREAM_RECEIVER = """
import hashlib, socket, sys
ls = socket.socket()
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(1)
print("ready", flush=True)
ls.settimeout(30)
c, _ = ls.accept()
c.settimeout(10)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, 0, 0, h.hexdigest())
"""

STREAM_SENDER = """
import hashlib, os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[4])})
n = int(sys.argv[1]) * 1024
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30)
h, block = hashlib.sha256(), os.urandom(1 << 16)
for i in range(n >> 16):
    b = block[i % 251:] + block[:i % 251]  # no two blocks in a row alike
    s.sendall(b)
    h.update(b)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(h.hexdigest())
"""


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def main(mode, frames):
    tag = "lr" + uuid.uuid4().hex[:6]
    na, nb, ha, hb = f"{tag}a", f"{tag}b", f"{tag}ha", f"{tag}hb"
    ncpu = os.cpu_count() or 1
    other = 1 % ncpu  # the sender's CPU; the changes run on CPU 0
    made = []
    eng = None
    under = mode in ("underlay", "stream", "move")
    move = mode == "move"
    stream = mode == "stream"
    nh, hu = f"{tag}h", f"{tag}hu"  # the kernel VTEP host, the uplink's host end
    try:
        for ns, h, mac, ip, peer in ((na, ha, MA, IPA, (IPB, MB)), (nb, hb, MB, IPB, (IPA, MA))):
            if mode in ("underlay", "stream") and ns == na:
                continue  # the datagrams (the stream) come from the kernel VTEP host
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "neigh", "add", peer[0], "lladdr", peer[1], "dev", "eth0")
            sh("ip", "link", "set", h, "up")
        if under:
            if not move:
                na = nh
            sh("ip", "netns", "add", nh)
            made.append(nh)
            sh("ip", "netns", "exec", nh, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh(
                *f"ip link add {hu} address {NODE_UL_MAC} type veth peer name eth0 netns {nh}".split()
            )
            sh("ip", "link", "set", hu, "up")
            for cmd in (
                f"addr add {HOST_VTEP}/24 dev eth0",
                f"link set eth0 address {HOST_UL_MAC} up",
                f"neigh add {NODE_VTEP} lladdr {NODE_UL_MAC} dev eth0",
                f"link add vx type vxlan id {VNI} local {HOST_VTEP} remote {NODE_VTEP} "
                "dstport 4789 dev eth0",
                f"link set vx address {MH} up",
                "addr add 10.77.0.9/24 dev vx",
                f"neigh add {IPB} lladdr {MB} dev vx",
            ):
                sh("ip", "-n", nh, *cmd.split())
            if stream:  # pod b answers the host's TCP
                sh("ip", "-n", nb, "neigh", "add", "10.77.0.9", "lladdr", MH, "dev", "eth0")
        eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1] if ncpu > 1 else [0]))
        eng.add_network(0, vni=VNI)
        pb = eng.add_afpacket_port(hb, network=0)
        eng.fdb_add_local(0, MB, pb)
        if under:
            up = eng.add_afpacket_port(hu, role="uplink")
            if move:  # next hops from the neighbour table
                eng.set_vtep(f"{NODE_VTEP}/24", NODE_UL_MAC, up)
                for ip, mac in RACE_VTEPS:
                    eng.set_neighbor(ip, mac)
            else:
                eng.set_vtep(f"{NODE_VTEP}/24", NODE_UL_MAC, up, next_hop_mac=HOST_UL_MAC)
            eng.fdb_add_remote(0, MH, HOST_VTEP)
            pa = up
        if not under or move:
            pa = eng.add_afpacket_port(ha, network=0)
            eng.fdb_add_local(0, MA, pa)
        eng.express_open()
        if not under or move:
            eng.express_add_port(pa, ha, 0, MA, [IPA])
        eng.express_add_port(pb, hb, 0, MB, [IPB])
        eng.start()
        if move:  # the underlay's side sees what the lane sends
            rx_cmd = ["ip", "netns", "exec", nh, sys.executable, "-c", TCP_RECEIVER]
            rx_cmd.append(",".join(f"{ip}={mac}" for ip, mac in RACE_VTEPS))
        elif stream:
            rx_cmd = ["ip", "netns", "exec", nb, sys.executable, "-c", STREAM_RECEIVER]
            rx_cmd += [IPB, str(UDP_PORT)]
        else:
            rx_cmd = ["ip", "netns", "exec", nb, sys.executable, "-c", RECEIVER]
            rx_cmd += [str(frames), IPB, str(UDP_PORT)]
        rx = subprocess.Popen(rx_cmd, stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "ready"
        stop = threading.Event()
        changes = [0]
        pace_r, pace_w = os.pipe()
        os.set_blocking(pace_w, False)  # a full pipe: the sender is well ahead

        def change():
            try:
                changing()
            finally:
                os.close(pace_w)  # a sender waiting for the pace goes on

        def changing():
            os.sched_setaffinity(0, {0})
            on = True
            while not stop.is_set():
                on = not on
                if mode in ("switch", "underlay", "stream"):
                    eng.express_enable(on)
                elif move:
                    eng.fdb_add_remote(0, MH, RACE_VTEPS[on][0])
                elif on:
                    eng.express_add_port(pb, hb, 0, MB, [IPB])
                else:
                    eng.express_remove_port(pb)
                changes[0] += 1
                if changes[0] % PACE_CHANGES == 0:
                    try:
                        os.write(pace_w, b".")
                    except BlockingIOError:
                        pass
            if mode == "member" and not on:
                eng.express_add_port(pb, hb, 0, MB, [IPB])
            eng.express_enable(True)

        th = threading.Thread(target=change)
        th.start()
        try:
            if stream:
                tx_cmd = [
                    "ip", "netns", "exec", na, sys.executable, "-c", STREAM_SENDER,
                    str(frames), IPB, str(UDP_PORT), str(other),
                ]  # fmt: skip
            elif move:
                tx_cmd = [
                    "ip", "netns", "exec", na, sys.executable, "-c", TCP_SENDER,
                    str(frames), str(other), MH, MA, IPA, "10.77.0.9",
                ]  # fmt: skip
            else:
                tx_cmd = [
                    "ip", "netns", "exec", na, sys.executable, "-c", SENDER,
                    str(frames), IPB, str(UDP_PORT), str(other),
                ]  # fmt: skip
            tx = subprocess.run(tx_cmd, check=True, capture_output=True, stdin=pace_r, text=True)
        finally:
            stop.set()
            th.join()
            os.close(pace_r)
        out = rx.communicate(timeout=30)[0].split()
        c = eng.counters()
        extra = {}
        if stream:
            extra = {"intact": out.pop() == tx.stdout.strip()}
            dec = c.net_dict(0)["decap_packets"]
            extra["core"] = dec - int(eng.express_counts(pa)[0])  # decapsulated by the core
        got, dup, rcvbuf, *torn = map(int, out)
        print(
            json.dumps(
                {
                    **({"torn": torn[0]} if torn else {}),
                    **extra,
                    "sent": frames * 1024 if stream else frames,
                    "received": got,
                    "duplicates": dup,
                    "rcvbuf_errors": rcvbuf,  # b's socket full: the kernel's drops, not ours
                    "changes": changes[0],
                    "lane": int(eng.express_counts(pa)[0]),
                    "drops": {r: int(c.drop[i]) for i, r in enumerate(DROP_REASONS) if c.drop[i]},
                }
            )
        )
    finally:
        if eng is not None:
            eng.close()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100000)
