"""Running the small ip/sysctl commands the demo uses to build its topology."""

import ipaddress
import subprocess


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def same_ip(a, b) -> bool:
    """Whether ``a`` and ``b`` name one IP address (compared as text when
    either is not one)."""
    try:
        return ipaddress.ip_address(str(a)) == ipaddress.ip_address(str(b))
    except ValueError:
        return str(a) == str(b)
