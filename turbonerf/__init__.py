"""turbonerf: train neural radiance fields and make them render fast."""

__version__ = "0.1.0"
