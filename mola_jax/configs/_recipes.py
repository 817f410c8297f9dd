"""Backbone recipes the dataset configs share as variants: `--config etth1:cyclenet` is ETTh1 with CycleNet/Linear
on its own recipe, `:cyclenet_mlp` with CycleNet/MLP.

CycleNet's recipe (Lin et al., NeurIPS 2024; its repository's scripts for look-back 96, scripts/CycleNet/
{Linear,MLP}-Input-96/*.sh, and run.py's defaults): the cycle length W of the dataset, Adam at lr 0.01 (Linear) or
0.005 (MLP; traffic 0.002), batch 256 (64 for electricity and traffic), 30 epochs with patience 5, and its lr rule
`type3`: the full lr for four epochs, then 0.8 per epoch; d_model 512, instance normalisation on. Stage 2 (MoLA's
adapters on the frozen CycleNet) is ours: the same batch and the same lr rule, chosen on ETTh1's validation split
(docs/results.md §13).
"""

from __future__ import annotations

from mola_jax import config_lib

VARIANTS = ("cyclenet", "cyclenet_mlp")


def cyclenet(cfg, *, cycle: int, variant: str = "linear", batch_size: int = 256, mlp_lr: float = 0.005):
  """`cfg` on CycleNet with its recipe: cycle length W, variant "linear" or "mlp"."""
  cfg.backbone = "cyclenet"
  cfg.model.cyclenet.update(variant=variant, cycle=cycle)
  lr = 0.01 if variant == "linear" else mlp_lr
  cfg.pretrain.update(lr=lr, batch_size=batch_size, epochs=30, patience=5, lr_decay=0.8, lr_decay_from=5)
  cfg.adapt.update(lr=lr, batch_size=batch_size, epochs=30, patience=5, lr_decay=0.8, lr_decay_from=5)
  return cfg


def apply(cfg, variant: str | None, *, name: str, cycle: int, batch_size: int = 256, mlp_lr: float = 0.005):
  """A dataset config's variant: None (the config as it is), "cyclenet" or "cyclenet_mlp" (CycleNet with W =
  `cycle`); any other name is a ConfigError naming the file's variants."""
  if variant is None:
    return cfg
  if variant not in VARIANTS:
    raise config_lib.ConfigError(f"unknown variant {variant!r} of configs/{name}.py; use one of {', '.join(VARIANTS)}")
  kind = "mlp" if variant == "cyclenet_mlp" else "linear"
  return cyclenet(cfg, cycle=cycle, variant=kind, batch_size=batch_size, mlp_lr=mlp_lr)
