"""DOS Edge: simulators package."""
