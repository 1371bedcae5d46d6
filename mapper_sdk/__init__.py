"""Mapperkit SDK."""
