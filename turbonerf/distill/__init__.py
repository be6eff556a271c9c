"""Distillation's library pieces: the teacher's pseudo data (:mod:`turbonerf.distill.pseudo_data`)
and the hard-example pool (:mod:`turbonerf.distill.hard_examples`). The students themselves are
methods (:mod:`turbonerf.methods.r2l`); the distillation command is :mod:`turbonerf.app.distill`."""
