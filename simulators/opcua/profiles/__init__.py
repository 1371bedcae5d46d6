"""Built-in profiles of the OPC-UA simulator (YAML), shipped as package data."""
