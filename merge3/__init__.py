"""merge3: evolutionary model merging with IRT-reduced evaluation (extract anchors, estimate, evolve)."""

__version__ = "0.1.0"
