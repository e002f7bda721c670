"""``python -m bench {encap|decap} [options]``: see bench.throughput;
``python -m bench afpacket [options]``: see bench.afpacket;
``python -m bench planes [options]``: see bench.planes;
``python -m bench sched [options]``: see bench.sched."""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["afpacket"]:
        from .afpacket import main
        sys.exit(main(sys.argv[2:]))
    if sys.argv[1:2] == ["planes"]:
        from .planes import main
        sys.exit(main(sys.argv[2:]))
    if sys.argv[1:2] == ["sched"]:
        from .sched import main
        sys.exit(main(sys.argv[2:]))
    from .throughput import main
    sys.exit(main())
