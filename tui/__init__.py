"""DOS Edge: tui package."""
