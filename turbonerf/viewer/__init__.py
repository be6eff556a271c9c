"""The web viewer (viser): the server and its render scheduling, used by ``turbonerf view``
(:mod:`turbonerf.app.view`) and ``turbonerf train --viewer``.

It receives what to show (render functions over rays, the cameras, the scene bounds) and never
reads a run folder: that is the application layer's job.
"""
