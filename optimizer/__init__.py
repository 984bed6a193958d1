"""DOS Edge: optimizer package."""
