"""Running the small ip/sysctl commands the demo uses to build its topology."""

import subprocess


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)
