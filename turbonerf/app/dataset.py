"""``turbonerf dataset objects``: the generated multi-object set (:mod:`turbonerf.data.objects`)."""

from __future__ import annotations

from tqdm.auto import tqdm

from turbonerf.data.objects import ObjectSetOptions, generate_objects

__all__ = ["ObjectSetOptions", "make_object_set"]


def make_object_set(opts: ObjectSetOptions, progress: bool = True) -> dict:
    """Generate the set with a progress bar; returns its ``multiscene.json`` content."""
    with tqdm(total=opts.objects, desc="render objects", unit="object", disable=not progress) as bar:
        return generate_objects(opts, lambda done, total: bar.update(1))
