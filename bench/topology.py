"""The benchmark's addressing plan, shared by the pcap writer (bench.traffic)
and the engine set-up (bench.ours), so the two cannot drift apart.

    pod side (this node)                     underlay                remote side
    local pod MAC k  --- network 0 ---  VTEP 10.0.0.1/24  ==VXLAN==  VTEP 10.0.0.(2 + k % V)
    02:00:00:02:hh:ll     VNI 5000      MAC 02:00:0a:00:00:01        remote MAC k
                                        next hop 02:00:0a:00:00:fe   02:00:00:01:hh:ll

Remote MAC k sits behind remote VTEP k % V: with the default 64 MACs and
8 VTEPs that is 8 MACs per VTEP, interleaved, so consecutive frames of a
burst go to different MACs and different tunnels.

No third-party imports here: the benchmark child (bench.ours) imports this
module next to DPDK and should not pay for scapy.
"""

import ipaddress

NET = 0  # network index in the core
VNI = 5000
VXLAN_PORT = 4789
LOCAL_VTEP = "10.0.0.1"
VTEP_PREFIX_LEN = 24
VTEP_MAC = "02:00:0a:00:00:01"
NEXT_HOP_MAC = "02:00:0a:00:00:fe"  # static underlay next hop: no ARP needed
EF_TOS = 46 << 2  # DSCP EF in the IPv4 TOS byte (0xb8)

#: "64-byte frames" means 64 bytes on the wire *including* the 4-byte FCS,
#: as in RFC 2544. DPDK mbufs and pcap records carry no FCS, so the inner
#: frames in the pcaps are 60 bytes; a VXLAN frame is 60 + 50 = 110 bytes.
INNER_FRAME_LEN = 60
VXLAN_OVERHEAD = 50  # outer Ether 14 + IPv4 20 + UDP 8 + VXLAN 8

#: at least this many destination MACs: no one-entry cache can stand in for the
#: FDB; --macs above the workers' FDB cache (1024 entries) measures the table itself
#: (up to 2^20: the FDB's capacity)
MIN_MACS = 64
MIN_VTEPS = 8
MAX_VTEPS = 200  # remote VTEPs are 10.0.0.2 .. 10.0.0.201 (in the /24)
MAX_MACS = 1 << 20


def remote_vtep(j: int) -> str:
    """IPv4 address of remote VTEP j (0-based)."""
    if not 0 <= j < MAX_VTEPS:
        raise ValueError(f"remote VTEP index {j} out of range 0..{MAX_VTEPS - 1}")
    return f"10.0.0.{2 + j}"


def remote_vteps(n_vteps: int):
    return [remote_vtep(j) for j in range(n_vteps)]


def vtep_of(k: int, n_vteps: int) -> str:
    """The remote VTEP behind which remote MAC k sits."""
    return remote_vtep(k % n_vteps)


def remote_mac(k: int) -> str:
    """MAC of remote endpoint k (behind a remote VTEP)."""
    return f"02:00:{k >> 16 & 0xFF:02x}:01:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}"


def local_mac(k: int) -> str:
    """MAC of local pod endpoint k (behind a pod port of this node)."""
    return f"02:00:{k >> 16 & 0xFF:02x}:02:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}"


def _inner_ip(base: str, k: int, f: int) -> str:
    # 4 addresses per endpoint, the first 2^16 endpoints' own (2^18
    # addresses); endpoints past them reuse those (inner IPs are flow
    # entropy only: the FDB works on MACs)
    return str(ipaddress.IPv4Address(base) + 1 + (k & 0xFFFF) * 4 + f % 4)


def remote_ip(k: int, f: int = 0) -> str:
    """An inner IPv4 address of remote endpoint k (f picks one of 4 per host)."""
    return _inner_ip("172.24.0.0", k, f)


def local_ip(k: int, f: int = 0) -> str:
    """An inner IPv4 address of local endpoint k (f picks one of 4 per host)."""
    return _inner_ip("172.16.0.0", k, f)


def check_sizes(n_macs: int, n_vteps: int):
    """Raise ValueError naming the option if the topology is out of range."""
    if not MIN_MACS <= n_macs <= MAX_MACS:
        raise ValueError(f"--macs: {n_macs} out of range {MIN_MACS}..{MAX_MACS}")
    if not MIN_VTEPS <= n_vteps <= MAX_VTEPS:
        raise ValueError(f"--vteps: {n_vteps} out of range {MIN_VTEPS}..{MAX_VTEPS}")
    if n_vteps > n_macs:
        raise ValueError(f"--vteps: {n_vteps} VTEPs for {n_macs} MACs leaves some empty")


def add_options(ap, macs_help: str):
    """--frames, --macs, --vteps of a benchmark that replays bench.traffic's
    pcap; ``macs_help`` says which MACs (checked by check_options)."""
    ap.add_argument("--frames", type=int, default=4096, help="frames (= flows) in the pcap")
    ap.add_argument("--macs", type=int, default=MIN_MACS, help=f"{macs_help} (>= {MIN_MACS})")
    ap.add_argument("--vteps", type=int, default=MIN_VTEPS, help=f"remote VTEPs (>= {MIN_VTEPS})")


def check_options(args, max_frames: int):
    """Raise ValueError naming the option if --frames, --macs or --vteps is
    out of range (at least one frame per MAC)."""
    check_sizes(args.macs, args.vteps)
    if not args.macs <= args.frames <= max_frames:
        raise ValueError(f"--frames: {args.frames} out of range {args.macs}..{max_frames}")
