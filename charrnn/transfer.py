"""Continuing a trained model on new text (`charrnn train NEW.txt --init-from RUN`).

The child run's model has the parent's shape, with a vocabulary that may be longer: the parent's
characters keep their ids (see `Vocabulary.extended`), so they keep their embedding rows and
their output rows (the columns of ``head_kernel`` and entries of ``head_bias``); the rows of new
characters come from a freshly initialised model, exactly as a new run would have them. Every
other weight is the parent's.
"""

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from charrnn.config import ModelConfig
from charrnn.errors import RunError, UsageError
from charrnn.runs import Run
from charrnn.vocab import Vocabulary

# What the parent's weights fix:
STRUCTURE = (
    "cell", "layers", "hidden_size", "embed_size", "bidirectional", "direction_heads", "attention", "attention_keys"
)  # fmt: skip
# Model options a child takes from its parent unless given:
INHERITED = (*STRUCTURE, "dropout", "recurrent_dropout", "weight_drop", "dtype", "lookahead", "direction_weight")
# Structural options whose weights fit another value than the parent's: the attention head's
# weights do not depend on how many positions it reads, only on whether there is one.
FITS = {"attention": lambda given, parent: bool(given) == bool(parent)}


def parent_of(directory: Path) -> tuple[Run, ModelConfig, Vocabulary]:
    """The run to continue from, its model and vocabulary; one line if it is not a usable run."""
    parent = Run(directory)
    if not parent.exists():
        raise RunError("{parent}: not a charrnn run (no config.json)", settings={"parent": str(directory)})
    model_config, _, _ = parent.read_config()
    return parent, model_config, parent.read_vocab()


def child_model_options(parent: ModelConfig, given: dict[str, Any], parent_dir: Path) -> dict[str, Any]:
    """The child's model options: the parent's, except those the user gave; a given structural
    option whose weights would not fit the parent's is an error (see FITS for the one that may differ)."""

    def fits(name: str) -> bool:
        return FITS.get(name, lambda given, parent: given == parent)(given[name], getattr(parent, name))

    conflicts = [name for name in STRUCTURE if name in given and not fits(name)]
    if conflicts:
        shown = ", ".join(f"{{{n}}} (the parent has {getattr(parent, n)})" for n in conflicts)
        raise UsageError(
            f"{shown}: contradicts the model of {{parent}}; drop it to use the parent's",
            settings={**{n: given[n] for n in conflicts}, "parent": str(parent_dir)},
        )
    return {name: getattr(parent, name) for name in INHERITED} | given


def extend_params(parent_params: Any, fresh_params: Any, old_vocab_size: int) -> Any:
    """The parent's parameters, with the vocabulary-sized ones grown to the child's vocabulary:
    rows ``[:old_vocab_size]`` from the parent, the rest from `fresh_params` (a new model's init)."""

    def merge(path, parent_leaf, fresh_leaf):
        name = str(getattr(path[-1], "key", ""))
        if parent_leaf.shape == fresh_leaf.shape:
            return parent_leaf
        if name == "embedding":  # [V, E]
            return jnp.concatenate([parent_leaf, fresh_leaf[old_vocab_size:]], axis=0)
        if name == "head_kernel":  # [H, V]
            return jnp.concatenate([parent_leaf, fresh_leaf[:, old_vocab_size:]], axis=1)
        if name == "head_bias":  # [V]
            return jnp.concatenate([parent_leaf, fresh_leaf[old_vocab_size:]], axis=0)
        raise RunError(f"parameter {name} of the parent has shape {parent_leaf.shape}, not {fresh_leaf.shape}")

    return jax.tree_util.tree_map_with_path(merge, parent_params, fresh_params)
