"""Tables printed from finished studies: python -m mola_jax.lab.report.<name> DIR (segments, techniques,
val_protocol, aot, graph: a study's critical path and its wall time on N workers)."""
