import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charrnn.cells import REGISTRY
from charrnn.config import ModelConfig
from charrnn.dropout import drop, packed_keep_mask
from charrnn.model import CharRNN, init_params, initial_carry


@pytest.fixture(params=list(REGISTRY))
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


def test_a_reset_gives_the_outputs_of_a_fresh_state(model_setup):
    config, model, params, tokens = model_setup
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(4), c.shape), initial_carry(config, 3))
    resets = np.zeros(tokens.shape, bool)
    resets[0, 5] = resets[2, 5] = True  # streams 0 and 2 start a new document at position 5
    logits, final = model.apply({"params": params}, tokens, carry, resets=resets)
    fresh, fresh_final = model.apply({"params": params}, tokens[np.array([0, 2]), 5:], initial_carry(config, 2))
    np.testing.assert_allclose(logits[np.array([0, 2]), 5:], fresh, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(fresh_final), strict=True):
        np.testing.assert_allclose(a[np.array([0, 2])], b, rtol=1e-5, atol=1e-6)
    unreset, _ = model.apply({"params": params}, tokens, carry)
    np.testing.assert_array_equal(logits[:, :5], unreset[:, :5])  # before the reset, and
    np.testing.assert_array_equal(logits[1], unreset[1])  # the stream without one: unchanged
    none_reset, _ = model.apply({"params": params}, tokens, carry, resets=np.zeros(tokens.shape, bool))
    np.testing.assert_array_equal(none_reset, unreset)


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


def test_recurrent_dropout_changes_training_outputs_only_and_is_one_mask_per_window():
    plain = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embed_size=8)
    config = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embed_size=8, recurrent_dropout=0.5)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 11)
    carry = initial_carry(config, 2)
    evaluated, _ = CharRNN(config).apply({"params": params}, tokens, carry)
    unmasked, _ = CharRNN(plain).apply({"params": params}, tokens, carry)
    np.testing.assert_array_equal(evaluated, unmasked)  # evaluation and sampling never drop
    rngs = {"dropout": jax.random.key(5)}
    train, _ = CharRNN(config).apply({"params": params}, tokens, carry, train=True, rngs=rngs)
    assert not np.allclose(train, evaluated)
    # The first step reads the zero state, which no mask changes: its outputs are the unmasked ones.
    np.testing.assert_allclose(train[:, 0], evaluated[:, 0], rtol=1e-6)


def test_weight_drop_is_one_dropconnect_mask_per_layer_and_window_shared_by_every_stream():
    plain = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embed_size=8)
    config = ModelConfig(vocab_size=11, layers=2, hidden_size=16, embed_size=8, weight_drop=0.5)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 6), 0, 11)
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(4), c.shape), initial_carry(config, 3))
    evaluated, _ = CharRNN(config).apply({"params": params}, tokens, carry)
    unmasked, _ = CharRNN(plain).apply({"params": params}, tokens, carry)
    np.testing.assert_array_equal(evaluated, unmasked)  # evaluation and sampling never drop

    rngs = {"dropout": jax.random.key(5)}

    def train_outputs(params):
        return CharRNN(config).apply({"params": params}, tokens, carry, train=True, rngs=rngs)[0]

    train, pullback = jax.vjp(train_outputs, params)
    (grads,) = pullback(jnp.ones_like(train))
    # A dropped connection gets no gradient; about half are dropped, in every layer.
    masked = dict(params)
    for name in ("layer0", "layer1"):
        kept = grads[name]["recurrent_kernel"] != 0
        assert 0.3 < float(kept.mean()) < 0.7
        masked[name] = {**params[name], "recurrent_kernel": params[name]["recurrent_kernel"] * kept * 2.0}
    # Training reads the kept connections scaled by 1 / keep probability, the same for every stream.
    reference, _ = CharRNN(plain).apply({"params": masked}, tokens, carry)
    np.testing.assert_allclose(train, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("rate", "shape"), [(0.2, (129, 387)), (0.5, (3, 3)), (0.9999999, (7, 5)), (1e-7, (5,))])
def test_the_packed_keep_mask_drops_at_the_rate_and_keeps_the_mean(rate, shape):
    mask = np.asarray(packed_keep_mask(jax.random.key(3), rate, shape))
    assert mask.shape == shape and mask.dtype == np.float32
    assert np.all(np.isfinite(mask)) and len(np.unique(mask[mask != 0])) <= 1  # one scale, 1 / keep probability
    if mask.size > 10_000:
        assert abs((mask == 0).mean() - rate) < 0.01 and abs(mask.mean() - 1.0) < 0.02


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_drops_at_the_rate_keeps_the_mean_and_the_dtype(dtype):
    x = jnp.full((64, 32, 48), 1.5, dtype)
    dropped = np.asarray(drop(jax.random.key(7), 0.25, x).astype(jnp.float32))
    assert drop(jax.random.key(7), 0.25, x).dtype == dtype
    assert set(np.unique(dropped)) == {0.0, 2.0}  # kept: 1.5 / 0.75
    assert abs((dropped == 0).mean() - 0.25) < 0.01 and abs(dropped.mean() - 1.5) < 0.02
    other = np.asarray(drop(jax.random.key(8), 0.25, x).astype(jnp.float32))
    assert 0.5 < ((dropped == 0) == (other == 0)).mean() < 0.7  # another key, another mask
    np.testing.assert_array_equal(drop(jax.random.key(7), 0.0, x), x)


@pytest.mark.parametrize(
    ("backend", "cpu_flags", "expected"),
    [
        ("gpu", "", "bfloat16"),
        ("tpu", "", "bfloat16"),
        ("cpu", "vendor_id : AuthenticAMD\nflags : fpu avx2 avx512f avx512_bf16", "bfloat16"),
        ("cpu", "vendor_id : GenuineIntel\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "bfloat16"),
        ("cpu", "vendor_id : GenuineIntel\nflags : fpu avx2 avx512f avx512_bf16 avx512_fp16", "float32"),
        ("cpu", "vendor_id : AuthenticAMD\nflags : fpu avx2 fma", "float32"),
        ("cpu", "vendor_id : GenuineIntel\nflags : fpu avx2 fma\nbugs : avx512_bf16", "float32"),
    ],
)
def test_the_default_precision_is_bf16_on_accelerators_and_on_cpus_where_it_pays(
    monkeypatch, tmp_path, backend, cpu_flags, expected
):
    import builtins

    from charrnn import precision

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(cpu_flags + "\n")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k)
    )
    assert precision.default_dtype() == expected


def test_the_embedding_gradient_is_the_scatter_add_on_every_backend(monkeypatch):
    """GPUs add a scatter's colliding updates in no fixed order, so there the embedding's gradient is
    a one-hot matmul (exact resume needs the same gradient on every run): it must be the same gradient."""
    from charrnn import model

    table = jax.random.normal(jax.random.key(0), (7, 5))
    tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, 7)  # every row many times over
    weights = jax.random.normal(jax.random.key(2), (4, 33, 5))

    def gradient():
        return jax.jit(jax.grad(lambda t: jnp.sum(jnp.sin(model.lookup(t, tokens)) * weights)))(table)

    expected = jax.grad(lambda t: jnp.sum(jnp.sin(jnp.take(t, tokens, axis=0)) * weights))(table)
    for in_order in (True, False):  # the scatter-add, then the one-hot matmul, whatever the backend
        monkeypatch.setattr(model, "scatter_adds_in_order", lambda in_order=in_order: in_order)
        first = gradient()
        np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(first, gradient())  # the one-hot matmul: the same bits on every run
    np.testing.assert_array_equal(model.lookup(table, tokens), table[tokens])
