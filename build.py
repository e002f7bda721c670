"""cffi build script: compiles csrc/ into the extension module dataplane._core.

API mode (``set_source``). The cdef is the part of ``csrc/dataplane.h``
between the CDEF markers, so the header is the single contract between C
and Python. DPDK is found with ``pkg-config libdpdk``.

cffi's setuptools hook runs this file with exec, not import: paths are found
through ``__file__``.
"""

import importlib
import os
import shlex
import shutil
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
SOURCES = [
    "dp_error.c",  # the message of the last failed control call
    "dp_eal.c",  # EAL, shared tables, workers start/stop, teardown
    "dp_port.c",  # ports: ethdev, ring, AF_PACKET
    "dp_poll.c",  # which worker polls which (port, rx queue)
    "dp_idle.c",  # an idle worker's opt-in sleep
    "dp_shm.c",  # the fault guard of bursts on a pod's shared memory
    "dp_net.c",  # networks
    "dp_fdb.c",  # forwarding database
    "dp_ftab.c",  # the FDB's table (writer side)
    "dp_tunnel.c",  # VTEP, tunnels to remote VTEPs
    "dp_neigh.c",  # underlay neighbours, ARP, housekeeping
    "dp_capture.c",  # packet capture with pcap filters
    "dp_plane.c",  # planes, shapers (control side of dp_qos.c)
    "dp_counters.c",  # counter blocks and names
    "dp_ring.c",  # frames into / out of ring ports
    "dp_pipeline.c",  # the workers' forwarding loop
    "dp_qos.c",  # plane queues and scheduler
    "dp_guard.c",  # pod ports: anti-spoofing, storm control
    "dp_learn.c",  # MACs learned from the underlay: limits, ageing
    "afpacket.c",  # native AF_PACKET driver
    "dp_gso.c",  # TCP segmentation of GSO super-frames
    "dp_express.c",  # the express lane's control side (libbpf)
]
# the express lane's kernel programs: compiled with clang for the BPF target
# next to the package, loaded by the node service (dataplane/express.py)
BPF_SOURCE = os.path.join(CSRC, "bpf", "express.bpf.c")
BPF_OBJECT = os.path.join(HERE, "dataplane", "express.bpf.o")
#: the same programs without the kernel function that reads a frame's
#: checksum offload state (bpf_cast_to_kern_ctx, Linux 6.2) and without
#: CO-RE: for a kernel that lacks it or its BTF (they carry no TCP to
#: remote VTEPs)
BPF_PLAIN_OBJECT = os.path.join(HERE, "dataplane", "express.plain.bpf.o")


def _pkg_config(*args):
    try:
        out = subprocess.run(
            ["pkg-config", *args, "libdpdk"], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        sys.exit(
            "dataplane build: pkg-config not found; install it "
            "(Debian/Ubuntu: apt-get install pkg-config libdpdk-dev)"
        )
    except subprocess.CalledProcessError:
        sys.exit(
            "dataplane build: DPDK development files not found by "
            "'pkg-config libdpdk'; install them (Debian/Ubuntu: "
            "apt-get install libdpdk-dev, DPDK 22.11 LTS or newer)"
        )
    return shlex.split(out)


#: the oldest DPDK the core builds against (its LTS: the APIs and the
#: ABI 23 libraries it links)
MIN_DPDK = (22, 11)


def _check_dpdk_version():
    """Refuse, naming both, a DPDK older than :data:`MIN_DPDK` (Ubuntu 22.04
    ships 21.11): its headers lack what the core uses, and the compiler's
    errors would not say so."""
    text = _pkg_config("--modversion")[0]
    try:
        have = tuple(int(x) for x in text.split(".")[:2])
    except ValueError:
        return  # a version we cannot read: the compiler tells
    if have < MIN_DPDK:
        sys.exit(
            f"dataplane build: DPDK {text} found by 'pkg-config libdpdk'; the core needs "
            f"{MIN_DPDK[0]}.{MIN_DPDK[1]} LTS or newer (Debian 12's libdpdk-dev is 22.11)"
        )


def _compile_in_parallel():
    """The C files compiled side by side, one per CPU (setuptools compiles
    one extension's sources one after the other: 24 s here, 10 s so). A
    setuptools without the methods this uses keeps its own compile."""
    try:
        importlib.import_module("setuptools")  # first: its distutils is the one cffi gets
        from distutils.ccompiler import CCompiler
    except ImportError:
        return
    serial = CCompiler.compile
    if not all(hasattr(CCompiler, a) for a in ("_setup_compile", "_get_cc_args", "_compile")):
        return

    def compile(
        self,
        sources,
        output_dir=None,
        macros=None,
        include_dirs=None,
        debug=0,
        extra_preargs=None,
        extra_postargs=None,
        depends=None,
    ):
        if len(sources) < 2 or (os.cpu_count() or 1) < 2:
            return serial(
                self,
                sources,
                output_dir,
                macros,
                include_dirs,
                debug,
                extra_preargs,
                extra_postargs,
                depends,
            )
        from concurrent.futures import ThreadPoolExecutor

        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            if obj in build:
                src, ext = build[obj]
                self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(one, objects))  # the first failure raises here
        return objects

    CCompiler.compile = compile


def build_bpf(src=BPF_SOURCE, out=BPF_OBJECT, plain=BPF_PLAIN_OBJECT):
    """Compile the express lane's programs (clang, BPF target, with BTF),
    and their plain build (``plain``: -DEX_PLAIN)."""
    clang = next(
        (c for c in ("clang", "clang-16", "clang-15", "clang-14") if shutil.which(c)), None
    )
    if clang is None:
        sys.exit(
            "dataplane build: clang not found (the express lane's kernel programs); "
            "install it (Debian/Ubuntu: apt-get install clang libbpf-dev)"
        )
    machine = subprocess.run(
        ["gcc", "-print-multiarch"], capture_output=True, text=True
    ).stdout.strip()
    incs = [f"-I/usr/include/{machine}"] if machine else []
    for obj, defs in ((out, []), (plain, ["-DEX_PLAIN"])):
        cmd = [clang, "-O2", "-g", "-target", "bpf", *incs, *defs, "-c", src, "-o", obj]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"dataplane build: {' '.join(cmd)} failed:\n{r.stderr}")


def read_cdef(path=os.path.join(CSRC, "dataplane.h")):
    """The declarations between the CDEF markers of the header."""
    text = open(path).read()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    end = text.index("/* CDEF END */")
    return text[start:end]


#: DP_MARCH in the environment: the CPU the core is compiled for (gcc's
#: ``-march``); ``native`` (the default) is this machine's CPU, fastest here
#: and possibly refused elsewhere (an illegal instruction at the first
#: burst). An image built once for many nodes names a baseline instead:
#: deploy/Containerfile builds for ``x86-64-v2`` (SSE4.2, which Debian's
#: DPDK needs itself: its own ``-march=corei7``).
MARCH = os.environ.get("DP_MARCH", "native")
if not MARCH or not all(c.isalnum() or c in "-_." for c in MARCH):
    sys.exit(
        f"dataplane build: DP_MARCH={MARCH!r} is not a gcc -march name (e.g. native, x86-64-v2)"
    )

#: DP_AB=1 in the environment: an A/B build, for ``python -m bench.abtest``
#: (csrc/dp_internal.h: dp_ab); never a build to run a node with
AB_BUILD = os.environ.get("DP_AB") == "1"


def make_ffi():
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    ffi = FFI()
    ffi.cdef(read_cdef())
    ffi.set_source(
        "dataplane._core",
        '#include "dataplane.h"\n',
        sources=[os.path.join("csrc", s) for s in SOURCES],  # relative to the project root
        include_dirs=[CSRC],
        extra_compile_args=cflags
        + [
            "-O3",
            f"-march={MARCH}",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Wno-unused-parameter",
            "-DALLOW_EXPERIMENTAL_API",
        ]
        + (["-DDP_AB"] if AB_BUILD else []),
        # the ring PMD is a plugin; rte_eth_from_rings needs it at link time
        extra_link_args=libs + ["-lrte_net_ring", "-lpcap", "-lbpf"],
    )
    return ffi


_check_dpdk_version()
build_bpf()
_compile_in_parallel()
ffibuilder = make_ffi()

if __name__ == "__main__":
    # build in place (dataplane/_core*.so) for a checkout without pip
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=".", verbose=True)
