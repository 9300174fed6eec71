"""Dispatch ``python -m bench <name> [args...]`` to ``bench/<name>.py:main(argv)`` (dashes become underscores)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_") and m.name != "common")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m bench <name> [args...]\nbenchmarks: " + ", ".join(available()))
        return 0 if len(sys.argv) >= 2 else 2
    name = sys.argv[1].replace("-", "_")
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            print(f"unknown benchmark {sys.argv[1]!r}; choose one of: {', '.join(available())}", file=sys.stderr)
            return 2
        raise
    return int(module.main(sys.argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
