"""``python -m bench {encap|decap} [options]``: see bench.throughput."""
import sys

from .throughput import main

if __name__ == "__main__":
    sys.exit(main())
