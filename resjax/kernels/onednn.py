"""A CPU convolution through the XLA FFI into oneDNN, as a drop-in for lax's.

`conv_general_dilated` has the signature of `jax.lax.conv_general_dilated`.
It runs oneDNN's kernels (forward, input gradient and weight gradient, one FFI
call each, tied together by `jax.custom_vjp`) for what they cover: float32,
NHWC images, HWIO kernels, explicit padding, no dilation, no groups, compiled
for the CPU. Anything else, and every call where the library was not built,
goes to `jax.lax.conv_general_dilated` unchanged, so the choice never changes
what a model computes beyond float32 rounding.

The library (`_onednn_conv*.so`, from resjax/kernels/onednn_conv.cc) is built
by `pip install -e .` on x86-64 Linux, against the oneDNN headers of the
`onednn-devel-cpu-gomp` package, and runs on the `onednn-cpu-gomp` package's
libdnnl, which is loaded here first. `available()` says whether it loaded and
`unavailable_reason()` why not.

oneDNN parallelizes each call over OpenMP threads (one per core by default).
`set_threads(n)` sets that count; with several host devices running their
programs at once, one thread each keeps them from oversubscribing the cores.

The same library gives `materialize(x)`: x itself, through a call XLA's CPU
fusion cannot see into. A ResNet's residual stream is one: without it, XLA
fuses each block's BatchNorm, shortcut add and ReLU into every reader of the
block's output that is elementwise (the next shortcut add), so a stage's
stream was recomputed from its first block on at every block.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import importlib.machinery
import importlib.metadata
import os
import sys
from typing import Any, Callable, Sequence

import jax
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
import numpy as np

TARGETS = ("resjax_onednn_conv_fwd", "resjax_onednn_conv_bwd_data",
           "resjax_onednn_conv_bwd_weights", "resjax_materialize")
_SETTERS = ("resjax_onednn_jaxlib_version", "resjax_onednn_set_threads", "resjax_onednn_version")
_HERE = os.path.dirname(os.path.abspath(__file__))
_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _library_file() -> str | None:
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = os.path.join(_HERE, "_onednn_conv" + suffix)
    if os.path.exists(path):
      return path
  found = sorted(glob.glob(os.path.join(_HERE, "_onednn_conv*.so")))
  return found[0] if found else None


def _dnnl_candidates() -> list[str]:
  """Where libdnnl.so.3 may be: the onednn-cpu-gomp package's files, then prefixes."""
  out = []
  try:
    for f in importlib.metadata.files("onednn-cpu-gomp") or ():
      if f.name == "libdnnl.so.3":
        out.append(str(f.locate()))
  except importlib.metadata.PackageNotFoundError:
    pass
  for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix):
    out.append(os.path.join(prefix, "lib", "libdnnl.so.3"))
  return out


def _minor(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
  """(the library, '') or (None, why it is not there); registers the FFI targets."""
  if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
    return None, f"oneDNN convolutions are built only on x86-64 Linux, not {sys.platform}/{os.uname().machine}"
  path = _library_file()
  if path is None:
    return None, (f"the oneDNN convolution library is not built (no _onednn_conv*.so in "
                  f"{_HERE}); run `pip install -e .` with a C++ compiler")
  for candidate in _dnnl_candidates():  # Before the library, which links libdnnl.so.3.
    if os.path.exists(candidate):
      try:
        ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        break
      except OSError:
        continue
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    return None, f"the oneDNN convolution library did not load: {e}"
  missing = [name for name in TARGETS + _SETTERS if not hasattr(lib, name)]
  if missing:
    return None, f"the oneDNN convolution library {path} lacks {', '.join(missing)}; reinstall resjax"
  lib.resjax_onednn_jaxlib_version.restype = ctypes.c_char_p
  built = lib.resjax_onednn_jaxlib_version().decode()
  if built and _minor(jax.lib.__version__) < _minor(built):
    # A handler compiled against newer FFI headers than the runtime's.
    return None, (f"the oneDNN convolution library was built against jaxlib {built}, newer "
                  f"than the installed {jax.lib.__version__}; reinstall resjax")
  for name in TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  lib.resjax_onednn_set_threads.argtypes = [ctypes.c_int]
  return lib, ""


def _runs_here() -> bool:
  """Whether programs traced now compile for the CPU and the library loaded."""
  return jax.default_backend() == "cpu" and available()


def available() -> bool:
  """Whether the oneDNN convolution library is built and loaded."""
  return _load()[0] is not None


def unavailable_reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load()[1]


def version() -> str:
  """The oneDNN version the library runs on ('' when not available)."""
  lib = _load()[0]
  if lib is None:
    return ""
  v = lib.resjax_onednn_version()
  return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def set_threads(n: int) -> None:
  """Run every later oneDNN call on `n` OpenMP threads (0: OpenMP's default)."""
  lib = _load()[0]
  if lib is not None:
    lib.resjax_onednn_set_threads(int(n))


# ----------------------------------------------------------------------------
# The convolution and its gradients.


def _attrs(strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> dict[str, Any]:
  (pt, pb), (pl, pr) = padding
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pt), pad_bottom=np.int64(pb), pad_left=np.int64(pl),
              pad_right=np.int64(pr))


def _out_shape(x_shape, w_shape, strides, padding):
  n, h, w, _ = x_shape
  kh, kw, _, o = w_shape
  (pt, pb), (pl, pr) = padding
  return (n, (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1, o)


# Per FFI target: its Shardy sharding rule. Only the batch n may stay sharded
# (each device convolves its own images); the weight gradient sums over n,
# so a device's partial sum is all-reduced over the axes n is split over.
_RULES = ("n h w c, kh kw c o -> n oh ow o", "n oh ow o, kh kw c o -> n h w c",
          "n h w c, n oh ow o -> kh kw c o")


def _factors(rule: str) -> tuple[str, ...]:
  """The rule's factors other than n, in order of first appearance."""
  return tuple(dict.fromkeys(f for f in rule.replace(",", " ").replace("->", " ").split()
                             if f != "n"))


@functools.cache
def _op(kind: int, strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
        static: tuple[int, ...]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """FFI call `kind` (an index into TARGETS) with its attributes bound.

  `static`: the shape the operands do not give (bwd_data: the input's
  H, W, C; bwd_weights: the kernel's shape). Under the SPMD partitioner the
  call keeps its operands' batch split (`custom_partitioning`); under vmap it
  runs once per batch member (`custom_vmap`; the partitioner cannot batch).
  """
  _load()
  target, attrs, weight_grad = TARGETS[kind], _attrs(strides, padding), kind == 2

  def shape(a, b):
    if kind == 0:
      return _out_shape(a.shape, b.shape, strides, padding)
    return (a.shape[0], *static) if kind == 1 else static

  def plain(a, b):
    out = jax.ShapeDtypeStruct(shape(a, b), jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, **attrs)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    spec = arg_shapes[0].sharding.spec
    axes = spec[0] if len(spec) else None
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def lower(a, b):
      y = plain(a, b)
      return jax.lax.psum(y, axes) if weight_grad and axes is not None else y

    return mesh, lower, whole if weight_grad else batch, (batch, batch if weight_grad else whole)

  partitioned = custom_partitioning(plain)
  partitioned.def_partition(partition=partition, sharding_rule=_RULES[kind],
                            reduction_factors=("n",) if weight_grad else (),
                            need_replication_factors=_factors(_RULES[kind]))
  op = jax.custom_batching.custom_vmap(lambda a, b: partitioned(a, b))

  @op.def_vmap
  def _batched(axis_size, in_batched, a, b):
    del axis_size
    axes = tuple(0 if batched else None for batched in in_batched)
    return jax.vmap(plain, in_axes=axes)(a, b), True

  return op


def _varying_like(y: jax.Array, *like: jax.Array) -> jax.Array:
  """`y` marked varying over the manual mesh axes `like` vary over (inside
  shard_map, e.g. a grid's nets), which an FFI call's result does not carry."""
  def varying(a):
    aval = jax.typeof(a)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))
  want = frozenset().union(*(varying(a) for a in like))
  missing = tuple(sorted(want - varying(y)))
  return jax.lax.pcast(y, missing, to="varying") if missing else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """y = conv(x[N,H,W,C], w[KH,KW,C,O]) in float32 by oneDNN (needs `available()`)."""
  return _varying_like(_op(0, strides, padding, ())(x, w), x, w)


def _conv_fwd(x, w, strides, padding):
  return conv_nhwc(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, dy):
  x, w = residuals
  dx = _op(1, strides, padding, tuple(x.shape[1:]))(dy, w)
  dw = _op(2, strides, padding, tuple(w.shape))(x, dy)
  return _varying_like(dx, x), _varying_like(dw, w)


conv_nhwc.defvjp(_conv_fwd, _conv_bwd)


@functools.cache
def _materialize_op(ndim: int) -> Callable[[jax.Array], jax.Array]:
  """The `resjax_materialize` call on rank-`ndim` arrays: kept split as its
  operand is under the SPMD partitioner, batched as a whole under vmap."""
  _load()
  axes = " ".join(f"d{i}" for i in range(ndim))

  def plain(a):
    return jax.ffi.ffi_call(TARGETS[3], jax.ShapeDtypeStruct(a.shape, a.dtype),
                            vmap_method="broadcast_all", input_output_aliases={0: 0})(a)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    return mesh, plain, arg_shapes[0].sharding, (arg_shapes[0].sharding,)

  partitioned = custom_partitioning(plain)
  partitioned.def_partition(partition=partition, sharding_rule=f"{axes} -> {axes}")
  op = jax.custom_batching.custom_vmap(lambda a: partitioned(a))

  @op.def_vmap
  def _batched(axis_size, in_batched, a):
    del axis_size, in_batched
    return plain(a), True

  return op


@jax.custom_vjp
def _materialized(x: jax.Array) -> jax.Array:
  return _varying_like(_materialize_op(x.ndim)(x), x)


_materialized.defvjp(lambda x: (_materialized(x), None), lambda _, dy: (dy,))


def materialize(x: jax.Array) -> jax.Array:
  """x, written to memory once for every op that reads it (the identity, its
  gradient too): on the CPU where the library loaded, through an FFI call
  XLA cannot fuse into its readers; elsewhere x unchanged."""
  return _materialized(x) if _runs_here() else x


def _explicit_padding(padding, x_shape, w_shape, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def covers(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1) -> bool:
  """Whether oneDNN's kernels compute this `lax.conv_general_dilated` call."""
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  ones = lambda d: d is None or all(int(v) == 1 for v in d)
  return (dn == _NHWC_HWIO and lhs.ndim == 4 and lhs.dtype == jnp.float32
          and rhs.dtype == jnp.float32 and feature_group_count == 1 and batch_group_count == 1
          and ones(lhs_dilation) and ones(rhs_dilation) and _runs_here())


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`jax.lax.conv_general_dilated`, by oneDNN where `covers` says it can."""
  if preferred_element_type is None and covers(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count):
    strides = tuple(int(s) for s in window_strides)
    return conv_nhwc(lhs, rhs, strides, _explicit_padding(padding, lhs.shape, rhs.shape, strides))
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
