"""Small helpers for network namespaces used as pods by the demo, the
benchmarks and the tests (the node service itself uses dataplane.pods)."""
import subprocess


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class NetnsPod:
    """A network namespace with one veth: eth0 inside, ``host_if`` outside."""

    def __init__(self, name, host_if):
        self.name = name
        self.host_if = host_if

    @classmethod
    def create(cls, name, mac, ip_cidr, host_if=None, mtu=1450):
        host_if = host_if or f"h-{name}"[:15]
        pod = cls(name, host_if)
        try:
            sh("ip", "netns", "add", name)
            sh("ip", "link", "add", host_if, "mtu", str(mtu), "type", "veth",
               "peer", "name", "eth0", "netns", name)
            sh("ip", "-n", name, "link", "set", "eth0", "address", mac, "mtu", str(mtu), "up")
            sh("ip", "-n", name, "addr", "add", ip_cidr, "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "lo", "up")
            # frames cross a userspace switch: they must carry full checksums
            sh("ip", "netns", "exec", name, "ethtool", "-K", "eth0", "tx", "off",
               "tso", "off", "gso", "off", check=False)
            sh("ethtool", "-K", host_if, "tx", "off", "tso", "off", "gso", "off", check=False)
            sh("sysctl", "-qw", f"net.ipv6.conf.{host_if}.disable_ipv6=1", check=False)
            sh("ip", "link", "set", host_if, "up")
        except subprocess.CalledProcessError as e:
            pod.delete()
            raise RuntimeError(f"creating pod namespace {name}: {' '.join(e.cmd)}: "
                               f"{e.stderr.strip()}") from None
        return pod

    def delete(self):
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.name, check=False)


def cleanup_pods(pods):
    for p in pods:
        p.delete()
