"""``attnlab`` command line. Each module in this package (except main/common) adds one
subcommand through ``register(subparsers)``, so a new command is one new file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import ConfigError, InputError


def build_parser() -> argparse.ArgumentParser:
    import attnlab.cli as pkg

    parser = argparse.ArgumentParser(prog="attnlab", description="Efficient-attention language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in ("main", "common") or mod.name.startswith("_"):
            continue
        importlib.import_module(f"attnlab.cli.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.overrides = rest
    try:
        return int(args.func(args) or 0)
    except (ConfigError, InputError, FileNotFoundError) as e:
        print(f"attnlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
