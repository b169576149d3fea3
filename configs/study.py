"""The five studies: grids of small nets trained in one compiled call each.

  python -m launch.study --config=configs/study.py:degradation --workdir=runs/degradation
  python -m launch.study --config=configs/study.py:dead_units  --workdir=runs/dead_units
  python -m launch.study --config=configs/study.py:collapse    --workdir=runs/collapse_study
  python -m launch.study --config=configs/study.py:bottleneck  --workdir=runs/bottleneck
  python -m launch.study --config=configs/study.py:convergence --workdir=runs/convergence

Each writes study.csv (one row per condition: means and 95% intervals over
seeds), nets.csv (one row per net), study.json and <study>.png to --workdir, and
resumes from its Orbax checkpoints when run again. Append `,tiny` to a name
(e.g. `configs/study.py:collapse,tiny`) for a seconds-long version (CI).

Expected at these defaults (2-core CPU, 3-12 minutes each; RESULTS.md has the
measured numbers and figures):
  degradation  plain MLPs of depth 16-32 and plain conv nets of depth 8 end near
               chance; residual nets of every depth fit the data (He et al. Fig. 6).
  dead_units   plain nets of width 2-3 and depth 16 have ~77% dead units from
               initialization on; residual nets start with ~0-5%, but wide
               residual nets kill many units during training.
  collapse     a ReLU first layer costs accuracy at n = 2 only (about 18 points);
               the untrained collapse curve matches P(Bin(n, 1/2) < 2).
  bottleneck   the linear bottleneck beats ReLU6 by ~20 points at width 2, by
               less (within noise) at widths 8-16.
  convergence  residual nets reach training loss 0.3 in ~120 steps at every
               depth; plain nets need more steps with depth and never at 16.
"""
import ml_collections

# Learning rates (Adam, constant) come from one pilot per family, chosen before the
# studies ran: the best final training loss of the *depth-2* nets (both variants,
# seeds 0-1) among 1e-3, 3e-3, 1e-2, 3e-2. MLPs on spirals: 1e-2; conv nets on
# digits: 3e-2; inverted-residual nets on digits (width 8): 1e-2. Every net of a
# grid, shallow or deep, plain or residual, uses the same rate and budget.
STUDIES = ("degradation", "dead_units", "collapse", "bottleneck", "convergence")


def _grid(family: str, data: str, *, widths, depths, variants, steps: int,
          batch_size: int, eval_every: int, chunk_steps: int, norm: str = "none",
          lr: float = 1e-2, probes: bool = False, data_options=None,
          **model) -> ml_collections.ConfigDict:
  """One grid of nets trained together (one compiled call per chunk of steps)."""
  return ml_collections.ConfigDict(dict(
      data=dict(
          name=data,  # resjax.data name: 'spirals' (2-D features) or 'digits' (8x8 images).
          seed=0,  # Dataset generation / split seed.
          options=data_options or {},  # Embedded-dataset options, e.g. {'num_arms': 3}.
      ),
      model=dict(
          family=family,  # resjax.sweeps family: mlp | conv | invres | bottleneck.
          widths=tuple(widths),  # Widths in the grid (units, channels, bottleneck or first-layer width).
          depths=tuple(depths),  # Depths in the grid (activation layers; blocks for invres).
          variants=tuple(variants),  # plain/residual, linear/relu6, or relu/linear/residual.
          activation="relu",  # Hidden activation (resjax.activations name).
          norm=norm,  # 'none' or 'layer' (masked layer norm before each activation).
          branch_scale=model.get("branch_scale", False),  # Residual branches start at 1/sqrt(blocks).
          head_width=model.get("head_width", 64),  # Hidden width of the invres / bottleneck heads.
          expansion=model.get("expansion", 6),  # invres expansion factor t.
          stem_pool=model.get("stem_pool", 1),  # Images: average-pool the stem output p x p.
      ),
      opt=dict(
          name="adam",  # adam (AdamW) or sgd (with momentum).
          lr=lr,  # Learning rate.
          momentum=0.9,  # sgd only.
          weight_decay=0.0,  # Decoupled (adam) or L2 (sgd) weight decay.
          schedule="constant",  # constant or cosine.
      ),
      train=dict(
          steps=steps,  # Steps per net (the same budget for every net).
          batch_size=batch_size,  # Examples per step per net.
          eval_every=eval_every,  # Full train/test evaluation interval (the history).
          chunk_steps=chunk_steps,  # Steps per compiled call; checkpoint + progress after each.
          eval_batch=500,  # Examples per evaluation chunk.
          fast_compile=False,  # XLA opt level 0: half the compile, twice the run time.
      ),
      probes=probes,  # Measure dead units, duty fractions, gradient norms at init and end.
  ))


def _degradation():
  return {
      "mlp": _grid("mlp", "spirals", widths=(16,), depths=(2, 4, 8, 16, 32),
                   variants=("plain", "residual"), norm="layer", steps=1500, batch_size=64,
                   eval_every=50, chunk_steps=500, probes=True),
      "conv": _grid("conv", "digits", widths=(8,), depths=(2, 4, 8),
                    variants=("plain", "residual"), norm="layer", steps=400, batch_size=32,
                    eval_every=50, chunk_steps=200, stem_pool=2, lr=3e-2, probes=True),
  }


def _dead_units():
  return {
      "mlp": _grid("mlp", "spirals", widths=(2, 3, 4, 8, 16, 32), depths=(2, 8, 16),
                   variants=("plain", "residual"), norm="none", branch_scale=True,
                   steps=1000, batch_size=64, eval_every=100, chunk_steps=500, probes=True),
  }


def _collapse():
  return {
      "bottleneck": _grid("bottleneck", "spirals", widths=(2, 3, 4, 6, 8, 12, 16, 24, 32),
                          depths=(1,), variants=("relu", "linear", "residual"),
                          steps=2000, batch_size=64, eval_every=100, chunk_steps=1000,
                          head_width=64, probes=True),
  }


def _bottleneck():
  return {
      "invres": _grid("invres", "digits", widths=(2, 4, 8, 16), depths=(2,),
                      variants=("linear", "relu6"), steps=600, batch_size=32,
                      eval_every=50, chunk_steps=200, head_width=64, expansion=6, stem_pool=2),
  }


def _convergence():
  return {
      "mlp": _grid("mlp", "spirals", widths=(16,), depths=(4, 8, 16),
                   variants=("plain", "residual"), norm="layer", steps=1500, batch_size=64,
                   eval_every=20, chunk_steps=500, data_options={"num_test": 300}),
  }


_GRIDS = {"degradation": _degradation, "dead_units": _dead_units, "collapse": _collapse,
          "bottleneck": _bottleneck, "convergence": _convergence}


def _shrink(config: ml_collections.ConfigDict) -> None:
  """Seconds instead of minutes: 2 seeds, small grids, few steps (CI)."""
  config.seeds = 2
  for grid in config.grids.values():
    model, train = grid.model, grid.train
    model.widths = tuple(sorted(model.widths))[:2]
    model.depths = tuple(sorted(model.depths))[:2]
    model.head_width = min(model.head_width, 8)
    train.steps, train.eval_every, train.chunk_steps, train.batch_size = 20, 10, 10, 16
    train.eval_batch = 200
    train.fast_compile = True
    if grid.data.name == "spirals":
      grid.data.options = {"num_train": 96, "num_test": 64}
    else:
      grid.data.options = {"num_test": 1697}  # 100 training images.
      grid.probes = False  # Image grids: spare CI the probes' compile.
  config.collapse.seeds = 2
  config.collapse.points = 200


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` = '<study>' or '<study>,tiny'."""
  parts = [p.strip() for p in (arg or "degradation").split(",") if p.strip()]
  name = parts[0] if parts else "degradation"
  config = ml_collections.ConfigDict()
  config.study = name  # One of STUDIES.
  config.seed = 0  # First seed; the nets use seeds seed .. seed + seeds - 1.
  config.seeds = 5 if name in ("bottleneck", "dead_units") else 8  # Seeds per condition.
  # Steps-to-target threshold on the full training loss (convergence study).
  config.target_loss = 0.3
  # The untrained collapse curve drawn beside the collapse study (resjax.collapse.sweep).
  config.collapse = ml_collections.ConfigDict(dict(
      activations=("relu",),  # Activations of the untrained curve.
      seeds=8,  # Random embeddings T per n.
      seed=0,  # Seed of the embeddings.
      chunk=0,  # Draws per vmapped chunk (0 = all at once).
      manifold=dict(name="spiral", dims=(2,), points=1000, turns=3.0),  # The 2-D spiral.
  ))
  config.grids = ml_collections.ConfigDict(
      _GRIDS[name]() if name in _GRIDS else {})  # Unknown names are rejected by resjax.study.
  if "tiny" in parts[1:]:
    _shrink(config)
  return config
