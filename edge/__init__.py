"""DOS Edge: edge package."""
