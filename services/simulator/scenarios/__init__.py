"""Scenario YAML files shipped with the simulator (package data)."""
