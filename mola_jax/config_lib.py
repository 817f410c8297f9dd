"""The run config: every key, its default and why, in one place; `validate` checks what can be checked before any
array, and `upgrade` brings a run's saved config from before a key moved or existed to today's keys.

Dataset configs in `configs/` start from `default()` and change only what differs. The command line overrides
any key with the ml_collections grammar, e.g. `--config.horizon=192 --config.technique.mola.rank=4`. The studies
(mola_jax/lab: reproduce, sweep, bench, scaling, aot) have settings of their own (`--study.*`), none of them here.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

from mola_jax import data
from mola_jax.errors import ConfigError
from mola_jax.models import BACKBONES
from mola_jax.models.techniques import TECHNIQUES
from mola_jax.steps import LOSSES

METHODS = tuple(TECHNIQUES)  # mtf: the direct T-step baseline; every other method is stage 2 on a frozen stage 1
STAGES = ("all", "pretrain", "adapt")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")

# The method's two segment-length options per horizon (docs/method.md §8). The first is the default S; the
# reproduction picks between them on validation. Keys are strings because ConfigDict keys must be.
SEGMENT_OPTIONS = {"96": (24, 32), "192": (48, 64), "336": (84, 42), "720": (180, 90)}


def default() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.method = "mola"  # a key of METHODS: mola (shared experts, per-segment mixtures), lora, mtf (direct T-step), ...
  cfg.stage = "all"  # all: stage 1 then stage 2; pretrain or adapt alone. mtf has one stage and ignores this.
  cfg.horizon = 96  # T, the forecast length that is scored
  cfg.segment_len = config_dict.placeholder(int)  # S; unset -> the first of segment_options[horizon]
  cfg.segment_options = dict(SEGMENT_OPTIONS)  # candidate S per horizon
  cfg.seed = 2023  # the official scripts' seed; report more seeds for anything that matters
  cfg.backbone = "itransformer"
  # Workdir of a stage-1 run to adapt (stage=adapt); unset -> this run's own workdir.
  cfg.init_from = config_dict.placeholder(str)

  cfg.data = ml_collections.ConfigDict()
  cfg.data.name = "ETTh1"  # a key of mola_jax.data.DATASETS, or "synthetic"
  # Your own table: a wide CSV (a `date` column, one column per series) or a long one (unique_id, ds, y and
  # covariate columns, one row per series and time): 7:1:2 split. docs/your_data.md.
  cfg.data.path = config_dict.placeholder(str)
  cfg.data.seq_len = 96  # look-back L
  cfg.data.label_len = 48  # known decoder steps, read only by encoder-decoder backbones
  # Time features: a code ("h", "t", "d", "w", "m", ...) or a pandas frequency ("15min", "W-TUE"); "auto": the
  # dates' own frequency. Unset: the field's hourly four for a benchmark file (the field's scripts never set it, so
  # published numbers compare), the dates' own frequency for any other table.
  cfg.data.freq = config_dict.placeholder(str)
  # M: every channel in and out; S: the target alone; MS: every channel in, the target out (scored on it alone).
  cfg.data.features = "M"
  # The target column (a long table: a unique_id); unset: OT if the table has it, else its last series.
  cfg.data.target = config_dict.placeholder(str)
  # Columns known over the forecast horizon (a holiday flag, a price schedule): inputs only, never forecast or
  # scored; they follow the time features as marks, in the look-back and the horizon. predict() needs their values
  # for the horizon rows.
  cfg.data.future_covariates = ()
  # Gaps in a table (empty cells; rows missing from its regular time grid): "error" refuses them, naming where;
  # "interpolate" (linear) or "ffill" (the last value) fill them. Filled target values are kept out of the training
  # loss and of every score. Benchmark files have no gaps and are read by position, as the field reads them.
  cfg.data.missing = "error"
  cfg.data.parity_quirk = False  # reproduce the MoLA fork's odd-row train start on 7:1:2 datasets
  cfg.data.eval_batch_size = 256  # padded and masked, so it changes speed only, never the score
  # The validation score that early stopping and model selection read (mola_jax/metrics.py `validate`): "full",
  # every window in order as one global mean; or "official", the official code's shuffled loader (the epoch's
  # seed, the training batch size) with the last partial batch dropped and the mean of per-batch means. The test
  # pass is the same under both.
  cfg.data.val_protocol = "full"
  # A panel (docs/your_data.md "Panels"): a long table's series, each with its own dates, trained as one global
  # channel-independent model (patchtst, dlinear, cyclenet, olinear), each split in time on its own (the last T steps
  # for test, the T before them for validation) and scaled on its own training part. A long table of series with
  # different spans is a panel anyway; True makes aligned series (or a wide table's columns) a panel too, instead of
  # the channels of one multivariate model.
  cfg.data.panel = False
  # A panel's series shorter than seq_len + 3 * horizon: "error" refuses the table, naming them; "skip" leaves them
  # out (counted in the log and results.json).
  cfg.data.short_series = "error"
  # Where a panel's training windows are gathered: "device" (the panel on the device, batches gathered there from
  # window indices), "host" (a grain pipeline gathers them on the host, with prefetch: a panel larger than the
  # device's memory), "auto" (device when the panel takes at most a quarter of the device's memory). Speed and
  # memory only: both give the same results. A wide table always lives on the device.
  cfg.data.placement = "auto"
  cfg.data.synthetic_rows = 4000  # synthetic data only
  cfg.data.synthetic_channels = 7

  # One sub-config per backbone, its defaults declared by the backbone class (models/*.py, DEFAULTS); a backbone
  # receives only its own (cfg.model[cfg.backbone]). The encoder-decoder backbones' label_len follows data.label_len.
  cfg.model = ml_collections.ConfigDict()
  for name, cls in BACKBONES.items():
    cfg.model[name] = ml_collections.ConfigDict(cls.DEFAULTS)
    if "label_len" in cls.DEFAULTS:
      cfg.model[name].label_len = cfg.data.get_ref("label_len")

  # Stage 1 (and mtf): an ordinary direct forecaster (docs/method.md §8).
  cfg.pretrain = ml_collections.ConfigDict()
  cfg.pretrain.lr = 5e-4
  cfg.pretrain.lr_decay = 0.5  # per epoch from epoch lr_decay_from (TSLib's type1); 1.0 = constant
  cfg.pretrain.lr_decay_from = 3  # the first epoch at a decayed lr: 3 in TSLib's type1, 5 in CycleNet's type3
  # The training loss: "mse" (the field's); "weighted_l1", OLinear's |error| (t + 1)^-1/2 over the horizon's steps.
  # Validation, selection and every score stay MSE.
  cfg.pretrain.loss = "mse"
  cfg.pretrain.epochs = 5
  cfg.pretrain.patience = 2
  cfg.pretrain.batch_size = 32

  # Stage 2: adapters on the frozen backbone.
  cfg.adapt = ml_collections.ConfigDict()
  cfg.adapt.lr = 1e-3
  cfg.adapt.lr_decay = 0.5  # the stage-2 schedule; 1.0 = constant (a per-dataset choice, docs/results.md §11)
  cfg.adapt.lr_decay_from = 3
  cfg.adapt.loss = "mse"
  cfg.adapt.epochs = 10
  cfg.adapt.patience = 3  # per segment (docs/method.md §7)
  # any_improved: keep the whole state of the last epoch in which any segment improved (the official rule);
  # per_segment: each segment keeps the adapter deltas of its own best validation epoch (docs/method.md §13 option).
  cfg.adapt.selection = "any_improved"
  cfg.adapt.batch_size = 32
  # True: a step computes only the segments that have not early-stopped (as the official code, which runs no pass
  # for a stopped segment); False: every step computes all K and masks the stopped ones out of the loss. The same
  # numbers to float rounding, except that a BatchNorm's running statistics then see the stopped segments too.
  cfg.adapt.skip_stopped = True

  # Layer groups that get the method's banks, e.g. ("ffn", "attn"); unset -> the backbone's own ADAPTED_GROUPS
  # (encoder FFN for iTransformer/PatchTST/Informer, encoder + decoder FFN for the Transformer, the linear maps for
  # DLinear; IA3: attention and FFN).
  cfg.adapt.targets = config_dict.placeholder(tuple)
  # Share the dropout masks of the pre-adapter prefix across segments in training. Off: each segment draws its
  # own, as the official K separate passes do (docs/method.md §12). Eval always shares the prefix (it is exact there).
  cfg.adapt.share_prefix_dropout = False
  # Every technique starts at the frozen model unless official_init: the official code's initialisation (random
  # adapter up-projections, N(0, 1) Fourier coefficients, fresh per-segment heads).
  cfg.adapt.official_init = False
  # Every segment also gets its own full-rank change of the head (zero at the start: stage 2 still starts at the
  # copied stage-1 forecast), added to the method's own bank there (models/stage2_options.py; docs/method.md §13).
  cfg.adapt.segment_heads = False

  # One sub-config per method, its defaults declared by the method's registry entry (models/techniques.py); a
  # model receives only its own method's (cfg.technique[cfg.method]). MoLA: num_experts P (the scripts pass 6),
  # rank r, a_std (A ~ N(0, a_std^2), B = 0, no alpha/r scaling), factored (how a bank applies its delta:
  # unset -> per layer by cost; speed only). FourierFT: n coefficients, scale 150 (its paper's; the official MoLA
  # code: 1). Adapters: dim, the bottleneck width (unset -> d_model / 4).
  cfg.technique = ml_collections.ConfigDict()
  for name, technique in TECHNIQUES.items():
    cfg.technique[name] = ml_collections.ConfigDict(technique.settings())

  # JAX's persistent compilation cache in the user cache directory (mola_jax/runtime.py): a rerun or the next run
  # of a study loads its compiled steps instead of compiling them again. Speed only; False turns it off.
  cfg.compile_cache = True

  # Resume checkpoints within an epoch, every so many seconds of training (and steps, if set); one is always written
  # at each epoch's end. A kill loses at most that much work; each save costs the host a few tens of milliseconds.
  cfg.checkpoint_every_seconds = 60.0
  cfg.checkpoint_every_steps = 0  # 0: by time only
  # Prediction intervals (mola_jax/evaluation.py): split-conformal levels calibrated on the validation windows;
  # () for none. results.json reports their coverage on the test split; forecasts get lower/upper columns.
  cfg.intervals = (0.8, 0.95)
  cfg.tensorboard = True  # TensorBoard summaries in <workdir>/tb beside metrics.jsonl
  cfg.profile_steps = 0  # N > 0: a jax.profiler trace of N steady-state train steps per stage in <workdir>/profile
  # Train steps per program call: an epoch runs on the device in chunks of this many steps, each one jitted lax.scan
  # (mola_jax/fit.py); the host dispatches, reads losses and may save a resume point only between chunks. Speed
  # only (the same steps, to float rounding); 1 = a dispatch per step. 128: the host's share of a step under an
  # 8-device mesh is then 0.14 ms (docs/performance.md), and an ETTh1 epoch is 3 calls.
  cfg.chunk_steps = 128

  # Device mesh and sharding (mola_jax/sharding.py; recipes in launch/README.md).
  cfg.mesh = ml_collections.ConfigDict()
  # Unset: no mesh, one device, the plain jit path. Else one size per name, -1 = the rest of the devices:
  # (-1, 1) data parallel over every device; (4, 2) 4-way data x 2-way model.
  cfg.mesh.shape = config_dict.placeholder(tuple)
  cfg.mesh.names = ("data", "model")  # mesh axes; the rules tables map the modules' logical axes onto them
  # A key of sharding.RULES: data_parallel | segment (K over model) | expert (P over model) | variate (the token
  # axis over model: iTransformer's variates, for wide data such as traffic) | tensor (d_ff and heads over model).
  cfg.mesh.rules = "data_parallel"
  # Multi-host: jax.distributed.initialize() first thing (also MOLA_DISTRIBUTED=1); only process 0 writes logs.
  cfg.distributed = False

  # Compute dtype of the train and eval steps' forward and backward pass: "float32", or "bfloat16" (for GPU/TPU)
  # with float32 master weights, optimizer state and loss (steps.caster). Its accuracy effect: mola_jax.bench.
  cfg.compute_dtype = "float32"
  # Precision of float32 matmuls and convolutions on an accelerator (jax.default_matmul_precision): "float32", what
  # the official PyTorch code computes (and all a CPU does); "tensorfloat32" or "bfloat16" (GPU/TPU: faster, a
  # few mantissa bits fewer); "default", the platform's own choice (bfloat16 passes on a TPU, TF32 on recent GPUs).
  cfg.matmul_precision = "float32"

  return cfg


# Keys that moved: where a saved config's `mola.*` key lives now. The technique settings go to the saved run's own
# method (cfg.technique.<method>), under their new names; the three stage-2 settings to cfg.adapt.
_MOVED_TO_ADAPT = ("targets", "share_prefix_dropout", "official_init")
_TECHNIQUE_NAMES = {"fourier_n": "n", "fourier_scale": "scale", "adapter_dim": "dim"}
_STUDY_KEYS = ("bench", "reproduce", "sweep")  # the studies' settings, now their own (mola_jax/lab)
_DROPPED = _STUDY_KEYS + ("log_every",)  # log_every: the progress bar now moves at chunk ends


def upgrade(saved: dict) -> dict:
  """A run's saved config (config.json) in today's keys: `mola.*` moved to `adapt.*` and to the run's own method's
  `technique.<method>.*`; the studies' keys dropped. The one place an old config is brought up to date (loading a
  run, comparing configs for resume and reuse); a config of today's keys comes back unchanged."""
  out = copy.deepcopy(saved)
  for key in _DROPPED:
    out.pop(key, None)
  old = out.pop("mola", None)
  if old is None:
    return out
  method = out.get("method", "mola")
  for key in _MOVED_TO_ADAPT:
    if key in old:
      out.setdefault("adapt", {})[key] = old.pop(key)
  own = TECHNIQUES[method].settings() if method in TECHNIQUES else {}
  mine = out.setdefault("technique", {}).setdefault(method, {})
  for key, value in old.items():
    new = _TECHNIQUE_NAMES.get(key, key)
    if new in own:
      mine[new] = value
  return out


def from_json(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config.json -> its ConfigDict, upgraded, on top of today's defaults: a run saved before a key
  existed loads with that key's default."""
  cfg = default()

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        with node.ignore_type():
          node[key] = tuple(value) if isinstance(value, list) else value

  with cfg.unlocked():
    merge(cfg, upgrade(saved))
  return cfg


def config_file(name: str, configs_dir: pathlib.Path | None = None) -> tuple[pathlib.Path, str]:
  """-> (the config file, its variant) of a built-in config's name ("etth1", "etth1:fixed_s") or a config file's
  path (with an optional ":VARIANT"), as `--config` takes them; ConfigError for neither."""
  from mola_jax import configs

  path, _, variant = str(name).partition(":")
  file = pathlib.Path(path) if path.endswith(".py") or "/" in path else (configs_dir or configs.DIR) / f"{path}.py"
  if not file.is_file():
    raise ConfigError(
      f"unknown config {path!r}; give a config file's path or a built-in name: {', '.join(configs.names())}"
    )
  return file, variant


def load(name: str, configs_dir: pathlib.Path | None = None) -> ml_collections.ConfigDict:
  """A config by built-in name or by a config file's path (config_file)."""
  file, variant = config_file(name, configs_dir)
  spec = importlib.util.spec_from_file_location(f"mola_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def with_values(cfg, values: dict) -> ml_collections.ConfigDict:
  """A copy of `cfg` with dotted keys set ({"technique.mola.rank": 4}); a key the config lacks is a ConfigError."""
  out = copy.deepcopy(cfg)
  for dotted, value in values.items():
    *parents, last = dotted.split(".")
    node = out
    for name in parents:
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(f"config key {dotted!r}: the config has no {name!r}")
      node = node[name]
    if last not in node:
      raise ConfigError(f"config key {dotted!r}: the config has no {last!r}")
    with node.ignore_type():
      node[last] = value
  return out


def segment_len(cfg) -> int:
  """S for stage 1 and stage 2; mtf predicts the whole horizon in one segment."""
  if not TECHNIQUES[cfg.method].two_stage:
    return cfg.horizon
  if cfg.segment_len is not None:
    return cfg.segment_len
  options = cfg.segment_options.get(str(cfg.horizon))
  if not options:
    raise ConfigError(
      f"no default segment length for horizon {cfg.horizon}; set --config.segment_len=S with S dividing it"
    )
  return options[0]


def validate(cfg) -> None:
  """Raise ConfigError for anything wrong in the config's own values. The names that only the models or the
  sharding module know (backbones, layer groups, mesh rules) are checked there (plan.make runs every check)."""
  if cfg.method not in METHODS:
    raise ConfigError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}")
  if cfg.stage not in STAGES:
    raise ConfigError(f"unknown stage {cfg.stage!r}; use one of {', '.join(STAGES)}")
  if cfg.horizon <= 0:
    raise ConfigError(f"horizon must be positive, got {cfg.horizon}")
  s = segment_len(cfg)
  if s <= 0 or cfg.horizon % s:
    raise ConfigError(f"horizon {cfg.horizon} is not divisible by segment_len {s}; pick S with horizon % S == 0")
  if cfg.chunk_steps < 1:
    raise ConfigError(f"chunk_steps must be at least 1, got {cfg.chunk_steps}")
  if cfg.data.val_protocol not in ("full", "official"):
    raise ConfigError(f"unknown data.val_protocol {cfg.data.val_protocol!r}; use full or official")
  if cfg.data.features not in data.FEATURES:
    raise ConfigError(f"unknown data.features {cfg.data.features!r}; use M (all in and out), S (the target alone) "
                      "or MS (all in, the target out)")  # fmt: skip
  if cfg.data.missing not in data.MISSING:
    raise ConfigError(f"unknown data.missing {cfg.data.missing!r}; use {', '.join(data.MISSING)}")
  if isinstance(cfg.data.future_covariates, str) or not all(isinstance(c, str) for c in cfg.data.future_covariates):
    raise ConfigError(
      f"data.future_covariates must be a tuple of column names, e.g. \"('holiday',)\"; got "
      f"{cfg.data.future_covariates!r}"
    )
  if cfg.data.short_series not in data.SHORT_SERIES:
    raise ConfigError(f"unknown data.short_series {cfg.data.short_series!r}; use {' or '.join(data.SHORT_SERIES)}")
  if cfg.data.placement not in data.PLACEMENTS:
    raise ConfigError(f"unknown data.placement {cfg.data.placement!r}; use {', '.join(data.PLACEMENTS)}")
  if cfg.data.seq_len <= 0:
    raise ConfigError(f"data.seq_len must be positive, got {cfg.data.seq_len}")
  for key in ("pretrain", "adapt"):
    sub = cfg[key]
    if sub.batch_size <= 0 or sub.epochs <= 0 or sub.lr <= 0:
      raise ConfigError(f"{key}.batch_size, {key}.epochs and {key}.lr must be positive")
    if not 0.0 < sub.lr_decay <= 1.0:
      raise ConfigError(f"{key}.lr_decay must lie in (0, 1] (0.5 halves the lr each epoch, 1 keeps it): {sub.lr_decay}")
    if sub.loss not in LOSSES:
      raise ConfigError(f"unknown {key}.loss {sub.loss!r}; use one of {', '.join(LOSSES)}")
    if sub.lr_decay_from < 2:
      raise ConfigError(f"{key}.lr_decay_from is the first epoch at a decayed lr, at least 2: {sub.lr_decay_from}")
  if cfg.matmul_precision not in MATMUL_PRECISIONS:
    raise ConfigError(f"unknown matmul_precision {cfg.matmul_precision!r}; use one of {', '.join(MATMUL_PRECISIONS)}")
  if cfg.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"unknown compute_dtype {cfg.compute_dtype!r}; use 'float32' or 'bfloat16'")
  if any(not 0.0 < level < 1.0 for level in cfg.intervals):
    raise ConfigError(
      f"intervals {tuple(cfg.intervals)}: each level must lie strictly between 0 and 1, e.g. (0.8, 0.95)"
    )
  if cfg.adapt.selection not in ("any_improved", "per_segment"):
    raise ConfigError(f"unknown adapt.selection {cfg.adapt.selection!r}; use 'any_improved' or 'per_segment'")
