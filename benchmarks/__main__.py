"""Runs the benchmarks and prints their tables.

    python -m benchmarks                 # all of them
    python -m benchmarks environment     # some of them

Each benchmark is a module `benchmarks/<name>.py` with a `main() -> None` that prints its table.
"""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = ["environment", "replay", "network", "search", "agent", "selfplay", "scaling", "trainer", "opponents"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[]] + BENCHMARKS, default=[],
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    names = parser.parse_args().names or BENCHMARKS
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"benchmarks.{name}":
                print(f"== {name}: not written yet, skipped")
                continue
            raise
        print(f"== {name}")
        started = time.perf_counter()
        module.main()
        print(f"== {name}: {time.perf_counter() - started:.1f}s\n", flush=True)


if __name__ == "__main__":
    main()
