"""DOS Edge: controllers package."""
