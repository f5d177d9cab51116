import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.model import CharRNN, init_params, initial_carry


@pytest.fixture(params=["lstm", "gru", "rnn"])
def model_setup(request):
    config = ModelConfig(vocab_size=11, cell=request.param, layers=2, hidden_size=16, embed_size=8)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 11)
    return config, CharRNN(config), params, tokens


def test_two_windows_with_carried_state_equal_one_pass(model_setup):
    config, model, params, tokens = model_setup
    whole, carry_whole = model.apply({"params": params}, tokens, initial_carry(config, 3))
    first, carry = model.apply({"params": params}, tokens[:, :5], initial_carry(config, 3))
    second, carry = model.apply({"params": params}, tokens[:, 5:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_single_steps_equal_the_scan(model_setup):
    config, model, params, tokens = model_setup
    whole, _ = model.apply({"params": params}, tokens, initial_carry(config, 3))
    carry, outputs = initial_carry(config, 3), []
    for t in range(tokens.shape[1]):
        logits, carry = model.apply({"params": params}, tokens[:, t], carry, method=CharRNN.step)
        outputs.append(logits)
    np.testing.assert_allclose(jnp.stack(outputs, axis=1), whole, rtol=1e-5, atol=1e-5)


def test_initialisation_follows_the_recipe():
    config = ModelConfig(vocab_size=7, cell="lstm", layers=1, hidden_size=8, embed_size=4)
    params = init_params(config, jax.random.key(3))["layer0"]
    bias = np.asarray(params["bias"])
    np.testing.assert_array_equal(bias[8:16], 1.0)  # forget gate
    np.testing.assert_array_equal(np.delete(bias, np.s_[8:16]), 0.0)
    recurrent = np.asarray(params["recurrent_kernel"])
    for gate in range(4):
        block = recurrent[:, gate * 8 : (gate + 1) * 8]
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)


def test_dropout_changes_training_outputs_only():
    config = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embed_size=8, dropout=0.5)
    model, params = CharRNN(config), init_params(config, jax.random.key(0))
    tokens = jnp.zeros((2, 4), jnp.int32)
    carry = initial_carry(config, 2)
    eval_a, _ = model.apply({"params": params}, tokens, carry)
    eval_b, _ = model.apply({"params": params}, tokens, carry)
    train, _ = model.apply({"params": params}, tokens, carry, train=True, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train, eval_a)
