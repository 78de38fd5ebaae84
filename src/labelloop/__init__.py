"""labelloop: continuous improvement of custom image-label models with humans in the loop."""

__version__ = "0.1.0"
