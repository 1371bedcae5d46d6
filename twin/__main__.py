"""``python -m twin ...``: the ``mapperkit twin`` commands without loading the other
``mapperkit`` commands (faster start-up for scripts and process supervisors)."""

from __future__ import annotations

import argparse
import sys

from mapper_sdk.errors import ConfigError, MapperError

from .cli import command


def main(argv: list[str] | None = None) -> int:
    """Run ``mapperkit twin`` with ``argv`` (default: the command line)."""
    parser = argparse.ArgumentParser(prog="python -m")  # subcommand prog: "python -m twin ..."
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command(sub)
    args = parser.parse_args(["twin", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mapperkit: configuration error: {exc}", file=sys.stderr)
        return 2
    except MapperError as exc:
        print(f"mapperkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
