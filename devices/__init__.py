"""DOS Edge: devices package."""
