"""Training: a state and a step.

`optimizer` (optax transformation and schedule), `state` (TrainState, born
sharded), `steps` (pure `train_step` / `eval_step`, jitted with explicit
shardings; evaluation), `mesh` (how many devices share the batch), `validate`
(the config checks), `faults` (Diverged, NotSaved), `single` (one net for the
loop) and `loop` (`train_and_evaluate`: saving, resuming, logging). Grids are
a layer around this: resjax/grid.
"""
from resjax.train.faults import Diverged, NotSaved
from resjax.train.loop import DATA_FIELDS, checkpoint_meta, load_data, train_and_evaluate
from resjax.train.mesh import data_mesh, forward_flops, trains_on_one_host_device
from resjax.train.optimizer import (DECAY_PARAMS, OPT_AXES, OPTIMIZERS, SCHEDULES, Optimizer,
                                    hyperparams, make_optimizer, make_schedule)
from resjax.train.state import (Preprocess, TrainState, abstract_train_state, build_model,
                                create_train_state, init_fn, state_sharding, step_of)
from resjax.train.steps import eval_step, evaluate, host_batch, jit_steps, train_step
from resjax.train.validate import rules, unused, validate
# A grid's state and mesh live in resjax/grid; these names stay here for the
# code that reaches them as train.X.
from resjax.grid.state import abstract_grid_state, create_grid_state, initial_states
from resjax.grid.steps import grid_training_mesh, merge_calls
