"""One file per method (its Config dataclass and its model), the contract they fulfil
(:mod:`turbonerf.methods.base`) and the registry of names (:mod:`turbonerf.methods.registry`)."""
