"""Packaged configuration files (data, not code): default.yaml and backend presets."""
