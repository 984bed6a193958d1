"""Shared fixtures: real brokers, databases and simulators (plugins below)."""

from __future__ import annotations

pytest_plugins = ["conftest_mqtt", "conftest_modbus", "conftest_opcua", "conftest_displays"]
