"""shallownet: gradient descent versus gradient flow in shallow linear networks."""

__version__ = "0.1.0"
