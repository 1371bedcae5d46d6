"""``mapperkit demo``: simulated devices, the twin and a mapper, running together.

One command starts, with no configuration:

* an MQTT broker: Mosquitto when it is installed, else an embedded one (amqtt);
* the Modbus simulators (an energy meter over TCP, a thermostat with RTU framing
  over TCP), the OPC-UA simulator (a thermostat with a writable setpoint) and
  the BLE simulator (an environmental sensor that notifies its temperature, and
  an LED actuator) on a virtual radio;
* the twin service, loaded with the KubeEdge Device/DeviceModel YAML in
  ``examples/``, and one mapper process serving all three protocols;
* a live view of every twin (state, reported and desired values, deltas, acks).

After a few seconds it sets desired values through :class:`twin.client.TwinClient`
and sends one invalid value, and the view shows the writes converge and the
rejection. ``--duration S`` ends by itself; ``--check`` exits non-zero unless
every device came online, every desired value converged and the invalid one was
rejected (what CI runs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

__all__ = ["command"]


def command(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run simulated Modbus, OPC-UA and BLE devices with the twin and a mapper",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C; 30 with --check)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit non-zero unless every device came online, every desired value converged "
        "and the invalid value was rejected",
    )
    p.add_argument(
        "--broker",
        default="auto",
        help="auto (Mosquitto if installed, else embedded), mosquitto, embedded, or a broker "
        "URL to use instead (default: auto)",
    )
    p.add_argument(
        "--no-view", action="store_true", help="print events as lines instead of the live view"
    )
    p.add_argument("--log-level", default="warning", help="log level of the services")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mapper_sdk.cli import setup_logging

    from .run import DemoOptions, run_demo

    setup_logging(args.log_level)
    duration = args.duration if args.duration is not None else (30.0 if args.check else None)
    options = DemoOptions(
        duration=duration,
        check=args.check,
        broker=args.broker,
        view=not args.no_view and sys.stdout.isatty(),
    )
    try:
        return asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        return 130
