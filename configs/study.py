"""The studies: each a named set of ordinary grid runs (launch.train configs
with `config.grid` set) plus its analysis and figure (resjax/studies/<study>.py).

  python -m launch.study --config=configs/study.py:degradation --workdir=runs/degradation
  python -m launch.study --config=configs/study.py:dead_units  --workdir=runs/dead_units
  python -m launch.study --config=configs/study.py:collapse    --workdir=runs/collapse_study
  python -m launch.study --config=configs/study.py:bottleneck  --workdir=runs/bottleneck
  python -m launch.study --config=configs/study.py:convergence --workdir=runs/convergence
  python -m launch.study --config=configs/study.py:redundancy  --workdir=runs/redundancy
  python -m launch.study --config=configs/study.py:pilot       --workdir=runs/pilot
  python -m launch.study --config=configs/study.py:revival     --workdir=runs/revival
  python -m launch.study --config=configs/study.py:rank_collapse --workdir=runs/rank_collapse
  python -m launch.study --config=configs/study.py:identification --workdir=runs/identification
  python -m launch.study --config=configs/study.py:linear_regime --workdir=runs/linear_regime
  python -m launch.study --config=configs/study.py:power       --workdir=runs/power
  python -m launch.study --config=configs/study.py:mnist1d     --workdir=runs/mnist1d

Each grid of `config.grids` is a full training config (configs/embedded.py
bases); it trains in `--workdir/<grid>` exactly as
`python -m launch.train --config=... --workdir=<workdir>/<grid>` would, and
resumes the same way. The study then writes study.csv (one row per condition),
nets.csv (one row per net), study.json and <study>.png/.pdf to --workdir.
Append `,tiny` to a name (e.g. `configs/study.py:collapse,tiny`) for a
seconds-long version (CI). `--config.seeds=N` sets the seeds of every grid
(seeds `seed` .. `seed + N - 1`).

Learning rates (Adam, constant, no weight decay) were chosen before the studies
ran, by one pilot per family on the shallowest nets (RESULTS.md): MLPs on
spirals 1e-2; conv nets on digits 3e-2; inverted-residual nets on digits 1e-2.
That pilot ran on an earlier trainer; `pilot` is its command on this one (the
same families at their study budgets, seeds 0-1, both variants, rates 1e-3,
3e-3, 1e-2, 3e-2; it reports the rate with the lowest final training loss and
changes no study; on this trainer it picks 1e-2 for the MLPs, but 1e-2 for the
conv nets and 3e-3 for the inverted-residual nets, RESULTS.md). The degradation
MLP grid also has a learning-rate axis fixed in advance (3e-3, 1e-2, 3e-2), so
that each depth and variant can be read at its best rate.

`rank_collapse` (C5's mechanism) trains the degradation MLPs (layer norm, width
16, depths 2-32) under Adam and SGD over RANK_RATES, 3 seeds, 1500 steps: 390 nets,
probed during training for the last hidden layer's mean pairwise cosine and
uncentred effective rank; the best rate of each cell and its bracketing are read
by the rule in resjax/studies/rank_collapse.py.

`redundancy` (C3) trains the collapse study's first-layer nets on the
'manifold' task (configs/embedded.py:manifold_firstlayer: intrinsic dimension
d embedded in 16 input dimensions), one grid per d in REDUNDANCY_DIMS, widths
n with n/d from 1 to 8 (`redundancy_widths`). Its recipe (Adam 1e-2 with a
cosine decay, 2000 steps of 64, 4000 training points) was fixed before it ran.

`identification` (C3) trains the same nets (ReLU and linear first layer, paired
by seed) in cells chosen to tell n/d, n - d and P(Bin(n, 1/2) < d) apart
(IDENTIFICATION_CELLS: d = 8 and 12 at n/d = 1.5, 2, 3; n - d = 2 for d = 1-8),
each on 3 draws of the embedding Q (`data.seed` 0-2, which also draws the
points) and on two label functions (`data.shift` 0: labels even in each latent
coordinate; 0.25: neither even nor odd): one grid per (d, draw, shift), 54
grids. The redundancy recipe at 16000 training points (d = 12 needs them: 78-86%
test accuracy at 8000 in a 3-seed check) and 3 seeds. The comparison (leave-one-
d-out R^2 of each coordinate, resjax/studies/identification.py) was fixed in
the code before the run.
`mnist1d` (C5, C6 on real data) trains 1-D ResNets (plain vs residual, depths
MNIST1D_DEPTHS, BatchNorm) and 1-D inverted-residual nets (linear vs ReLU6
bottleneck, widths MNIST1D_WIDTHS) on MNIST-1D, each family at the rate of
MNIST1D_RATES with the best validation accuracy on MNIST1D_NUM_VAL held-out
training sequences (resjax/studies/mnist1d.py: the rule, fixed in code).
"""
import math

import ml_collections

from configs import embedded
from resjax import errors, stats, studies

# Redundancy study: intrinsic dimensions d and the ratios n/d its widths aim at.
REDUNDANCY_DIMS = (1, 2, 3, 4, 6)
REDUNDANCY_RATIOS = (1, 1.5, 2, 3, 4, 6, 8)
# Identification study: intrinsic dimension d -> first-layer widths n; the data draws
# (data.seed: the embedding Q and the points) and the label shifts (data.shift).
IDENTIFICATION_CELLS = {**{d: (d + 2,) for d in range(1, 8)}, 8: (10, 12, 16, 24),
                        12: (18, 24, 36)}
IDENTIFICATION_DRAWS = (0, 1, 2)
IDENTIFICATION_SHIFTS = (0.0, 0.25)
# Revival study: the reset period (not a divisor of its 1000 steps, so the last reset,
# at step 960, is followed by training before the final evaluation).
REVIVAL_RESET_EVERY = 60
# Rank collapse study: the rates of each optimizer (each grid's lowest and highest are
# its edges: a best rate there is "not bracketed"), SGD's momentum, the probe batch.
RANK_RATES = {"adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
              "sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)}
RANK_MOMENTUM = 0.9
RANK_PROBE_BATCH = 256
# Linear regime study: the high first-layer bias at init. The spirals inputs, standardized,
# lie within radius R = 2.49 of 0 (training split; test 2.42); Flax's LeCun-normal kernel
# is a normal truncated at 2 SD, SD sqrt(1/2) / 0.8796 = 0.804 for d = 2, so every row w of
# the first kernel has |w| <= 2 * 0.804 * sqrt(2) = 2.27 and w.x + b >= b - 2.27 R = b - 5.67:
# at b = 6 every first-layer unit is on for every input at init, whatever the seed.
LINEAR_REGIME_HIGH_BIAS = 6.0
# Its digits arm: bottleneck widths, and steps (fewer than the bottleneck study's 600).
LINEAR_REGIME_WIDTHS = (2, 4)
LINEAR_REGIME_STEPS = 300
LINEAR_REGIME_DIGITS_SEEDS = 4
# Pilot: the rates it compares, and the rate each family's studies use.
PILOT_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
PILOT_STUDY_RATES = {"mlp": 1e-2, "conv": 3e-2, "invres": 1e-2}
# Power study: the paired 95% intervals (points) and seeds of the earlier studies
# (RESULTS.md sections 3 and 4) behind its seed counts, the effect it is sized for
# (points of test accuracy), its bottleneck widths, first-layer width and rate grid.
POWER_PRIOR = {"c6_width2": (-1.0, 1.9, 5), "c6_width4": (-1.5, 2.1, 5),
               "c1_n3": (-0.1, 2.0, 8)}
POWER_EFFECT = 1.0
POWER_WIDTHS = (2, 4)
POWER_FIRST_WIDTH = 3
POWER_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # 1e-1: linear's pick was 3e-2, the old top.
# The rate pilot's seeds per (variant, width, rate).
POWER_RATE_SEEDS = 1
# MNIST-1D study: the rates each family's rate is chosen from, the held-out
# training sequences that choice reads, the ResNet depths and the bottleneck widths.
MNIST1D_RATES = (1e-3, 3e-3, 1e-2)
MNIST1D_NUM_VAL = 1000
MNIST1D_DEPTHS = (8, 14, 32)
MNIST1D_WIDTHS = (2, 4, 8)


def redundancy_widths(d: int) -> tuple[int, ...]:
  """First-layer widths n for intrinsic dimension d: n = round(r d), r in REDUNDANCY_RATIOS
  (d = 3, r = 1.5 rounds up to 5)."""
  return tuple(sorted({int(math.floor(r * d + 0.5)) for r in REDUNDANCY_RATIOS}))


def _spirals(*, norm, steps, eval_every, lr=1e-2, batch_size=64, num_test=1500):
  """An MLP on the 3-arm spirals, Adam at a constant rate, full-split evaluations."""
  config = embedded.get_config("spirals_mlp")
  config.model.norm = norm
  config.data.batch_size = batch_size
  config.data.num_test = num_test
  config.opt.lr = lr
  config.opt.schedule = "constant"
  config.train.steps = steps
  config.train.eval_every = eval_every
  config.train.eval_train = True  # The history of the full training loss.
  config.train.log_every = eval_every
  config.train.checkpoint_every = max(steps // 3, 1)
  config.train.keep_checkpoints = 1
  return config


def _digits(*, steps, eval_every, lr, batch_size=32):
  """A net on the 8x8 digits, Adam at a constant rate, no augmentation."""
  config = embedded.get_config("digits_resnet20")
  config.data.batch_size = batch_size
  config.data.augment = False
  config.opt.name = "adam"
  config.opt.lr = lr
  config.opt.weight_decay = 0.0
  config.opt.schedule = "constant"
  config.train.steps = steps
  config.train.eval_every = eval_every
  config.train.eval_train = True
  config.train.log_every = eval_every
  config.train.checkpoint_every = max(steps // 2, 1)
  config.train.keep_checkpoints = 1
  return config


def degradation() -> dict[str, ml_collections.ConfigDict]:
  """The degradation study's grids (resjax/studies/degradation.py)."""
  mlp = _spirals(norm="layer", steps=1500, eval_every=50)
  mlp.model.width = 16
  mlp.grid.model.depth = (2, 4, 8, 16, 32)
  mlp.grid.model.residual = (False, True)
  mlp.grid.opt.lr = (3e-3, 1e-2, 3e-2)  # Fixed in advance; 1e-2 is the pilot's rate.
  conv = _digits(steps=400, eval_every=50, lr=3e-2)
  conv.model.widths = (8,)  # One stage of 8 channels, BatchNorm, option-A shortcuts.
  conv.grid.model.depth = (4, 6, 10)  # 1, 2, 4 blocks: 3, 5, 9 convs.
  conv.grid.model.plain = (True, False)
  return {"mlp": mlp, "conv": conv}


def dead_units() -> dict[str, ml_collections.ConfigDict]:
  """The dead_units study's grids (resjax/studies/dead_units.py)."""
  mlp = _spirals(norm=None, steps=1000, eval_every=100)
  mlp.grid.model.width = (2, 3, 4, 8, 16, 32)
  mlp.grid.model.depth = (2, 8, 16)
  mlp.grid.model.residual = (False, True)
  return {"mlp": mlp}


def collapse() -> dict[str, ml_collections.ConfigDict]:
  """The collapse study's grids (resjax/studies/collapse.py)."""
  net = _spirals(norm=None, steps=2000, eval_every=100)
  net.model = ml_collections.ConfigDict(dict(
      name="firstlayer",
      width=8,  # First-layer width n (the grid varies it).
      first="relu",  # relu(z) | linear z | residual z + relu(Uz + c).
      head_width=64,  # The fixed head: head_depth layers of head_width ReLUs.
      head_depth=2,
      activation="relu",
  ))
  net.grid.model.width = (2, 3, 4, 6, 8, 12, 16, 24, 32)
  net.grid.model.first = ("relu", "linear", "residual")
  return {"firstlayer": net}


def bottleneck() -> dict[str, ml_collections.ConfigDict]:
  """The bottleneck study's grids (resjax/studies/bottleneck.py)."""
  net = _digits(steps=600, eval_every=50, lr=1e-2)
  net.model = ml_collections.ConfigDict(dict(
      name="invres",
      expansion=6,  # t: every block expands its bottleneck 6x (ReLU6 inside).
      bottleneck="linear",  # linear | relu6 (the grid varies it).
      shortcut=True,
      width_multiplier=1.0,
      stages=((8, 2, 1),),  # (bottleneck width, blocks, stride); the grid varies the width.
      stem_width=16,  # The same stem (3x3 conv, BN, ReLU6) for every net.
      head_width=64,
      activation="relu6",
      round_to=1,  # Exact bottleneck widths (2 and 4 exist).
  ))
  net.grid.model.stages = tuple(((w, 2, 1),) for w in (2, 4, 8, 16))
  net.grid.model.bottleneck = ("linear", "relu6")
  return {"invres": net}


def convergence() -> dict[str, ml_collections.ConfigDict]:
  """The convergence study's grids (resjax/studies/convergence.py)."""
  mlp = _spirals(norm="layer", steps=1500, eval_every=20, num_test=300)
  mlp.model.width = 16
  mlp.grid.model.depth = (4, 8, 16)
  mlp.grid.model.residual = (False, True)
  return {"mlp": mlp}


def revival() -> dict[str, ml_collections.ConfigDict]:
  """The revival study's grids (resjax/studies/revival.py): the dead-units MLPs at
  widths 4-16 and depths 8-16, probed every 50 steps on the whole training split,
  each net trained without and with ReDo resets every REVIVAL_RESET_EVERY steps.
  192 nets, about 130 s on the 2-core Xeon; resets rescue some narrow nets (plain
  4 x 8: 5 of 7 nets at chance escape) but not the plain depth-16 ones (RESULTS.md, 8)."""
  mlp = _spirals(norm=None, steps=1000, eval_every=100)
  mlp.train.probe_every = 50
  mlp.train.probe_batch = mlp.data.num_train  # Dead = never on duty on the training split.
  mlp.grid.model.width = (4, 8, 16)
  mlp.grid.model.depth = (8, 16)
  mlp.grid.model.residual = (False, True)
  mlp.grid.train.reset_dead_every = (0, REVIVAL_RESET_EVERY)
  return {"mlp": mlp}


def rank_collapse() -> dict[str, ml_collections.ConfigDict]:
  """The rank_collapse study's grids (resjax/studies/rank_collapse.py): the degradation
  MLPs (width 16, layer norm) at depths 2-32, one grid per optimizer over RANK_RATES
  (opt.name is not a grid axis), 1500 steps, the full training loss every 25 steps,
  probes of every layer on a fixed batch of RANK_PROBE_BATCH training inputs every
  100 steps; 3 seeds (130 nets per seed, 390 in all)."""
  out = {}
  for name, rates in RANK_RATES.items():
    mlp = _spirals(norm="layer", steps=1500, eval_every=25, num_test=300)
    mlp.model.width = 16
    mlp.opt.name = name
    if name == "sgd":
      mlp.opt.momentum = RANK_MOMENTUM
    mlp.train.probe_every = 100
    mlp.train.probe_batch = RANK_PROBE_BATCH
    mlp.grid.model.depth = (2, 4, 8, 16, 32)
    mlp.grid.model.residual = (False, True)
    mlp.grid.opt.lr = rates
    out[name] = mlp
  return out
def _manifold(d: int, *, num_train: int, num_test: int) -> ml_collections.ConfigDict:
  """The redundancy recipe: a first-layer net on the d-dim manifold task."""
  net = embedded.get_config("manifold_firstlayer")
  net.data.d = d
  net.data.num_train = num_train
  net.data.num_test = num_test
  net.opt.lr = 1e-2  # The spirals MLP family's rate.
  net.opt.schedule = "cosine"  # Decays to 0: the final step is not an Adam oscillation.
  net.train.steps = 2000
  net.train.eval_every = 500
  net.train.eval_train = True
  net.train.log_every = 500
  net.train.checkpoint_every = 1000
  net.train.keep_checkpoints = 1
  return net
def linear_regime() -> dict[str, ml_collections.ConfigDict]:
  """The linear_regime study's grids (resjax/studies/linear_regime.py): the collapse
  study's ReLU first layers at every width (how often they are fully on); the n = 2, 3
  ablation of ReLU vs linear first layers with the first bias at 0 and at
  LINEAR_REGIME_HIGH_BIAS; the bottleneck study's nets at widths LINEAR_REGIME_WIDTHS
  with linear vs ReLU6 bottlenecks, the bottleneck BN shift learned vs frozen."""
  widths = collapse()["firstlayer"]
  widths.model.first = "relu"
  widths.grid.model.first = ()
  bias = collapse()["firstlayer"]
  bias.grid.model.width = (2, 3)
  bias.grid.model.first = ("relu", "linear")
  bias.grid.model.first_bias_init = (0.0, LINEAR_REGIME_HIGH_BIAS)
  invres = bottleneck()["invres"]
  invres.train.steps = LINEAR_REGIME_STEPS
  invres.train.checkpoint_every = LINEAR_REGIME_STEPS
  invres.train.eval_every = LINEAR_REGIME_STEPS  # The final evaluation is all it reads.
  invres.grid.model.stages = tuple(((w, 2, 1),) for w in LINEAR_REGIME_WIDTHS)
  invres.grid.model.bottleneck_bn_shift = ("learned", "frozen")
  return {"widths": widths, "bias": bias, "invres": invres}


def redundancy() -> dict[str, ml_collections.ConfigDict]:
  """The redundancy study's grids (resjax/studies/redundancy.py)."""
  out = {}
  for d in REDUNDANCY_DIMS:
    # 4000 points: enough for the d = 6 task (a 2-seed check: 85% at 1500).
    net = _manifold(d, num_train=4000, num_test=2000)
    net.grid.model.width = redundancy_widths(d)
    net.grid.model.first = ("relu", "linear", "residual")
    out[f"d{d}"] = net
  return out


def identification() -> dict[str, ml_collections.ConfigDict]:
  """The identification study's grids (resjax/studies/identification.py): one per
  (d, draw, shift), named d<d>_q<draw>_<even|shifted>."""
  out = {}
  for shift in IDENTIFICATION_SHIFTS:
    for draw in IDENTIFICATION_DRAWS:
      for d, widths in IDENTIFICATION_CELLS.items():
        net = _manifold(d, num_train=16000, num_test=4000)
        net.data.seed = draw
        net.data.shift = shift
        net.train.eval_every = net.train.checkpoint_every = net.train.steps  # One evaluation.
        net.grid.model.width = widths
        net.grid.model.first = ("relu", "linear")
        out[f"d{d}_q{draw}_{'shifted' if shift else 'even'}"] = net
  return out


def _mnist1d(model: dict, *, steps: int) -> ml_collections.ConfigDict:
  """A net on MNIST-1D: Adam with a cosine decay, batches of 64, no weight decay; the
  rate is the one its selection grid chooses (`mnist1d.prepare` replaces opt.lr)."""
  config = embedded.get_config("mnist1d_resnet")
  config.model = ml_collections.ConfigDict(model)
  config.data.batch_size = 64
  config.opt.lr = MNIST1D_RATES[1]
  config.opt.weight_decay = 0.0
  config.opt.schedule = "cosine"
  config.train.steps = steps
  config.train.eval_every = steps // 4
  config.train.eval_train = True  # The final training loss on the whole training split.
  config.train.log_every = steps // 4
  config.train.checkpoint_every = steps // 2
  config.train.keep_checkpoints = 1
  return config


def mnist1d() -> dict[str, ml_collections.ConfigDict]:
  """The MNIST-1D study's grids (resjax/studies/mnist1d.py): per family a selection grid
  (one depth / width, both variants, MNIST1D_RATES, validation split) and its test grid."""
  steps = 400  # 25,600 sequences per net: 6.4 passes over the 4,000 (8.5 over 3,000).
  res = _mnist1d(dict(name="resnet1d", depth=14, width=8, residual=True, activation="relu"),
                 steps=steps)
  res.grid.model.depth = MNIST1D_DEPTHS
  res.grid.model.residual = (False, True)
  inv = _mnist1d(dict(
      name="invres", expansion=6, bottleneck="linear", shortcut=True, width_multiplier=1.0,
      stages=((4, 2, 1),),  # Two blocks of the bottleneck width (the grid varies it).
      stem_width=8, head_width=32, activation="relu6", round_to=1), steps=steps)
  inv.grid.model.stages = tuple(((w, 2, 1),) for w in MNIST1D_WIDTHS)
  inv.grid.model.bottleneck = ("linear", "relu6")
  out = {"test_resnet1d": res, "test_invres": inv}
  for family, g in tuple(out.items()):
    select = ml_collections.ConfigDict(g.to_dict())
    select.data.num_val = MNIST1D_NUM_VAL
    if family == "test_resnet1d":  # The middle depth / width only (14 / 4).
      select.grid.model.depth = ()
    else:
      select.grid.model.stages = ()
    select.grid.opt.lr = MNIST1D_RATES
    out["select_" + family.split("_", 1)[1]] = select
  return out


def pilot() -> dict[str, ml_collections.ConfigDict]:
  """The pilot study's grids (resjax/studies/pilot.py)."""
  mlp = _spirals(norm="layer", steps=1500, eval_every=50)  # The degradation MLPs, depth 2.
  mlp.model.width, mlp.model.depth = 16, 2
  mlp.grid.model.residual = (False, True)
  conv = _digits(steps=400, eval_every=50, lr=3e-2)  # The degradation ResNets, depth 4.
  conv.model.widths, conv.model.depth = (8,), 4
  conv.grid.model.plain = (True, False)
  invres = bottleneck()["invres"]  # The bottleneck nets at width 8.
  invres.model.stages = ((8, 2, 1),)
  invres.grid.model.stages = ()
  invres.grid.model.bottleneck = ("linear", "relu6")
  out = {"mlp": mlp, "conv": conv, "invres": invres}
  for g in out.values():
    g.grid.opt.lr = PILOT_RATES
  return out


def power_seeds() -> dict[str, int]:
  """Seeds for 80% power (two-sided paired t at 0.05) against a POWER_EFFECT-point gap,
  per earlier contrast: SD = half-width sqrt(n) / t_{n-1} of POWER_PRIOR's interval
  (stats.paired_sd, `power_sds`), then the fewest pairs whose detectable effect is at
  most the gap (stats.pairs_needed). It gives C6 width 2: SD 1.17 points, 13 seeds;
  width 4: SD 1.45, 19 seeds; C1 n = 3: SD 1.26, 15 seeds. The digits arm runs
  digits arm runs the larger of its two (19, both widths share a grid), the spirals arm
  its 15. Holm over the 3 contrasts lowers the power further (the first step tests
  at 0.05 / 3)."""
  return {k: stats.pairs_needed(sd, POWER_EFFECT) for k, sd in power_sds().items()}


def power_sds() -> dict[str, float]:
  """The SD of the paired differences (points) behind each POWER_PRIOR interval."""
  return {k: stats.paired_sd(lo, hi, n) for k, (lo, hi, n) in POWER_PRIOR.items()}


def power() -> dict[str, ml_collections.ConfigDict]:
  """The power study's grids (resjax/studies/power.py): C6 (the bottleneck study's nets at
  POWER_WIDTHS) and C1 (the collapse study's first-layer nets at n = POWER_FIRST_WIDTH,
  ReLU vs linear), each first as a rate pilot over POWER_RATES on its own seeds
  ('lr_<family>', both variants), then one main grid per variant ('main_<family>_<variant>')
  whose opt.lr the study sets to that variant's pilot pick before it trains. 96
  CPU-minutes on the 2-core Xeon (73 min at load 5-12; RESULTS.md, section 12)."""
  inv = bottleneck()["invres"]
  inv.grid.model.stages = tuple(((w, 2, 1),) for w in POWER_WIDTHS)
  # Evaluated once, at the end (the study reads final numbers; the cost is training).
  inv.train.eval_every, inv.train.log_every = inv.train.steps, 100
  first = collapse()["firstlayer"]
  first.model.width = POWER_FIRST_WIDTH
  first.grid.model.width = ()
  first.grid.model.first = ("relu", "linear")
  out = {}
  for family, g, field, variants in (("invres", inv, "bottleneck", ("linear", "relu6")),
                                     ("firstlayer", first, "first", ("relu", "linear"))):
    pilot = ml_collections.ConfigDict(g.to_dict())
    pilot.grid.opt.lr = POWER_RATES
    out[f"lr_{family}"] = pilot
    for v in variants:
      main = ml_collections.ConfigDict(g.to_dict())
      main.model[field] = v
      main.grid.model[field] = ()
      out[f"main_{family}_{v}"] = main
  return out


def _shrink(config: ml_collections.ConfigDict) -> None:
  """Seconds instead of minutes: 2 seeds, two values per axis, few steps, one block per
  stage (CI); a study module's `tiny(config)` first does its own part."""
  config.seeds = 2
  module = studies.get(config.study)
  if hasattr(module, "tiny"):
    module.tiny(config)
  for g in config.grids.values():
    for field in list(g.grid.model.keys()):
      values = tuple(g.grid.model[field])
      if len(values) > 2 and field != "first":
        g.grid.model[field] = values[:2]
    if len(g.grid.opt.lr) > 1:
      g.grid.opt.lr = tuple(g.grid.opt.lr)[:2]
    g.train.steps, g.train.eval_every, g.train.log_every = 20, 20, 10
    g.train.checkpoint_every = 20  # The last step (a stop saves its own).
    g.data.batch_size = 16
    g.train.eval_batch_size = 512  # Evaluations in a few calls (MNIST-1D's 4,000: 8).
    if "head_width" in g.model:
      g.model.head_width = 8
    if "stages" in g.model:  # One block per stage: each block is compile time.
      one = lambda stages: tuple((w, 1, s) for w, _, s in stages)
      g.model.stages = one(g.model.stages)
      g.grid.model.stages = tuple(one(st) for st in g.grid.model.get("stages", ()))
    if g.model.name == "resnet1d" and not g.grid.model.get("depth"):
      g.model.depth = 8  # The shallowest 1-D ResNet, where the depth is not an axis.
    if g.data.name in ("spirals", "manifold"):
      g.data.num_train, g.data.num_test = 96, 64
    elif g.data.name == "digits":
      g.data.num_test = 1697  # 100 training images.
  config.collapse.seeds = 2
  config.collapse.manifold.points = 200
  for name in config.get("grid_seeds") or {}:
    config.grid_seeds[name] = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` = '<study>' or '<study>,tiny'."""
  parts = [p.strip() for p in (arg or "degradation").split(",") if p.strip()]
  name = parts[0] if parts else "degradation"
  errors.check(all(p == "tiny" for p in parts[1:]),
               f"config study.py:{arg} is not allowed; use <study> or <study>,tiny")
  errors.choice("study", name, studies.names())
  config = ml_collections.ConfigDict()
  config.study = name  # One of resjax.studies.names().
  config.seed = 0  # First seed; the nets use seeds seed .. seed + seeds - 1.
  config.seeds = {"bottleneck": 5, "dead_units": 5, "pilot": 2, "rank_collapse": 3,
                  "power": max(power_seeds()["c6_width2"], power_seeds()["c6_width4"]),
                  "mnist1d": 4}.get(name, 8)  # Seeds per condition.
  config.target_loss = 0.3  # Convergence: steps to this full training loss.
  if name in ("redundancy", "identification"):  # Bootstrap resamples of the seeds.
    config.bootstrap = 2000
  if name == "identification":
    config.seeds = 3  # x 3 draws of Q: 9 replicates per cell and label function.
  if name == "linear_regime":  # The digits grid costs 20x a spirals grid per net.
    config.grid_seeds = ml_collections.ConfigDict({"invres": LINEAR_REGIME_DIGITS_SEEDS})
  if name in ("revival", "rank_collapse", "identification", "linear_regime", "power",
              "mnist1d"):
    config.power = 0.8  # The power of the smallest detectable effect.
  if name == "power":  # The digits seeds are above; spirals and pilot seeds; the design.
    config.spirals_seeds = power_seeds()["c1_n3"]
    config.rate_seed = 1000  # Pilot seeds 1000.. (disjoint from the main seeds 0..).
    config.rate_seeds = POWER_RATE_SEEDS
    config.effect = POWER_EFFECT / 100  # In accuracy (the metrics' unit).
    config.prior_sd = ml_collections.ConfigDict({k: v / 100 for k, v in power_sds().items()})
  if name == "pilot":  # The rate each family's studies use (the pilot only compares).
    config.study_rates = ml_collections.ConfigDict(PILOT_STUDY_RATES)
  # The untrained collapse curve drawn beside the collapse study (resjax.collapse.sweep).
  config.collapse = ml_collections.ConfigDict(dict(
      activations=("relu",),  # Activations of the untrained curve.
      seeds=64,  # Random embeddings T per n (enough draws to compare with the theory).
      seed=0,  # Seed of the embeddings.
      chunk=0,  # Draws per call (0 = all in one).
      manifold=dict(name="spiral", dims=(2,), points=1000, turns=3.0),  # The 2-D spiral.
  ))
  # Grid name -> launch.train config.
  errors.check(callable(globals().get(name)),
               f"configs/study.py has no config function {name}() for study {name!r}")
  config.grids = ml_collections.ConfigDict(globals()[name]())
  if "tiny" in parts[1:]:
    _shrink(config)
  return config
