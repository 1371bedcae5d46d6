"""``python -m mapper_sdk.kubeedge``: the KubeEdge-mode mapper without the ``mapperkit`` CLI.

Takes the options of ``mapperkit run --kubeedge`` (``--kubeedge`` itself is
implied): the MQTT options for pushMethod sinks, the management API's
``--http-*`` options and ``--log-level``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ..api import add_api_options
from ..cli import add_broker_options, setup_logging
from ..errors import ConfigError, MapperError
from .runner import add_kubeedge_options, run_kubeedge


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mapper_sdk.kubeedge",
        description="Serve the devices edgecore hands over KubeEdge's DMI.",
    )
    add_broker_options(parser)
    add_api_options(parser)
    add_kubeedge_options(parser)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return asyncio.run(run_kubeedge(args))
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
