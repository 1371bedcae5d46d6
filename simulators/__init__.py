"""Real protocol servers standing in for hardware: Modbus, OPC-UA and BLE peripherals.

Each simulator serves a *profile* of points whose values evolve (constant,
counter, sine, random walk, writable setpoint) and can inject faults. Tests and
the demo start them in-process; ``mapperkit sim <protocol>`` runs one standalone.
"""
