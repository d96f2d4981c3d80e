"""Command line: ``python -m invfast demo`` (the main job), ``bench`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="invfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import demo

    demo.add_arguments(sub.add_parser("demo", help="augment real photographs, check and time it"))
    sub.add_parser("info", help="print what was built and loaded")
    from .bench import runner

    bench = sub.add_parser("bench", help="time every op against its reference and peers")
    runner.add_arguments(bench)
    bench.add_argument(
        "--only", default=None, help="comma-separated families (warp, augment, inputs, losses)"
    )
    args = parser.parse_args(argv)

    if args.command == "demo":
        demo.run(args)
    elif args.command == "bench":
        from .bench.families import families

        chosen = families()
        if args.only:
            chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
        runner.run(chosen, args)
    elif args.command == "info":
        from . import backend_info

        print(json.dumps(backend_info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
