"""Generic operations on streaming states: trees of dataclasses, NamedTuples, tuples and lists of tensors.

Every streaming module declares its own state type; these functions work on all of them, so a session can
be snapshotted (`clone_state`), restored, or assembled from per-row sessions (`stack_states`).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import Tensor

S = TypeVar("S")


def map_state(fn: Callable[[Tensor], Tensor], state: S) -> S:
    """Apply `fn` to every tensor of `state`, keeping its structure and its non-tensor fields."""
    if isinstance(state, Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: map_state(fn, getattr(state, f.name)) for f in dataclasses.fields(state)})
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(map_state(fn, x) for x in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, x) for x in state)
    return state


def clone_state(state: S) -> S:
    """A deep copy of the tensors: the copy and the original can be advanced independently."""
    return map_state(lambda t: t.clone(), state)


def stack_states(states: Sequence[Any]) -> Any:
    """Concatenate per-row states along the batch axis; non-tensor fields must agree."""
    first = states[0]
    if isinstance(first, Tensor):
        import torch

        return torch.cat(list(states), dim=0)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first, **{f.name: stack_states([getattr(s, f.name) for s in states]) for f in dataclasses.fields(first)}
        )
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(stack_states(list(xs)) for xs in zip(*states, strict=True)))
    if isinstance(first, (tuple, list)):
        return type(first)(stack_states(list(xs)) for xs in zip(*states, strict=True))
    if any(s != first for s in states):
        raise ValueError(f"cannot stack states whose fields differ: {[s for s in states]}")
    return first
