"""Backbone recipes the dataset configs share as variants: `--config etth1:cyclenet` is ETTh1 with CycleNet/Linear
on its own recipe, `:cyclenet_mlp` with CycleNet/MLP, `:olinear` with OLinear on its own recipe.

CycleNet's recipe (Lin et al., NeurIPS 2024; its repository's scripts for look-back 96, scripts/CycleNet/
{Linear,MLP}-Input-96/*.sh, and run.py's defaults): the cycle length W of the dataset, Adam at lr 0.01 (Linear) or
0.005 (MLP; traffic 0.002), batch 256 (64 for electricity and traffic), 30 epochs with patience 5, and its lr rule
`type3`: the full lr for four epochs, then 0.8 per epoch; d_model 512, instance normalisation on. Stage 2 (MoLA's
adapters on the frozen CycleNet) is ours: the same batch and the same lr rule, chosen on ETTh1's validation split
(docs/results.md §13).
"""

from __future__ import annotations

import dataclasses

from mola_jax import config_lib

VARIANTS = ("cyclenet", "cyclenet_mlp", "olinear")


# OLinear's recipe (Yue et al., NeurIPS 2025; its repository's scripts/OLinear/*.sh at look-back 96, ILI at 36):
# sizes, dropout, lr, batch, epochs, patience and lr rule per dataset (type1: halve from epoch 3; type3: 0.9 from
# epoch 5), its step-weighted L1 loss. Where a script changes a value at one horizon (ETTh1 lr 1e-4 at T = 720,
# ETTm2 dropout 0.3 at 720, exchange d_model and batch) the value of the other horizons is kept here, and
# exchange_rate trains 10 epochs where the script trains 1 (docs/results.md §13). Stage 2: MoLA's recipe (lr 1e-3,
# 10 epochs, patience 3, type1) on the same batch and loss.
@dataclasses.dataclass(frozen=True)
class OLinearRecipe:
  d_model: int  # d_ff = d_model in every script
  e_layers: int
  dropout: float
  lr: float
  batch_size: int
  epochs: int
  patience: int
  lr_decay: float  # type1: 0.5 from epoch 3; type3: 0.9 from epoch 5
  lr_decay_from: int


OLINEAR = {
  "ETTh1": OLinearRecipe(512, 2, 0.2, 5e-4, 32, 30, 8, 0.5, 3),
  "ETTm2": OLinearRecipe(512, 1, 0.2, 1e-4, 32, 30, 8, 0.5, 3),
  "weather": OLinearRecipe(512, 2, 0.0, 1e-3, 32, 30, 5, 0.9, 5),
  "exchange_rate": OLinearRecipe(256, 2, 0.0, 1e-4, 32, 10, 8, 0.5, 3),
  "national_illness": OLinearRecipe(256, 2, 0.0, 1e-4, 4, 50, 10, 0.9, 5),
}


def cyclenet(cfg, *, cycle: int, variant: str = "linear", batch_size: int = 256, mlp_lr: float = 0.005):
  """`cfg` on CycleNet with its recipe: cycle length W, variant "linear" or "mlp"."""
  cfg.backbone = "cyclenet"
  cfg.model.cyclenet.update(variant=variant, cycle=cycle)
  lr = 0.01 if variant == "linear" else mlp_lr
  cfg.pretrain.update(lr=lr, batch_size=batch_size, epochs=30, patience=5, lr_decay=0.8, lr_decay_from=5)
  cfg.adapt.update(lr=lr, batch_size=batch_size, epochs=30, patience=5, lr_decay=0.8, lr_decay_from=5)
  return cfg


def olinear(cfg, r: OLinearRecipe):
  """`cfg` on OLinear with its recipe `r` for the dataset (OLINEAR)."""
  cfg.backbone = "olinear"
  cfg.model.olinear.update(d_model=r.d_model, d_ff=r.d_model, e_layers=r.e_layers, dropout=r.dropout)
  cfg.pretrain.update(lr=r.lr, batch_size=r.batch_size, epochs=r.epochs, patience=r.patience, lr_decay=r.lr_decay,
                      lr_decay_from=r.lr_decay_from, loss="weighted_l1")  # fmt: skip
  cfg.adapt.update(lr=1e-3, batch_size=r.batch_size, epochs=10, patience=3, lr_decay=0.5, lr_decay_from=3,
                   loss="weighted_l1")  # fmt: skip
  return cfg


def variants(dataset: str) -> tuple[str, ...]:
  """The recipe variants a dataset's config offers: CycleNet's two, and OLinear's where it has a recipe."""
  return VARIANTS if dataset in OLINEAR else VARIANTS[:2]


def apply(cfg, variant: str | None, *, name: str, cycle: int, batch_size: int = 256, mlp_lr: float = 0.005):
  """A dataset config's variant: None (the config as it is), "cyclenet" or "cyclenet_mlp" (CycleNet with W =
  `cycle`), "olinear" where OLINEAR has the dataset's recipe; any other name is a ConfigError naming the file's
  variants."""
  if variant is None:
    return cfg
  offered = variants(cfg.data.name)
  if variant not in offered:
    raise config_lib.ConfigError(f"unknown variant {variant!r} of configs/{name}.py; use one of {', '.join(offered)}")
  if variant == "olinear":
    return olinear(cfg, OLINEAR[cfg.data.name])
  kind = "mlp" if variant == "cyclenet_mlp" else "linear"
  return cyclenet(cfg, cycle=cycle, variant=kind, batch_size=batch_size, mlp_lr=mlp_lr)
