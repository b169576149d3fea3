"""CIFAR-10 ResNets, plain nets and inverted-residual ablations, He et al. recipe.

  python -m launch.train --config=configs/cifar10.py:resnet20 --workdir=/tmp/resnet20

Variants after the colon: resnet20/32/44/56/110, plain20/32/44/56/110,
preact20/56/110, invres_linear, invres_relu6 (default resnet20). Any field can
be overridden, e.g. `--config.data.name=cifar100` or `--config.train.steps=32000`.
The data must be prepared once: `tfds build cifar10 --file_format=array_record`.

Recipe (He et al. 2016, Sec. 4.2): SGD momentum 0.9, batch 128, weight decay
1e-4 (coupled L2 on every parameter), lr 0.1 divided by 10 at 32k and 48k
steps, 64k steps; 4-pixel zero pad + random 32x32 crop + horizontal flip;
depth >= 110 warms up at lr 0.01 for the first 400 steps. As in the paper, the
per-pixel mean of the training images is subtracted (`data.normalize=
'per_pixel_mean'`; inputs are then divided by the per-channel std around it,
which the paper does not state, to keep them at unit scale as per_channel
does); `--config.data.normalize=per_channel` normalizes per channel instead.

`table6`: {ResNet, plain} x depth {20, 32, 44, 56} x seeds {0, 1, 2}, 24 nets
in one run, trained as 4 compiled calls (one per depth, 6 nets each, so no net
is padded); the run ends with test error per condition, mean and 95% interval
over the seeds, beside the published errors (conditions.csv, nets.csv).

Expected CIFAR-10 test error (`eval/error` in metrics.jsonl at step 64000),
from the papers:
  resnet20 8.75%, resnet32 7.51%, resnet44 7.17%, resnet56 6.97%,
  resnet110 6.43% (6.61 +- 0.16 over 5 runs); preact110 6.37%.
  Plain nets get worse with depth (He et al. Fig. 6: plain56 trains and tests
  worse than plain20), residual nets better.
  invres_linear should beat invres_relu6 (MobileNetV2 Fig. 6a: the linear
  bottleneck wins; the gap on ImageNet is several percent).
"""
import ml_collections
from ml_collections import config_dict

from resjax import errors
from resjax import grid

DEPTHS = (20, 32, 44, 56, 110)
PREACT_DEPTHS = (20, 56, 110)
VARIANTS = (tuple(f"resnet{d}" for d in DEPTHS) + tuple(f"plain{d}" for d in DEPTHS)
            + tuple(f"preact{d}" for d in PREACT_DEPTHS)
            + ("invres_linear", "invres_relu6", "table6"))
# He et al. 2016, Table 6: CIFAR-10 test error of the option-A ResNets.
PUBLISHED_ERROR = {20: 0.0875, 32: 0.0751, 44: 0.0717, 56: 0.0697, 110: 0.0643}


def table6(config: ml_collections.ConfigDict, depths, seeds=(0, 1, 2)) -> None:
  """Turns a ResNet config into He et al.'s comparison: {ResNet, plain} x `depths`
  x `seeds` as one grid, one compiled call per depth (its 2 x len(seeds) nets
  share one unpadded program)."""
  config.grid.model.depth = tuple(depths)
  config.grid.model.plain = (False, True)
  config.grid.seeds = tuple(seeds)
  config.grid.nets_per_call = 2 * len(seeds)


def base_config() -> ml_collections.ConfigDict:
  """He et al.'s CIFAR-10 recipe with a ResNet-20; variants change `model`."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Initialization, data order and augmentation.

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet"  # One of resjax.models.MODELS; other keys are its fields.

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # Any resjax.data.NAMES entry (cifar100, svhn_cropped, ...).
  config.data.data_dir = config_dict.placeholder(str)  # tfds data_dir; None = tfds default.
  config.data.seed = 0  # Generates the embedded datasets; unused by tfds ones.
  config.data.batch_size = 128  # Global batch, split over all devices.
  config.data.augment = True  # Random crop after zero padding + horizontal flip.
  config.data.pad = 4  # Zero padding (pixels per side) before the random crop.
  config.data.flip = True  # Random horizontal flips.

  config.opt = ml_collections.ConfigDict()
  config.opt.name = "sgd"  # sgd | adam | adamw.
  config.opt.lr = 0.1  # Peak learning rate.
  config.opt.momentum = 0.9  # SGD momentum (0 = plain SGD).
  config.opt.nesterov = False  # Nesterov momentum.
  config.opt.weight_decay = 1e-4  # Coupled L2 (decoupled for adamw).
  config.opt.decay_params = "all"  # all | kernels: which parameters weight decay touches.
  config.opt.schedule = "piecewise"  # constant | piecewise | cosine.
  config.opt.boundaries = (32000, 48000)  # piecewise: steps where lr is multiplied by decay.
  config.opt.decay = 0.1  # piecewise: the factor at each boundary.
  config.opt.warmup_steps = 0  # Steps at the constant warmup_lr before the schedule.
  config.opt.warmup_lr = 0.01  # The warm-up learning rate.

  config.train = ml_collections.ConfigDict()
  config.train.steps = 64000  # Training steps (iterations).
  config.train.log_every = 100  # Steps between progress lines / train metrics.
  config.train.eval_every = 4000  # Steps between test-split evaluations (0 = end only).
  config.train.checkpoint_every = 2000  # Steps between checkpoints (0 = end only).
  config.train.keep_checkpoints = 0  # Checkpoints kept (0 = all, for the analyses).
  config.train.eval_train = False  # Also evaluate the whole training split (eval_train/...).
  config.train.eval_batch_size = 0  # Evaluation batch: a multiple of data.batch_size (0 = it).
  # A grid's nets on a device: vmap | map (one after another) | auto (by family and platform).
  config.train.grid_layout = "auto"
  config.train.probe_every = 0  # Steps between probes of every layer (0 = none; probes.jsonl).
  config.train.probe_batch = 256  # Training examples probed (one fixed draw from data.seed).
  config.train.dormant_tau = 0.1  # ReDo's threshold: a unit scoring <= tau is dormant.
  config.train.reset_dead_every = 0  # Steps between resets of dormant units (ReDo; 0 = none).

  # Several nets in one program: values per axis (their product), e.g.
  # --config.grid.seeds=0,1,2 or --config.grid.model.depth=20,56 (resjax/grid/).
  config.grid = grid.config_group()
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config for one variant (see the module docstring)."""
  arg = arg or "resnet20"
  errors.choice("config variant", arg, VARIANTS)
  config = base_config()
  # He et al.: subtract the per-pixel mean (per_channel: mean and std per channel).
  config.data.normalize = "per_pixel_mean"
  if arg == "table6":
    config = get_config("resnet20")
    table6(config, DEPTHS[:4])
    config.published = ml_collections.ConfigDict(dict(
        metric="eval/error",  # Compared with the published number of each condition.
        source="He et al. 2016, Table 6 (residual nets; plain nets: Fig. 6, no table)",
        conditions=tuple(f"model.depth={d} model.plain=False" for d in DEPTHS[:4]),
        values=tuple(PUBLISHED_ERROR[d] for d in DEPTHS[:4]),
    ))
    return config
  if arg.startswith("invres"):
    config.model = ml_collections.ConfigDict(dict(
        name="invres",
        expansion=6,  # Expansion factor t of every block.
        bottleneck=arg.split("_")[1],  # linear | relu6: the block output activation.
        # learned | frozen: the bottleneck BatchNorm's shift (beta) trained or held at 0.
        bottleneck_bn_shift="learned",
        shortcut=True,  # Identity shortcuts between bottlenecks.
        activation="relu6",  # Inside the blocks.
    ))
    return config
  family = arg.rstrip("0123456789")
  depth = int(arg[len(family):])
  config.model.depth = depth  # 6n+2.
  config.model.plain = family == "plain"  # No shortcuts, same parameters.
  config.model.preact = family == "preact"  # Full pre-activation blocks.
  config.model.widths = (16, 32, 64)  # Filters per stage.
  config.model.activation = "relu"  # resjax.activations name.
  # xla | onednn: oneDNN's CPU convolution through the XLA FFI (faster on the
  # CPU, same losses; resjax/kernels); XLA's own on GPU/TPU or where not built.
  config.model.conv_impl = "onednn"
  if depth >= 110:
    config.opt.warmup_steps = 400
  return config
