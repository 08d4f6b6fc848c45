"""clipkit: probe CLIP-style models where they fail, and train them to test fixes."""
__version__ = "0.1.0"
