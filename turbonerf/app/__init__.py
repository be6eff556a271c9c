"""The application layer: what works on run folders (train, evaluate, sweep, render, bake,
distill, demo, inspect) and ``runs.py``, which owns run folders and decides what renders a run
(:func:`turbonerf.app.runs.renderer_for_run`). The CLI parses arguments and calls this layer
only; nothing in the library folders imports it."""
