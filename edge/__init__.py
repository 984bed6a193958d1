"""DOS Edge: the daemon runtime (settings, bus, state, dispatcher, storage, MQTT API, CLI)."""

__version__ = "0.1.0"
