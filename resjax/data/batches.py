"""Index streams and batches: pure functions of (seed, step), so a resumed run sees the same data."""
from __future__ import annotations

import functools
import math
import queue
import threading
from typing import Any, Iterable, Iterator

import numpy as np

from resjax import errors
from resjax.data.dataset import Split


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  errors.check(global_batch >= 1, f"data.batch_size={global_batch} must be >= 1")
  errors.check(num_examples >= global_batch,
               f"data.batch_size={global_batch} exceeds the {num_examples} training "
               "examples; use a smaller batch")
  return num_examples // global_batch


def train_indices(step: int, *, seed: int, num_examples: int, global_batch: int) -> np.ndarray:
  """Example indices of the global training batch at `step`.

  Epoch e = step // steps_per_epoch visits a permutation drawn from (seed, e);
  the last num_examples % global_batch examples of each permutation are
  skipped. Depends only on its arguments, so resuming at `step` is exact.
  """
  errors.check(step >= 0, f"step={step} must be >= 0")
  per_epoch = steps_per_epoch(num_examples, global_batch)
  epoch, i = divmod(int(step), per_epoch)
  order = _epoch_permutation(int(seed), epoch, int(num_examples))
  return order[i * global_batch:(i + 1) * global_batch]


def local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """The contiguous rows of a global batch that process `process_index` feeds."""
  errors.check(process_count >= 1 and 0 <= process_index < process_count,
               f"process_index={process_index} must be in [0, {process_count})")
  errors.check(global_batch % process_count == 0,
               f"data.batch_size={global_batch} must be divisible by the "
               f"{process_count} processes")
  per_process = global_batch // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def train_batch(split: Split, step: int, *, seed: int, global_batch: int,
                process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
  """This process's rows of the training batch at `step`: {'inputs', 'labels'}."""
  indices = train_indices(step, seed=seed, num_examples=len(split), global_batch=global_batch)
  indices = indices[local_rows(global_batch, process_index, process_count)]
  return {"inputs": split.inputs[indices], "labels": split.labels[indices]}


def num_eval_batches(num_examples: int, global_batch: int) -> int:
  """How many batches `eval_batches` yields."""
  return math.ceil(num_examples / global_batch)


def eval_batches(split: Split, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields the whole split in order as {'inputs', 'labels', 'mask'} batches.

  Every batch has `global_batch` rows (one compiled shape); the last one is
  padded with zeros, and `mask` (float32) is 1 on real examples, 0 on padding.
  Each process slices its rows with `local_rows`.
  """
  errors.check(global_batch >= 1, f"eval batch size {global_batch} must be >= 1")
  n = len(split)
  for start in range(0, n, global_batch):
    stop = min(n, start + global_batch)
    if stop - start == global_batch:
      yield {"inputs": split.inputs[start:stop], "labels": split.labels[start:stop],
             "mask": np.ones((global_batch,), np.float32)}
      continue
    inputs = np.zeros((global_batch, *split.inputs.shape[1:]), split.inputs.dtype)
    labels = np.zeros((global_batch,), split.labels.dtype)
    mask = np.zeros((global_batch,), np.float32)
    inputs[:stop - start] = split.inputs[start:stop]
    labels[:stop - start] = split.labels[start:stop]
    mask[:stop - start] = 1.0
    yield {"inputs": inputs, "labels": labels, "mask": mask}


class _Failure:

  def __init__(self, exception: BaseException):
    self.exception = exception


_DONE = object()


def prefetch(iterable: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Iterates `iterable` in a background thread, keeping up to `size` items ready.

  Use it to overlap host batch assembly and host-to-device transfer with the
  compiled step, e.g. `prefetch(to_global(b) for b in batches)`. Exceptions in
  the producer are re-raised in the consumer; closing the iterator early stops
  the thread and waits (up to 30 s) for the item it is making.
  """
  errors.check(size >= 1, f"prefetch size={size} must be >= 1")
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(item):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))
    else:
      put(_DONE)

  thread = threading.Thread(target=produce, name="resjax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.exception
      yield item
  finally:
    stop.set()
    # Wait for the batch in progress: a daemon thread still inside JAX's C++
    # (a transfer) when the interpreter exits aborts the process.
    thread.join(timeout=30)
