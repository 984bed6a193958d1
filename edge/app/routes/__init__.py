"""The MQTT API's routes: one module per domain, each a list of `Route`s for its request topics."""
