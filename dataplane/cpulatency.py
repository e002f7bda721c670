"""The node's CPU latency request (``cpu_latency_us``), held while the
service runs.

A pod's frame through the core crosses CPUs twice: the worker picks it up
on its own CPU, and the receiving pod's process is woken on another. When
that CPU is idle its wake-up costs whatever its idle state costs to leave:
on bare metal a deep C-state, on a virtual machine a halted vCPU that the
host must schedule again (several µs, more on a busy host). The kernel's
bridge never pays it for a ping - the sender's own system call carries the
frame to the receiver and back - so it is one place where a userspace
dataplane loses latency to the kernel.

The kernel's CPU latency QoS is the standard remedy (what tuned's
latency-performance profile and cyclictest use): while a process holds
``/dev/cpu_dma_latency`` open with a value written, every CPU's idle
governor keeps out of idle states whose exit latency is above that many
µs; 0 keeps idle CPUs polling. The request is the kernel's to drop when the
file closes - at ``release()``, and also when the process dies - so nothing
outlives the service. The kernel applies the lowest request of all holders.
"""

import glob
import os
import struct
from typing import List, Optional, Tuple

from .errors import DataplaneError

DEVICE = "/dev/cpu_dma_latency"
SYSFS_CPU = "/sys/devices/system/cpu"
MAX_US = 2_000_000_000  # the kernel's "no constraint" (PM_QOS_CPU_LATENCY_DEFAULT_VALUE)


def hold_problem(device: str = DEVICE) -> Optional[str]:
    """Why the service could not hold a request here (``dataplane check``:
    what ``run`` would refuse), or None. The device opened and closed at
    once: a request opened holds the kernel's default, no constraint,
    until a value is written."""
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return _cannot_hold(device, e)
    return None


def _cannot_hold(device: str, e: OSError) -> str:
    return (
        f"cpu_latency_us: cannot hold a CPU latency request: {device}: "
        f"{e.strerror or e} (the service needs root and the device; "
        "leave cpu_latency_us out to run without)"
    )


class CpuLatencyRequest:
    """A held request of ``us`` µs; ``limit_us()`` reads what the kernel
    applies now (the lowest request of every holder)."""

    def __init__(self, us: int, device: str = DEVICE):
        self.us = us
        self.device = device
        try:
            self._fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DataplaneError(_cannot_hold(device, e)) from None
        try:
            os.write(self._fd, struct.pack("=i", us))
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            raise DataplaneError(
                f"cpu_latency_us: {device} refused {us}: {e.strerror or e}"
            ) from None

    def limit_us(self) -> Optional[int]:
        """The latency limit the kernel applies now, in µs (None once released)."""
        if self._fd is None:
            return None
        return struct.unpack("=i", os.pread(self._fd, 4, 0))[0]

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def current_limit_us(device: str = DEVICE) -> int:
    """The limit the kernel applies now (MAX_US: no request anywhere).
    Opening the device adds a request without a constraint for as long as
    it is open, which changes nothing."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return struct.unpack("=i", os.read(fd, 4))[0]
    finally:
        os.close(fd)


def idle_states(sysfs: str = SYSFS_CPU) -> Tuple[str, List[Tuple[str, int]]]:
    """The kernel's cpuidle driver ("none" without one) and the idle states
    of the first CPU that has any: (name, exit latency in µs), shallowest
    first."""
    try:
        with open(os.path.join(sysfs, "cpuidle", "current_driver")) as f:
            driver = f.read().strip() or "none"
    except OSError:
        driver = "none"
    for cpu in sorted(glob.glob(os.path.join(sysfs, "cpu[0-9]*"))):
        states = []
        for d in sorted(
            glob.glob(os.path.join(cpu, "cpuidle", "state[0-9]*")),
            key=lambda p: int(p.rsplit("state", 1)[1]),
        ):
            with open(os.path.join(d, "name")) as f:
                name = f.read().strip()
            with open(os.path.join(d, "latency")) as f:
                states.append((name, int(f.read())))
        if states:
            return driver, states
    return driver, []


def no_effect(us: int, sysfs: str = SYSFS_CPU) -> Optional[str]:
    """Why a request of ``us`` µs changes nothing on this kernel, or None
    when it keeps idle CPUs out of some idle state."""
    driver, states = idle_states(sysfs)
    if not states:
        return (
            f"this kernel has no cpuidle states (cpuidle driver {driver}): an idle CPU "
            "takes the architecture's default idle (a halt) whatever the request"
        )
    if all(lat <= us for _, lat in states):
        slowest = max(lat for _, lat in states)
        return (
            f"every idle state of the cpuidle driver {driver} wakes within "
            f"{slowest} us, so a request of {us} us forbids none"
        )
    return None
