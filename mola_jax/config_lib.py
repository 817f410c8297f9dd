"""Every config key, its default and why, in one place; `validate` checks what can be checked before any array.

Dataset configs in `configs/` start from `default()` and change only what differs. The command line overrides
any key with the ml_collections grammar, e.g. `--config.horizon=192 --config.mola.rank=4`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from mola_jax.errors import ConfigError

# mtf: the direct T-step baseline; every other method is stage 2 on a frozen stage-1 model (models/tuners.py).
METHODS = ("mola", "lora", "mtf", "ia3", "moia3", "adapter", "moadapter", "fourier", "mofourier", "lora_heads")
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
  cfg.data.path = config_dict.placeholder(str)  # a custom CSV (date column, OT last): 7:1:2 split
  cfg.data.seq_len = 96  # look-back L
  cfg.data.label_len = 48  # known decoder steps, read only by encoder-decoder backbones
  cfg.data.freq = "h"  # time features; the field's scripts never set it, so every dataset gets the hourly four
  cfg.data.features = "M"  # all channels in and out; the only mode implemented
  cfg.data.parity_quirk = False  # reproduce the MoLA fork's odd-row train start on 7:1:2 datasets
  cfg.data.eval_batch_size = 256  # padded and masked, so it changes speed only, never the score
  # The validation score that early stopping and model selection read (mola_jax/metrics.py `validate`): "full",
  # every window in order as one global mean; or "official", the official code's shuffled loader (the epoch's
  # seed, the training batch size) with the last partial batch dropped and the mean of per-batch means. The test
  # pass is the same under both.
  cfg.data.val_protocol = "full"
  cfg.data.synthetic_rows = 4000  # synthetic data only
  cfg.data.synthetic_channels = 7

  # One sub-config per backbone; a backbone receives only its own (cfg.model[cfg.backbone]).
  cfg.model = ml_collections.ConfigDict()
  cfg.model.itransformer = ml_collections.ConfigDict()  # official ETTh1 sizes (docs/method.md §8)
  cfg.model.itransformer.d_model = 128
  cfg.model.itransformer.d_ff = 128
  cfg.model.itransformer.n_heads = 8
  cfg.model.itransformer.e_layers = 2
  cfg.model.itransformer.dropout = 0.1
  # The other backbones take TSLib's ETTh1 settings (scripts/long_term_forecast/ETT_script/*_ETTh1.sh on top of
  # run.py's defaults: d_model 512, d_ff 2048, dropout 0.1, exact GELU, embed timeF). Their parameter counts
  # at these sizes are asserted in tests/test_backbones.py.
  cfg.model.patchtst = ml_collections.ConfigDict()
  cfg.model.patchtst.d_model = 512
  cfg.model.patchtst.d_ff = 2048
  cfg.model.patchtst.n_heads = 2  # the T = 96 script; its 192/336/720 runs pass 8/8/16
  cfg.model.patchtst.e_layers = 1
  cfg.model.patchtst.dropout = 0.1  # also the flatten head's dropout
  cfg.model.patchtst.patch_len = 16
  cfg.model.patchtst.stride = 8  # also the end padding (replicated last value)
  cfg.model.dlinear = ml_collections.ConfigDict()
  cfg.model.dlinear.moving_avg = 25  # odd kernel of the trend moving average
  cfg.model.dlinear.individual = False  # True: one pair of linear maps per channel
  cfg.model.transformer = ml_collections.ConfigDict()
  cfg.model.transformer.d_model = 512
  cfg.model.transformer.d_ff = 2048
  cfg.model.transformer.n_heads = 8
  cfg.model.transformer.e_layers = 2
  cfg.model.transformer.d_layers = 1
  cfg.model.transformer.dropout = 0.1
  cfg.model.transformer.label_len = cfg.data.get_ref("label_len")  # known decoder steps; follows data.label_len
  # Autoformer at TSLib's ETTh1 settings (scripts/long_term_forecast/ETT_script/Autoformer_ETTh1.sh: factor 3).
  cfg.model.autoformer = ml_collections.ConfigDict()
  cfg.model.autoformer.d_model = 512  # width of the embeddings and every layer
  cfg.model.autoformer.d_ff = 2048  # hidden width of the FFNs (encoder: biased, decoder: no bias, as the fork)
  cfg.model.autoformer.n_heads = 8  # splits Q/K/V for per-head adapters only: auto-correlation averages over heads
  cfg.model.autoformer.e_layers = 2  # encoder layers
  cfg.model.autoformer.d_layers = 1  # decoder layers
  cfg.model.autoformer.factor = 3  # each auto-correlation aggregates int(factor * ln L) delays
  cfg.model.autoformer.moving_avg = 25  # odd kernel of every series decomposition's moving average
  cfg.model.autoformer.dropout = 0.1  # embeddings, auto-correlation outputs and FFNs
  cfg.model.autoformer.label_len = cfg.data.get_ref("label_len")  # known decoder steps; follows data.label_len
  # Informer: TSLib's Informer_ETTh1.sh on top of run.py's defaults (models/informer.py).
  cfg.model.informer = ml_collections.ConfigDict()
  cfg.model.informer.d_model = 512
  cfg.model.informer.d_ff = 2048
  cfg.model.informer.n_heads = 8
  cfg.model.informer.e_layers = 2
  cfg.model.informer.d_layers = 1
  # ProbSparse sampling factor c: c * ceil(ln L) queries get real attention, measured on c * ceil(ln L_K) sampled
  # keys. The ETTh1 script passes 3 (TSLib's run.py default is 1, the paper's 5).
  cfg.model.informer.factor = 3
  cfg.model.informer.distil = True  # a distilling conv (L -> (L + 1) // 2 + 1) after each encoder layer but the last
  cfg.model.informer.dropout = 0.1
  cfg.model.informer.label_len = cfg.data.get_ref("label_len")  # known decoder steps; follows data.label_len

  # Stage 1 (and mtf): an ordinary direct forecaster (docs/method.md §8).
  cfg.pretrain = ml_collections.ConfigDict()
  cfg.pretrain.lr = 5e-4
  cfg.pretrain.lr_decay = 0.5  # per epoch from epoch 3 (TSLib's type1); 1.0 = constant
  cfg.pretrain.epochs = 5
  cfg.pretrain.patience = 2
  cfg.pretrain.batch_size = 32

  # Stage 2: adapters on the frozen backbone.
  cfg.adapt = ml_collections.ConfigDict()
  cfg.adapt.lr = 1e-3
  cfg.adapt.lr_decay = 0.5  # the stage-2 schedule; 1.0 = constant (a per-dataset choice, docs/results.md §11)
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

  cfg.mola = ml_collections.ConfigDict()
  cfg.mola.num_experts = 6  # P (the scripts pass 6; the CLI default was 3)
  cfg.mola.rank = 8  # r
  cfg.mola.a_std = 0.01  # A ~ N(0, a_std^2), B = 0, no alpha/r scaling
  # Layer groups that get adapters, e.g. ("ffn", "attn"); unset -> the backbone's own ADAPTED_GROUPS (encoder
  # FFN for iTransformer/PatchTST/Informer, encoder + decoder FFN for the Transformer, the linear maps for DLinear).
  cfg.mola.targets = config_dict.placeholder(tuple)
  # Share the dropout masks of the pre-adapter prefix across segments in training. Off: each segment draws its
  # own, as the official K separate passes do (docs/method.md §12). Eval always shares the prefix (it is exact there).
  cfg.mola.share_prefix_dropout = False
  # How a bank applies its delta (models/adapters.py): unset -> per layer by cost (factored, sum_p w (h A_p) B_p,
  # for big layers such as PatchTST's 512 x 2048; the materialised [K, d_in, d_out] delta for small ones such as
  # iTransformer's 128 x 128); True / False forces one. Same numbers up to rounding; speed only.
  cfg.mola.factored = config_dict.placeholder(bool)
  # The other techniques (models/tuners.py). Each starts at the frozen model unless official_init: the official
  # code's initialisation (random adapter up-projections, N(0, 1) Fourier coefficients, fresh per-segment heads).
  cfg.mola.official_init = False
  cfg.mola.fourier_n = 100  # FourierFT: learnable spectral coefficients per spectrum (the official default)
  # FourierFT's scaling of the weight change (its paper's and PEFT's 150); the official MoLA code has none: 1.0.
  cfg.mola.fourier_scale = 150.0
  cfg.mola.adapter_dim = config_dict.placeholder(int)  # bottleneck width r; unset -> d_model / 4 (the official)

  # The study of `python -m mola_jax.reproduce`.
  cfg.reproduce = ml_collections.ConfigDict()
  cfg.reproduce.horizons = (96, 192, 336, 720)
  cfg.reproduce.methods = ("mtf", "lora", "mola")
  cfg.reproduce.num_seeds = 3  # seeds cfg.seed, cfg.seed + 1, ...
  # Another study's workdir whose finished runs (stage 1, mtf, stage 2) are reused when they are the same runs.
  cfg.reproduce.reuse_from = config_dict.placeholder(str)
  # The segment lengths each horizon tries (chosen on validation): "auto", the config's segment_options plus up
  # to two whole multiples of the series' dominant period found on the training split (mola_jax/periods.py),
  # with at most max_segments segments; "config", the config's options alone (the paper's). auto is the default
  # because on ETTh1 it was no worse at any horizon and better on average (docs/results.md §11); where the data
  # has no usable period it proposes nothing new.
  cfg.reproduce.segment_options = "auto"
  cfg.reproduce.max_segments = 8

  # `python -m mola_jax.sweep` (mola_jax/sweep.py): KEY=V1,V2,... items separated by ';'; one key at a time or
  # every combination ("grid"); seeds as reproduce.num_seeds.
  cfg.sweep = ml_collections.ConfigDict()
  cfg.sweep.grid = ""
  cfg.sweep.mode = "one_at_a_time"

  # JAX's persistent compilation cache in the user cache directory (mola_jax/runtime.py): a rerun or the next run
  # of a study loads its compiled steps instead of compiling them again. Speed only; False turns it off.
  cfg.compile_cache = True

  # Resume checkpoints within an epoch, every so many seconds of training (and steps, if set); one is always written
  # at each epoch's end. A kill loses at most that much work; each save costs the host a few tens of milliseconds.
  cfg.checkpoint_every_seconds = 60.0
  cfg.checkpoint_every_steps = 0  # 0: by time only
  # Prediction intervals (mola_jax/intervals.py): split-conformal levels calibrated on the validation windows;
  # () for none. results.json reports their coverage on the test split; forecasts get lower/upper columns.
  cfg.intervals = (0.8, 0.95)
  cfg.tensorboard = True  # TensorBoard summaries in <workdir>/tb beside metrics.jsonl
  cfg.profile_steps = 0  # N > 0: a jax.profiler trace of N steady-state train steps per stage in <workdir>/profile
  cfg.log_every = 50  # steps between progress-bar updates (each one reads a loss back from the device)

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

  # `python -m mola_jax.bench` (docs/performance.md). Throughputs are medians of `repeats` timed repeats after
  # `warmup` untimed steps; a repeat runs enough steps to last about `repeat_seconds` (within min/max_steps).
  cfg.bench = ml_collections.ConfigDict()
  cfg.bench.tiny = False  # CI mode: 3 steps a repeat, 2 repeats, sweeps cut to K[:2], T[:1], D[:1]; no speed asserted
  cfg.bench.repeats = 5
  cfg.bench.warmup = 2
  cfg.bench.repeat_seconds = 2.0
  cfg.bench.min_steps = 5
  cfg.bench.max_steps = 200
  cfg.bench.segments = (1, 2, 4, 8, 24)  # K sweep at T = horizon (S = T / K); a K that does not divide T is skipped
  cfg.bench.horizons = (96, 192, 336, 720)  # T sweep, S = each T's default segment length
  cfg.bench.channels = (7, 21, 321)  # channel sweep, on synthetic data with the config's model
  cfg.bench.sweep_loop = True  # also time the per-segment loop (the official K passes) in the K sweep
  cfg.bench.accuracy_steps = 0  # bf16 vs float32: train steps per stage from one init; 0 = one epoch each
  cfg.bench.matmul_size = 2048  # square matmul that measures the attainable FLOP/s (the MFU denominator)
  return cfg


def from_json(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config.json -> its ConfigDict, on top of today's defaults: a run saved before a key existed
  loads with that key's default."""
  cfg = default()

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        with node.ignore_type():
          node[key] = tuple(value) if isinstance(value, list) else value

  with cfg.unlocked():
    merge(cfg, saved)
  return cfg


def segment_len(cfg) -> int:
  """S for stage 1 and stage 2; mtf predicts the whole horizon in one segment."""
  if cfg.method == "mtf":
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
  if cfg.data.get("val_protocol", "full") not in ("full", "official"):
    raise ConfigError(f"unknown data.val_protocol {cfg.data.val_protocol!r}; use full or official")
  if cfg.data.features != "M":
    raise ConfigError(f"features mode {cfg.data.features!r} is not implemented; use 'M'")
  if cfg.data.seq_len <= 0:
    raise ConfigError(f"data.seq_len must be positive, got {cfg.data.seq_len}")
  for key in ("pretrain", "adapt"):
    sub = cfg[key]
    if sub.batch_size <= 0 or sub.epochs <= 0 or sub.lr <= 0:
      raise ConfigError(f"{key}.batch_size, {key}.epochs and {key}.lr must be positive")
    if not 0.0 < sub.lr_decay <= 1.0:
      raise ConfigError(f"{key}.lr_decay must lie in (0, 1] (0.5 halves the lr each epoch, 1 keeps it): {sub.lr_decay}")
  if cfg.get("matmul_precision", "float32") not in MATMUL_PRECISIONS:
    raise ConfigError(f"unknown matmul_precision {cfg.matmul_precision!r}; use one of {', '.join(MATMUL_PRECISIONS)}")
  if cfg.get("compute_dtype", "float32") not in ("float32", "bfloat16"):
    raise ConfigError(f"unknown compute_dtype {cfg.compute_dtype!r}; use 'float32' or 'bfloat16'")
  if any(not 0.0 < level < 1.0 for level in cfg.get("intervals", ())):
    raise ConfigError(
      f"intervals {tuple(cfg.intervals)}: each level must lie strictly between 0 and 1, e.g. (0.8, 0.95)"
    )
  if cfg.adapt.selection not in ("any_improved", "per_segment"):
    raise ConfigError(f"unknown adapt.selection {cfg.adapt.selection!r}; use 'any_improved' or 'per_segment'")
