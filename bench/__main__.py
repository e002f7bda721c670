"""``python -m bench NAME [options]``: the benchmarks of bench.BENCHMARKS."""

import importlib
import sys

from . import BENCHMARKS

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in BENCHMARKS:
        if name and name not in ("-h", "--help"):
            print(f"bench: no benchmark {name!r}", file=sys.stderr)
        print(
            f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]\n"
            "       python -m bench NAME --help",
            file=sys.stderr,
        )
        sys.exit(0 if name in ("-h", "--help") else 2)
    module, takes_name = BENCHMARKS[name]
    main = importlib.import_module(f".{module}", __package__).main
    sys.exit(main(sys.argv[1:] if takes_name else sys.argv[2:]))
