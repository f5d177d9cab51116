"""What the lstm, gru and rnn cells computed before the cell registry, for a bit-for-bit check.

`tests/data/old_cells.npz` holds `reference_outputs()` as computed by the code of commit 62452a4
(before the cells moved into `charrnn/cells.py`); `test_cells.py` recomputes it with today's code
and requires exact equality. Only the model-level API is used (ModelConfig, init_params,
initial_carry, CharRNN), which both versions share. To re-record (only ever from that commit):

    python tests/cell_reference.py tests/data/old_cells.npz
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import ModelConfig
from charrnn.model import CharRNN, init_params, initial_carry

CASES = [("lstm", "float32"), ("gru", "float32"), ("rnn", "float32"), ("lstm", "bfloat16"), ("gru", "bfloat16")]


def reference_outputs(cases: list[tuple[str, str]] = CASES) -> dict[str, dict[str, np.ndarray]]:
    """Per case: logits, final carry, initial parameters, and the gradient of every parameter and of
    the initial carry (float32 arrays named by their place in the tree)."""
    results = {}
    for cell, dtype in cases:
        config = ModelConfig(vocab_size=7, cell=cell, layers=2, hidden_size=5, embed_size=3, dtype=dtype)
        model = CharRNN(config, unroll=2 if cell == "rnn" else 1)
        params = init_params(config, jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 7)
        carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(2), c.shape) * 0.5, initial_carry(config, 2))

        def loss(params, carry, model=model, tokens=tokens):
            logits, final = model.apply({"params": params}, tokens, carry)
            weights = jnp.arange(logits.size, dtype=logits.dtype).reshape(logits.shape) / logits.size
            return jnp.sum(jnp.sin(logits) * weights) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

        logits, final = jax.jit(lambda p, c, model=model, tokens=tokens: model.apply({"params": p}, tokens, c))(
            params, carry
        )
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, carry)
        step_logits, _ = jax.jit(
            lambda p, c, model=model, tokens=tokens: model.apply({"params": p}, tokens[:, 0], c, method=CharRNN.step)
        )(params, carry)
        tree = {"logits": logits, "step_logits": step_logits, "params": params, "final": final, "grad": grads}
        results[f"{cell}-{dtype}"] = {name: np.asarray(leaf, np.float32) for name, leaf in _flatten(tree).items()}
    return results


def pack(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """One flat array per case (one npz entry each keeps the file a few KB)."""
    return np.concatenate([outputs[name].ravel() for name in sorted(outputs)])


def _flatten(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


if __name__ == "__main__":
    np.savez_compressed(sys.argv[1], **{case: pack(outputs) for case, outputs in reference_outputs().items()})
