"""Built-in simulator profiles (YAML files shipped as package data)."""
