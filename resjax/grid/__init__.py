"""Grids: one config, several values per axis, trained as one program.

A layer around the single run: `spec` turns `config.grid` into net configs
(net k is the single run with its settings), `padding` fits the nets into one
gated model, `state` stacks their initial states, `steps` vmaps / shards the
single run's steps over them, `layer.Grid` is what the training loop trains,
`summary` reduces the nets to one row per condition.
"""
from resjax.grid.layer import Grid
from resjax.grid.padding import crop, gates, mask, pad, stack
from resjax.grid.spec import (MAX_NETS, MODEL_AXES, OPT_AXES, TOGGLES, TRAIN_AXES, axes, calls,
                              condition, condition_name, config_group, count, describe_label,
                              grid_size, is_grid, labels, layout, needs_mask, nets,
                              padded_config, padded_fields, rules, validate)
from resjax.grid.state import (GridCalls, abstract_grid_state, create_grid_state,
                               initial_states)
from resjax.grid.steps import (MIN_CONV_FLOPS_PER_PARAM, MIN_HOST_GRID_FLOPS, grid_training_mesh,
                               grid_work, jit_steps, merge_calls)
from resjax.grid.summary import CONDITION_METRICS, condition_rows, condition_table
