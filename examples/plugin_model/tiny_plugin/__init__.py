"""A shallownet plugin in its own package: kinds.py registers (light), model.py builds (torch)."""
