"""Where along each ray a method evaluates its field. The contract is in
:mod:`turbonerf.samplers.base` (``sample(rays, density_fn, train)``, ``update``, ``observe``)."""
