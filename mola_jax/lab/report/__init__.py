"""Tables printed from finished studies: python -m mola_jax.lab.report.<name> DIR (segments, techniques,
val_protocol, aot)."""
