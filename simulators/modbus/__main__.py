"""``python -m simulators.modbus --profile FILE --port N``."""

import sys

from .cli import main

sys.exit(main())
