"""The machinery every training run shares: the one training loop and its callbacks
(:mod:`turbonerf.engine.loop`), checkpoints (:mod:`turbonerf.engine.checkpoint`) and process
settings for speed on small CPUs (:mod:`turbonerf.engine.runtime`)."""
