"""Beamline Warden: the application (config, CLI, service wiring)."""
