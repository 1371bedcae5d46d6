"""Profiles shipped with the Modbus simulator (``load_profile("energy_meter")``)."""
