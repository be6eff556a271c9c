"""The bottom floor: atomic file writes (:mod:`turbonerf.io.files`) and images / videos
(:mod:`turbonerf.io.media`). Imports nothing of turbonerf's above ``errors``."""
