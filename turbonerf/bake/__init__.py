"""Baking a trained method into a NerfTree (EfficientNeRF) and rendering it without a network.

- :mod:`turbonerf.bake.nerftree`: the data structure, :func:`bake`, save / load.
- :mod:`turbonerf.bake.fields`: ``baking_fields(model)``, what each method hands to the baker.
- :mod:`turbonerf.bake.render`: ``render_tree`` and ``TreeRenderer`` over the numba, torch and
  numpy marchers.
"""
