"""Tests for resjax.models: shapes, parameter counts, probe hooks, shortcuts, build()."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resjax import errors
from resjax import models

COLLECTIONS = list(models.COLLECTIONS)
NUM_CLASSES = 5

# Tiny configurations of every family (8x8 images keep the convs cheap).
TINY_RESNET = dict(depth=8, widths=(4, 8, 16))
TINY_INVRES = dict(expansion=2, stem_width=8, head_width=16, stages=((8, 2, 1), (16, 1, 2)))
TINY = {
    "mlp": ("mlp", dict(width=8, depth=3)),
    "mlp_residual_batch": ("mlp", dict(width=8, depth=3, residual=True, norm="batch")),
    "mlp_layer_gelu": ("mlp", dict(width=8, depth=2, norm="layer", activation="gelu")),
    "resnet": ("resnet", TINY_RESNET),
    "plain": ("resnet", dict(TINY_RESNET, plain=True)),
    "preact": ("resnet", dict(TINY_RESNET, preact=True)),
    "invres": ("invres", TINY_INVRES),
    "invres_relu6_noshortcut": ("invres", dict(TINY_INVRES, bottleneck="relu6",
                                               shortcut=False)),
    "invres_frozen_shift": ("invres", dict(TINY_INVRES, bottleneck_bn_shift="frozen")),
}


def _images(batch=4, size=8, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def _variables(model, x, seed=0):
  """Random variables with the model's tree, drawn with NumPy.

  Random BatchNorm scales, biases and statistics make every unit's behaviour
  input-dependent, and NumPy avoids compiling JAX's random-bit kernels, which
  is slow on the CPU. The real initializers are tested separately.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(shapes) == {"params", "batch_stats"} or set(shapes) == {"params"}
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name == "var":
      value = rng.uniform(0.5, 1.5, shape)
    elif name == "scale":
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = 0.3 * rng.standard_normal(shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


_CACHE = {}


def _init(key):
  """(model, variables, x) for a TINY configuration; cached across tests."""
  if key not in _CACHE:
    name, kwargs = TINY[key]
    model = models.build(name, NUM_CLASSES, **kwargs)
    x = _images()
    _CACHE[key] = (model, _variables(model, x), x)
  return _CACHE[key]


def _resnet_params(n):
  """Parameters of the 3-stage {16, 32, 64} option-A ResNet, counted by hand."""
  convs = 9 * (3 * 16 + 2 * n * 16 * 16 + 16 * 32 + (2 * n - 1) * 32 * 32
               + 32 * 64 + (2 * n - 1) * 64 * 64)
  bn_channels = 16 + 2 * n * (16 + 32 + 64)
  return convs + 2 * bn_channels + 64 * 10 + 10


def _invres_params(stem=16, stages=models.CIFAR_STAGES, t=6, head=256, classes=10):
  """Parameters of the default inverted residual network, counted by hand."""
  total = 27 * stem + 2 * stem
  c = stem
  for width, blocks, _ in stages:
    for _ in range(blocks):
      hidden = c * t
      expand = c * hidden + 2 * hidden if t != 1 else 0
      total += expand + 9 * hidden + 2 * hidden + hidden * width + 2 * width
      c = width
  return total + c * head + 2 * head + head * classes + classes


@functools.lru_cache(maxsize=None)
def _shapes(name, **kwargs):
  """Abstract variables of a full-size model (tracing only, nothing compiles)."""
  model = models.build(name, 10, **kwargs)
  return model, jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("depth,paper", [(20, 269_722), (32, None), (44, None),
                                         (56, 853_018), (110, 1_727_962)])
def test_resnet_param_counts(depth, paper):
  _, shapes = _shapes("resnet", depth=depth)
  count = models.param_count(shapes["params"])
  assert count == _resnet_params((depth - 2) // 6)
  if paper is not None:
    assert count == paper
  # BatchNorm running statistics are not parameters.
  assert models.param_count(shapes["batch_stats"]) == 2 * (16 + (depth - 2) // 6 * 224)


@pytest.mark.parametrize("depth", [20, 56])
def test_plain_and_preact_have_the_same_parameters(depth):
  _, residual = _shapes("resnet", depth=depth)
  _, plain = _shapes("resnet", depth=depth, plain=True)
  _, preact = _shapes("resnet", depth=depth, preact=True)
  assert plain == residual  # same names, shapes and dtypes
  assert models.param_count(preact["params"]) == models.param_count(residual["params"])


@pytest.mark.parametrize("name,kwargs", [("resnet", {}), ("resnet", dict(preact=True)),
                                         ("invres", {})])
def test_full_size_models_give_float32_logits(name, kwargs):
  model, shapes = _shapes(name, **kwargs)
  out = jax.eval_shape(model.apply, shapes, jnp.zeros((2, 32, 32, 3)))
  assert out.shape == (2, 10) and out.dtype == jnp.float32
  if name == "invres":
    assert models.param_count(shapes["params"]) == _invres_params()


def _both_modes(model, variables, x):
  """Train-mode (logits, updated stats) and eval-mode (logits, taps)."""
  train = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return train, model.apply(variables, x, train=False, mutable=COLLECTIONS)


# Every family and block type; 'plain' and the ReLU6-bottleneck variant only
# flip switches and run eagerly in the tests below.
@pytest.mark.parametrize("key", ["mlp", "mlp_residual_batch", "mlp_layer_gelu", "resnet",
                                 "preact", "invres"])
def test_shapes_and_finiteness_with_and_without_jit(key):
  model, variables, x = _init(key)
  eager = _both_modes(model, variables, x)
  jitted = jax.jit(functools.partial(_both_modes, model))(variables, x)
  for (train_logits, stats), (eval_logits, taps) in (eager, jitted):
    for out in (train_logits, eval_logits):
      assert out.shape == (x.shape[0], NUM_CLASSES) and out.dtype == jnp.float32
      assert bool(jnp.all(jnp.isfinite(out)))
    assert set(stats) == ({"batch_stats"} if "batch_stats" in variables else set())
    assert jax.tree.structure(stats.get("batch_stats")) == jax.tree.structure(
        variables.get("batch_stats"))
    # Sown names survive jit (which orders dict keys alphabetically).
    assert sorted(taps["preacts"]) == sorted(_expected_preacts(key))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               eager, jitted)
  if TINY[key][0] == "mlp":  # MLPs flatten any input shape.
    flat = model.apply(variables, x.reshape(x.shape[0], -1), train=False)
    np.testing.assert_allclose(flat, eager[1][0], rtol=1e-5, atol=1e-6)


def test_init_gives_he_normal_kernels_and_no_sown_values():
  model = models.build("resnet", NUM_CLASSES, depth=8, widths=(4, 4, 4))
  # An 'rbg' key: its random bits compile much faster on the CPU than threefry.
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), _images(1))
  assert set(variables) == {"params", "batch_stats"}
  params = variables["params"]
  kernels = np.concatenate([np.ravel(params[f"stage{s}_block0"][f"conv{c}"]["kernel"])
                            for s in (1, 2, 3) for c in (1, 2)])
  # He normal, fan_out = 3 * 3 * 4; 864 draws give the std to about 2.4%.
  np.testing.assert_allclose(np.std(kernels), np.sqrt(2 / (9 * 4)), rtol=0.1)
  assert abs(float(np.mean(kernels))) < 0.05
  assert "bias" not in params["stage1_block0"]["conv1"]  # convs have no bias
  bn = params["stage1_block0"]["bn1"]
  np.testing.assert_array_equal(bn["scale"], 1)
  np.testing.assert_array_equal(bn["bias"], 0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = model.apply(variables, _images(1))
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_batch_norm_statistics_update_in_train_mode_only():
  model, variables, x = _init("resnet")
  _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
  conv_BxHxWxC = state["intermediates"]["stem_conv"]["__call__"][0]
  old, new = variables["batch_stats"]["stem_bn"], state["batch_stats"]["stem_bn"]
  # Momentum 0.9 and the biased batch variance.
  np.testing.assert_allclose(
      new["mean"], 0.9 * old["mean"] + 0.1 * conv_BxHxWxC.mean(axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      new["var"], 0.9 * old["var"] + 0.1 * conv_BxHxWxC.var(axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-6)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         state["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode reads the running statistics, so new statistics change its logits.
  before = model.apply(variables, x, train=False)
  after = model.apply({**variables, "batch_stats": state["batch_stats"]}, x, train=False)
  assert not np.allclose(before, after)
  # Train mode normalizes with the batch's own statistics instead.
  train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(train_logits, before)


def _expected_preacts(key):
  """Activation inputs in forward order, derived from the configuration alone."""
  name, kw = TINY[key]
  if name == "mlp":
    return [f"layer{i}" for i in range(kw["depth"])]
  if name == "resnet":
    n = (kw["depth"] - 2) // 6
    names = [] if kw.get("preact") else ["stem"]
    for s in range(1, 4):
      for b in range(n):
        names += [f"stage{s}/block{b}/act1", f"stage{s}/block{b}/act2"]
    return names + (["final"] if kw.get("preact") else [])
  names = ["stem"]
  for s, (_, blocks, _) in enumerate(kw["stages"], start=1):
    for b in range(blocks):
      names += [f"stage{s}/block{b}/expand", f"stage{s}/block{b}/depthwise"]
      if kw.get("bottleneck") == "relu6":
        names.append(f"stage{s}/block{b}/bottleneck")
  return names + ["head"]


def _expected_shortcuts(key):
  name, kw = TINY[key]
  if name == "mlp":
    return [f"block{i}" for i in range(1, kw["depth"])] if kw.get("residual") else []
  if name == "resnet":
    n = (kw["depth"] - 2) // 6
    blocks = [f"stage{s}/block{b}" for s in range(1, 4) for b in range(n)]
    return [] if kw.get("plain") else blocks
  # Stride 1 and unchanged width: the two blocks of stage1 (8 -> 8).
  return ["stage1/block0", "stage1/block1"] if kw.get("shortcut", True) else []


@pytest.mark.parametrize("key", list(TINY))
def test_preacts_are_sown_in_forward_order_without_changing_outputs(key):
  model, variables, x = _init(key)
  for train in (False, True):
    mutable = COLLECTIONS + (["batch_stats"] if train else [])
    logits, taps = model.apply(variables, x, train=train, mutable=mutable)
    plain_logits = model.apply(variables, x, train=train,
                               mutable=["batch_stats"] if train else False)
    if train:
      plain_logits = plain_logits[0]
    np.testing.assert_array_equal(logits, plain_logits)
    assert list(taps["preacts"]) == _expected_preacts(key)
    # Each name is sown exactly once.
    for collection in COLLECTIONS:
      for value in taps.get(collection, {}).values():
        assert isinstance(value, tuple) and len(value) == 1
    assert list(taps.get("shortcut", {})) == _expected_shortcuts(key)
    preacts = models.probe_tensors(taps)
    assert all(v.shape[0] == x.shape[0] for v in preacts.values())
  # sown_names recovers the forward order that jit's sorted dicts lose.
  assert list(models.sown_names(model, x.shape[1:])) == _expected_preacts(key)
  assert list(models.sown_names(model, x.shape[1:], "shortcut")) == _expected_shortcuts(key)


def _blocks(state):
  """Captured (output, taps) of every block module, by probe block name."""
  out = {}
  for module, calls in state["intermediates"].items():
    if "_block" in module:
      out[module.replace("_", "/")] = calls["__call__"][0]
  return out


@pytest.mark.parametrize("key", ["resnet", "preact", "invres", "invres_relu6_noshortcut"])
def test_block_output_is_shortcut_plus_branch(key):
  model, variables, x = _init(key)
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=COLLECTIONS + ["intermediates"])
  blocks = _blocks(state)
  assert blocks and set(state["branch"]) == set(blocks)
  preacts = models.probe_tensors(state)
  for name, (y, _) in blocks.items():
    b = state["branch"][name][0]
    total = b + state["shortcut"][name][0] if name in state.get("shortcut", {}) else b
    if key == "resnet":  # the original applies the activation after the addition
      np.testing.assert_allclose(preacts[f"{name}/act2"], total, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(y, jax.nn.relu(total), rtol=1e-6, atol=1e-6)
    else:
      np.testing.assert_allclose(y, total, rtol=1e-6, atol=1e-6)


def test_residual_mlp_stream_is_shortcut_plus_branch():
  name, kw = TINY["mlp_residual_batch"]
  model = models.build(name, NUM_CLASSES, **dict(kw, norm=None))
  x = _images()
  variables = _variables(model, x)
  _, taps = model.apply(variables, x, mutable=COLLECTIONS)
  preacts = models.probe_tensors(taps)
  for i in range(1, kw["depth"]):
    s, b = taps["shortcut"][f"block{i}"][0], taps["branch"][f"block{i}"][0]
    # Without normalization, layer i's activation input is block i's output.
    np.testing.assert_allclose(preacts[f"layer{i}"], s + b, rtol=1e-6)
    assert not np.allclose(s, 0) and not np.allclose(b, 0)


def test_option_a_shortcut_and_stride_2_alignment():
  model, variables, x = _init("resnet")
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=COLLECTIONS + ["intermediates"])
  n = (TINY_RESNET["depth"] - 2) // 6
  x_in = state["intermediates"][f"stage1_block{n - 1}"]["__call__"][0][0]
  s = state["shortcut"]["stage2/block0"][0]
  c_in = x_in.shape[-1]
  assert s.shape == (x.shape[0], 4, 4, TINY_RESNET["widths"][1])
  np.testing.assert_array_equal(s[..., :c_in], x_in[:, ::2, ::2, :])
  np.testing.assert_array_equal(s[..., c_in:], 0)
  # The stride-2 conv sees the pixels the shortcut keeps: it equals the
  # stride-1 conv sampled at even positions.
  kernel = variables["params"]["stage2_block0"]["conv1"]["kernel"]
  full = jax.lax.conv_general_dilated(x_in, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  strided = state["intermediates"]["stage2_block0"]["conv1"]["__call__"][0]
  np.testing.assert_allclose(strided, full[:, ::2, ::2, :], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key,switch", [("resnet", dict(plain=True)),
                                        ("preact", dict(plain=True)),
                                        ("invres", dict(shortcut=False)),
                                        ("mlp_residual_batch", dict(residual=False))])
def test_switching_shortcuts_off_keeps_everything_else(key, switch):
  model, variables, x = _init(key)
  name, kwargs = TINY[key]
  plain = models.build(name, NUM_CLASSES, **dict(kwargs, **switch))
  # The same variable tree (names, shapes, dtypes): no parameter added or removed.
  assert jax.eval_shape(plain.init, jax.random.key(0), x) == jax.eval_shape(
      model.init, jax.random.key(0), x)
  out, taps = model.apply(variables, x, mutable=COLLECTIONS)
  out_plain, taps_plain = plain.apply(variables, x, mutable=COLLECTIONS)
  assert "shortcut" in taps and "shortcut" not in taps_plain
  assert list(taps["branch"]) == list(taps_plain["branch"])
  assert list(taps["preacts"]) == list(taps_plain["preacts"])
  # Everything before the first shortcut is shared, so the first branch agrees.
  first = next(iter(taps["branch"]))
  np.testing.assert_allclose(taps["branch"][first][0], taps_plain["branch"][first][0],
                             rtol=1e-6)
  assert not np.allclose(out, out_plain)


def test_plain_resnet_block_is_activation_of_branch():
  model, variables, x = _init("plain")
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=COLLECTIONS + ["intermediates"])
  preacts = models.probe_tensors(state)
  for name, (y, _) in _blocks(state).items():
    np.testing.assert_array_equal(preacts[f"{name}/act2"], state["branch"][name][0])
    np.testing.assert_allclose(y, jax.nn.relu(state["branch"][name][0]), rtol=1e-6)


def test_compute_dtype_keeps_float32_parameters():
  model, variables, x = _init("resnet")
  half = models.build("resnet", NUM_CLASSES, dtype="bfloat16", **TINY_RESNET)
  assert jax.eval_shape(half.init, jax.random.key(0), x) == jax.eval_shape(
      model.init, jax.random.key(0), x)  # float32 parameters
  logits, taps = jax.jit(lambda v, x: half.apply(v, x, mutable=COLLECTIONS))(variables, x)
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  assert all(v.dtype == jnp.bfloat16 for v in models.probe_tensors(taps).values())
  reference = model.apply(variables, x)
  scale = float(jnp.max(jnp.abs(reference)))
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale)


def test_probe_tensors_rejects_values_sown_twice():
  model, variables, x = _init("mlp")
  _, taps = model.apply(variables, x, mutable=COLLECTIONS)
  # Feeding sown values back in makes sow append a second value.
  _, again = model.apply({**variables, **taps}, x, mutable=COLLECTIONS)
  with pytest.raises(ValueError, match="not 1"):
    models.probe_tensors(again)


def test_build_normalizes_config_values():
  model = models.build("invres", 10, stages=[[8, 1, 1], [16, 1, 2]], dtype="float32")
  assert model.stages == ((8, 1, 1), (16, 1, 2)) and model.dtype == jnp.float32
  hash(model)  # jit needs hashable modules (static apply_fn)
  hash(models.ResNet(widths=[4, 8, 16]))
  assert isinstance(models.build("mlp", 3), nn.Module)
  assert "widths" in models.fields("resnet") and "num_classes" not in models.fields("mlp")


@pytest.mark.parametrize("name,kwargs,field", [
    ("vgg", {}, "model.name"),
    ("resnet", dict(depth=21), "model.depth"),
    ("resnet", dict(depth=20.0), "model.depth"),
    ("resnet", dict(widths=(32, 16, 64)), "model.widths"),
    ("resnet", dict(widths=(16, 0, 64)), "model.widths"),
    ("resnet", dict(depth=20, widths=(16, 32, 64, 128)), "model.depth"),
    ("resnet", dict(plain="yes"), "model.plain"),
    ("resnet", dict(activation="swish"), "model.activation"),
    ("resnet", dict(dtype="int8"), "model.dtype"),
    ("resnet", dict(blocks=3), "model.blocks"),
    ("mlp", dict(width=0), "model.width"),
    ("mlp", dict(depth=0), "model.depth"),
    ("mlp", dict(norm="group"), "model.norm"),
    ("invres", dict(bottleneck="relu"), "model.bottleneck"),
    ("invres", dict(expansion=0), "model.expansion"),
    ("invres", dict(width_multiplier=0), "model.width_multiplier"),
    ("invres", dict(stages=((16, 1, 3),)), "model.stages"),
])
def test_build_rejects_bad_values_in_one_line(name, kwargs, field):
  with pytest.raises(errors.ConfigError) as info:
    models.build(name, 10, **kwargs)
  message = str(info.value)
  assert field in message and "\n" not in message


def test_build_accepts_general_depths():
  assert models.build("resnet", 10, depth=8).blocks_per_stage == 1
  assert models.build("resnet", 10, depth=26, widths=(8, 16, 32, 64)).blocks_per_stage == 3
  with pytest.raises(errors.ConfigError):
    models.build("resnet", 0)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet", {}, "resnet-20"),
    ("resnet", dict(depth=56, plain=True), "plain-56"),
    ("resnet", dict(depth=110, preact=True), "preact-resnet-110"),
    ("mlp", {}, "mlp-4x64"),
    ("mlp", dict(depth=8, width=16, residual=True), "residual-mlp-8x16"),
    ("invres", {}, "invres (linear bottleneck)"),
    ("invres", dict(bottleneck="relu6", shortcut=False), "invres (relu6 bottleneck, no shortcut)"),
    ("firstlayer", dict(first="linear"), "firstlayer"),
])
def test_describe_names_a_net_from_its_fields(name, kwargs, expected):
  assert models.describe(name, kwargs) == expected
  config = ml_collections.ConfigDict(dict(name=name, **kwargs))
  assert models.describe(name, config) == expected


def test_traits_give_width_depth_and_variant():
  assert models.traits("mlp", dict(width=8, depth=3)) == (8, 3, "plain")
  assert models.traits("resnet", dict(widths=[4, 8], depth=14, plain=False)) == (
      4, 14, "residual")
  assert models.traits("invres", dict(stages=[[2, 3, 1]], bottleneck="relu6")) == (
      2, 3, "relu6")
  assert models.traits("firstlayer", dict(width=5, first="residual")) == (5, 1, "residual")


def test_bottleneck_bn_shift_frozen_drops_only_the_bottleneck_shift():
  x = _images()
  learned = models.build("invres", NUM_CLASSES, **TINY_INVRES)
  frozen = models.build("invres", NUM_CLASSES, bottleneck_bn_shift="frozen", **TINY_INVRES)
  v = learned.init(jax.random.key(0), x)
  # 'learned' is the default: the same parameters, bit for bit.
  same = models.build("invres", NUM_CLASSES, bottleneck_bn_shift="learned", **TINY_INVRES)
  jax.tree.map(np.testing.assert_array_equal, v, same.init(jax.random.key(0), x))
  w = frozen.init(jax.random.key(0), x)
  for block in ("stage1_block0", "stage1_block1", "stage2_block0"):
    assert set(w["params"][block]["project_bn"]) == {"scale"}
    assert set(w["params"][block]["depthwise_bn"]) == {"scale", "bias"}
  # With its shift at 0 the learned net computes what the frozen one does; not at 0.5.
  for shift, same_output in ((0.5, False), (0.0, True)):
    for block in ("stage1_block0", "stage1_block1", "stage2_block0"):
      bn = v["params"][block]["project_bn"]
      bn["bias"] = jnp.full_like(bn["bias"], shift)
      w["params"][block]["project_bn"]["scale"] = bn["scale"]
    out_v, out_w = learned.apply(v, x), frozen.apply(w, x)
    assert np.array_equal(out_v, out_w) == same_output
  assert models.describe("invres", {"bottleneck_bn_shift": "frozen"}) == (
      "invres (linear bottleneck, frozen BN shift)")
  assert models.padded_values("invres") == {"bottleneck_bn_shift": "learned"}
  assert models.padded_values("mlp") == {}
  with pytest.raises(errors.ConfigError, match="model.bottleneck_bn_shift='fixed' is not "
                     "allowed; choose one of: learned, frozen"):
    models.build("invres", NUM_CLASSES, bottleneck_bn_shift="fixed")


def test_toggles_are_declared_beside_each_family():
  assert models.TOGGLES["resnet"]["plain"][0] == "shortcut"
  assert models.TOGGLES["invres"]["bottleneck"][1]("relu6") == 0.0
  assert models.TOGGLE_PADDED == {"residual": True, "plain": False, "shortcut": True,
                                  "bottleneck": "linear", "first": "residual"}
  assert models.toggles("nope") == {}
  for name, cls in models.MODELS.items():
    # Every toggle's gate is one the padded, gated model reads.
    padded = {field: t.padded for field, t in models.toggles(name).items()}
    model = models.build(name, NUM_CLASSES, gated=True, **padded,
                         **({"depth": 14, "widths": (4, 8)} if name == "resnet" else {}))
    shapes = jax.eval_shape(model.init, jax.random.key(0), _images())
    assert {t.gate for t in cls.TOGGLES.values()} <= set(shapes["gates"]), name


@pytest.mark.parametrize("key", sorted(TINY))
def test_a_gated_model_sows_what_the_single_net_sows(key):
  """One code path: the gated (grid) model sows every tap of the net it stands
  for, in the same order (and more where its gates may switch a path on)."""
  name, kwargs = TINY[key]
  single = models.build(name, NUM_CLASSES, **kwargs)
  gated = models.build(name, NUM_CLASSES, gated=True, **kwargs)
  for collection in COLLECTIONS:
    mine = models.sown_names(single, (8, 8, 3), collection)
    padded = models.sown_names(gated, (8, 8, 3), collection)
    assert [n for n in padded if n in mine] == list(mine), (collection, padded)
