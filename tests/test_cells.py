"""Every registered cell against an independent textbook implementation computed in the same
process, and a run written before the cell registry against the same textbook and what it sampled.

Nothing here compares floating-point results with numbers recorded on another machine: XLA
generates different code for AVX2, AVX-512 and AMX, so the last bits of the same computation
differ from CPU to CPU."""

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import periodic_text

from charrnn.cells import REGISTRY, make_cell
from charrnn.cells import sigmoid as gate_sigmoid
from charrnn.checkpoint import CheckpointStore
from charrnn.config import CELLS, ModelConfig, TrainConfig
from charrnn.model import CharRNN, RecurrentLayer, init_params, parameter_count
from charrnn.sampling import sample_stream
from charrnn.step import create_state
from charrnn.vocab import Vocabulary

DATA = Path(__file__).parent / "data"
NAMES = list(REGISTRY)


def test_the_names_help_shows_are_the_registered_cells():
    assert CELLS == tuple(REGISTRY)
    assert set(TEXTBOOK) == set(REGISTRY)  # a new cell needs its textbook reference below


# -- textbook cells: one Python step each, written from the papers' equations -------------------
sigmoid, tanh = jax.nn.sigmoid, jnp.tanh


def ln(v):
    return (v - v.mean(-1, keepdims=True)) / jnp.sqrt(v.var(-1, keepdims=True) + 1e-5)


def blocks(v, n):
    return jnp.split(v, n, axis=-1)


def recur(p, h):
    """h @ W_h; with recurrent dropout ("mask" in p) the matmul reads h * mask, nothing else does."""
    return (h * p["mask"] if "mask" in p else h) @ p["recurrent_kernel"]


def affine(p, x, h):
    return x @ p["input_kernel"] + p["bias"] + recur(p, h) + p["recurrent_bias"]


def lstm(p, x, state):
    h, c = state
    i, f, g, o = blocks(affine(p, x, h), 4)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)
    return sigmoid(o) * tanh(c), c


def lstm_peephole(p, x, state):
    h, c = state
    p_i, p_f, p_o = p["peephole"]
    i, f, g, o = blocks(affine(p, x, h), 4)
    c_new = sigmoid(f + p_f * c) * c + sigmoid(i + p_i * c) * tanh(g)
    return sigmoid(o + p_o * c_new) * tanh(c_new), c_new


def lstm_coupled(p, x, state):
    h, c = state
    f, g, o = blocks(affine(p, x, h), 3)
    c = sigmoid(f) * c + (1 - sigmoid(f)) * tanh(g)
    return sigmoid(o) * tanh(c), c


def lstm_coupled_mi(p, x, state):
    h, c = state
    x_part = x @ p["input_kernel"] + p["bias"]
    h_part = recur(p, h) + p["recurrent_bias"]
    f, g, o = blocks(p["interaction"] * x_part * h_part + p["recurrent_gain"] * h_part + x_part, 3)
    c = sigmoid(f) * c + (1 - sigmoid(f)) * tanh(g)
    return sigmoid(o) * tanh(c), c


def lstm_ln(p, x, state):
    h, c = state
    x_part = ln(x @ p["input_kernel"]) * p["input_gain"] + p["bias"]
    h_part = ln(recur(p, h)) * p["recurrent_gain"] + p["recurrent_bias"]
    i, f, g, o = blocks(x_part + h_part, 4)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)
    return sigmoid(o) * tanh(ln(c) * p["cell_gain"] + p["cell_shift"]), c


def gru_equations(x_part, h_part, h):
    xr, xz, xn = blocks(x_part, 3)
    hr, hz, hn = blocks(h_part, 3)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = tanh(xn + r * hn)
    return ((1 - z) * n + z * h,)


def gru(p, x, state):
    (h,) = state
    x_part = x @ p["input_kernel"] + p["bias"]
    return gru_equations(x_part, recur(p, h) + p["recurrent_bias"], h)


def gru_ln(p, x, state):
    (h,) = state
    x_part = ln(x @ p["input_kernel"]) * p["input_gain"] + p["bias"]
    h_part = ln(recur(p, h)) * p["recurrent_gain"] + p["recurrent_bias"]
    return gru_equations(x_part, h_part, h)


def rnn(p, x, state):
    (h,) = state
    return (tanh(affine(p, x, h)),)


TEXTBOOK = {
    "lstm": lstm,
    "gru": gru,
    "rnn": rnn,
    "lstm-peephole": lstm_peephole,
    "lstm-coupled": lstm_coupled,
    "lstm-ln": lstm_ln,
    "gru-ln": gru_ln,
    "lstm-coupled-mi": lstm_coupled_mi,
}


def textbook_layer(name, params, xs, carry, resets=None):
    """xs: [T, B, D]; resets: None or bool [T, B] (zero the state before step t)."""
    outputs = []
    for t in range(xs.shape[0]):
        if resets is not None:
            carry = tuple(jnp.where(resets[t][:, None], 0.0, c) for c in carry)
        carry = TEXTBOOK[name](params, xs[t], carry)
        outputs.append(carry[0])
    return jnp.stack(outputs), carry


def random_layer(name, *, dtype="float32", unroll=1, steps=4, batch=3, inputs=4, hidden=5, seed=0):
    """A layer, and random parameters (gains near 1, everything else, peepholes included, non-zero),
    inputs and carry."""
    cell = make_cell(name, dtype, unroll)
    layer = RecurrentLayer(cell, inputs, hidden)
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    xs = jax.random.normal(next(keys), (steps, batch, inputs))
    carry = tuple(jax.random.normal(next(keys), (batch, hidden)) for _ in range(cell.carry_size))
    shapes = jax.eval_shape(layer.init, next(keys), xs, carry)["params"]  # the layer's own parameter tree

    def randomise(path, leaf):
        noise = jax.random.normal(next(keys), leaf.shape)
        return 1.0 + 0.3 * noise if path[-1].key.endswith("gain") else 0.5 * noise

    return layer, jax.tree_util.tree_map_with_path(randomise, dict(shapes)), xs, carry


def objective(run):
    # Weights every output and the final carry differently, so every cotangent path is exercised.
    def loss(params, xs, carry):
        hs, final = run(params, xs, carry)
        weights = jnp.arange(hs.size, dtype=hs.dtype).reshape(hs.shape) / hs.size
        return jnp.sum(jnp.sin(hs) * weights) + sum(jnp.sum(c**2) * (k + 1) for k, c in enumerate(final))

    return loss


def test_the_gates_sigmoid_is_the_logistic_function_to_within_float32_rounding():
    x = np.linspace(-40.0, 40.0, 400_001, dtype=np.float32)
    got = np.asarray(jax.jit(gate_sigmoid)(jnp.asarray(x)), np.float64)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(got - want)) < 3e-7
    assert got.min() >= 0.0 and got.max() <= 1.0
    np.testing.assert_allclose(got[np.abs(x) < 1], want[np.abs(x) < 1], rtol=1e-6)


# Resets are the loop's, not the cells': two cells (carries of two arrays and of one, plain and
# normalised) check them in the quick suite, the others with -m slow.
RESET_CASES = [
    pytest.param(name, True, id=f"{name}-resets", marks=() if name in ("lstm", "gru-ln") else pytest.mark.slow)
    for name in NAMES
]


@pytest.mark.parametrize(
    ("name", "with_resets"), [pytest.param(name, False, id=f"{name}-no-resets") for name in NAMES] + RESET_CASES
)
def test_outputs_and_every_gradient_match_autodiff_of_the_textbook_cell(name, with_resets):
    layer, params, xs, carry = random_layer(name, unroll=2 if with_resets else 1, seed=len(name))
    resets = jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], bool) if with_resets else None
    keep = None if resets is None else (1.0 - resets.astype(jnp.float32))[:, :, None]

    def ours(params, xs, carry):
        return layer.apply({"params": params}, xs, carry, keep)

    def reference(params, xs, carry):
        return textbook_layer(name, params, xs, carry, resets)

    (hs, final), (hs_ref, final_ref) = jax.jit(ours)(params, xs, carry), reference(params, xs, carry)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(final, final_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    grads = jax.jit(jax.grad(objective(ours), argnums=(0, 1, 2)))(params, xs, carry)
    grads_ref = jax.grad(objective(reference), argnums=(0, 1, 2))(params, xs, carry)
    assert set(grads[0]) == set(grads_ref[0]) == set(params)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    for param in params:  # every parameter matters: none is silently left out of the computation
        assert np.abs(np.asarray(grads[0][param])).max() > 0, param


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=() if name in ("lstm", "gru-ln") else pytest.mark.slow) for name in NAMES]
)
def test_recurrent_dropout_masks_only_what_enters_the_matmul_and_its_gradients_match(name):
    layer, params, xs, carry = random_layer(name, seed=len(name) + 1)
    mask = jax.random.bernoulli(jax.random.key(7), 0.6, carry[0].shape).astype(jnp.float32) / 0.6

    def ours(params, xs, carry):
        return layer.apply({"params": params}, xs, carry, None, mask)

    def reference(params, xs, carry):
        return textbook_layer(name, params | {"mask": mask}, xs, carry)

    (hs, _), (hs_ref, _) = jax.jit(ours)(params, xs, carry), reference(params, xs, carry)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-6)
    unmasked, _ = layer.apply({"params": params}, xs, carry)
    assert np.abs(np.asarray(hs - unmasked)).max() > 1e-3  # the mask does something
    grads = jax.jit(jax.grad(objective(ours), argnums=(0, 1, 2)))(params, xs, carry)
    grads_ref = jax.grad(objective(reference), argnums=(0, 1, 2))(params, xs, carry)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_operands_stay_close_to_float32(name):
    layer, params, xs, carry = random_layer(name, seed=2)
    layer16 = layer.clone(cell=make_cell(name, "bfloat16", 1))
    hs32, _ = layer.apply({"params": params}, xs, carry)
    hs16, _ = layer16.apply({"params": params}, xs, carry)
    assert hs16.dtype == jnp.float32
    np.testing.assert_allclose(hs16, hs32, atol=0.06)
    assert not np.allclose(hs16, hs32, atol=1e-7)  # really computed in lower precision


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_training_keeps_the_backward_inputs_in_float16_at_no_cost_in_its_gradients(name, monkeypatch):
    """In bf16 the forward loop keeps what the backward reads (gates' activations, norms) in float16:
    half the bytes to write and read, with 8x the bf16 operands' precision. The gradients must stay
    where keeping float32 puts them, well inside bf16's own error."""
    import charrnn.recurrence as recurrence

    layer, params, xs, carry = random_layer(name, dtype="bfloat16", steps=6, seed=4)

    def gradients():
        run = jax.jit(jax.grad(objective(lambda p, x, c: layer.apply({"params": p}, x, c)), argnums=(0, 1)))
        return jax.tree.leaves(run(params, xs, carry))

    kept = gradients()
    monkeypatch.setattr(recurrence, "_kept", lambda cell, saved: saved)
    wide = gradients()
    differs = False
    for got, want in zip(kept, wide, strict=True):
        assert np.linalg.norm(got - want) <= 0.01 * np.linalg.norm(want) + 1e-6
        differs |= not np.array_equal(got, want)
    assert differs or name == "rnn"  # the rnn's step keeps nothing: its backward reads the new carry


@pytest.mark.parametrize("name", NAMES)
def test_parameters_follow_the_recipe_and_are_counted_from_the_tree(name):
    config = ModelConfig(vocab_size=7, cell=name, layers=2, hidden_size=8, embed_size=4)
    params = init_params(config, jax.random.key(3))
    cell = make_cell(name)
    layer = params["layer0"]
    width = cell.gates * 8
    assert layer["input_kernel"].shape == (4, width) and layer["recurrent_kernel"].shape == (8, width)
    bias = np.asarray(layer["bias"])
    forget = np.zeros(width, bool)
    if cell.forget_gate is not None:
        forget[cell.forget_gate * 8 : (cell.forget_gate + 1) * 8] = True
    np.testing.assert_array_equal(bias[forget], 1.0)  # remember at first
    np.testing.assert_array_equal(bias[~forget], 0.0)
    for gate in range(cell.gates):  # each gate's recurrence starts norm-preserving
        block = np.asarray(layer["recurrent_kernel"])[:, gate * 8 : (gate + 1) * 8]
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    for own, (shape, _) in cell.parameters(8).items():
        assert layer[own].shape == shape
        expected = 1.0 if own.endswith("gain") else 0.0  # gains 1, shifts and peepholes 0
        np.testing.assert_array_equal(layer[own], expected)
    assert parameter_count(config) == config.parameter_count() == sum(x.size for x in jax.tree.leaves(params))


def test_parameter_count_of_the_default_lstm_is_unchanged():
    # The formula that counted it before the count came from the parameter tree.
    vocab, embed, hidden = 65, 64, 512
    expected = (
        vocab * embed + hidden * vocab + vocab + (embed + hidden + 2) * 4 * hidden + (2 * hidden + 2) * 4 * hidden
    )
    assert ModelConfig(vocab_size=vocab, cell="lstm").parameter_count() == expected


def test_bench_flops_count_every_matmul_kernel_of_the_tree():
    from charrnn.bench import forward_flops_per_char

    # The formula that counted them before: input and recurrent projections, then the logits.
    expected = 2 * ((64 + 512) * 4 * 512 + (512 + 512) * 4 * 512) + 2 * 512 * 65
    assert forward_flops_per_char(ModelConfig(vocab_size=65, cell="lstm")) == expected
    coupled = ModelConfig(vocab_size=65, cell="lstm-coupled")  # three gate blocks, the LSTM's matmuls otherwise
    assert forward_flops_per_char(coupled) == 2 * ((64 + 512) * 3 * 512 + (512 + 512) * 3 * 512) + 2 * 512 * 65


@pytest.mark.parametrize("name", NAMES)
def test_save_restore_sample(name, tmp_path):
    text = periodic_text(400)
    vocab = Vocabulary.from_text(text)
    model_config = ModelConfig(vocab_size=len(vocab), cell=name, layers=1, hidden_size=8, embed_size=4)
    train_config = TrainConfig(batch_size=2, seq_len=8)
    state = create_state(model_config, train_config)
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(1, state, {"step": 1}, 1.0)
    store.wait()
    restored, _ = store.restore(1, jax.eval_shape(lambda: create_state(model_config, train_config)))
    store.close()
    assert jax.tree.structure(restored.params) == jax.tree.structure(state.params)
    for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(got, want)

    sample = "".join(s[0] for s in sample_stream(restored.params, model_config, vocab, length=30, prime="hel"))
    assert len(sample) == 30 and set(sample) <= set(vocab.chars)


def test_a_run_written_before_the_registry_samples_and_resumes_as_before(tmp_path):
    """tests/data/old-run-lstm was trained (4 steps) by the code of commit 62452a4 on
    periodic_text(600). Its weights are stored bytes, so they load exactly on any CPU; what today's
    code computes from them is checked against the textbook LSTM in this process; the sample and the
    resumed loss are what that code gave, compared as tightly as a change of CPU allows."""
    from charrnn.corpus import prepare
    from charrnn.loop import EvalReport, fit
    from charrnn.runs import Run
    from charrnn.trained import load

    shutil.copytree(DATA / "old-run-lstm", tmp_path / "run")
    run = Run(tmp_path / "run")
    model = load(run)
    params, model_config = model.params, model.model_config
    vocab = run.read_vocab()

    # The old parameters mean what they meant: today's model is the textbook LSTM on them.
    tokens = jnp.asarray([vocab.encode(periodic_text(24))])
    carry = tuple(tuple(jnp.zeros((1, 8)) for _ in range(2)) for _ in range(model_config.layers))
    logits, _ = CharRNN(model_config).apply({"params": params}, tokens, carry)
    xs = params["embed"]["embedding"][tokens[0]][:, None, :]  # [T, 1, E]
    outputs, _ = textbook_layer("lstm", params["layer0"], xs, carry[0])
    expected = outputs[:, 0] @ params["head_kernel"] + params["head_bias"]
    np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5)  # float32 rounding, summed orders apart

    # The same seed draws the same characters. A draw is the argmax of logits plus Gumbel noise, so a
    # change of CPU (about 1e-7 of each logit) could change a character only if two candidates were
    # that close: a hash of the draws, in effect, that any change to the sampler or the model breaks.
    text = "".join(s[0] for s in sample_stream(params, model_config, vocab, length=40, prime="hel", seed=1))
    assert (
        "hel" + text == "helhlwdeololdwelh,ol  hh lwodwww,,,oeollddo"
    )  # `charrnn sample RUN -n 40 --seed 1 --prime hel`

    (tmp_path / "corpus.txt").write_text(periodic_text(600))
    _, train_config, _ = run.read_config()
    assert train_config.val_burn_in == 0  # validation as that code did it: streams start cold
    assert train_config.weight_decay == 0  # and no decay: its optimizer state, saved without one, resumes
    prepared, _ = prepare(str(tmp_path / "corpus.txt"), val_fraction=train_config.val_fraction)
    reports = list(fit(run, prepared, model_config, dataclasses.replace(train_config, steps=8), resume=True))
    (last,) = [r for r in reports if isinstance(r, EvalReport)]
    assert last.step == 8
    # `charrnn train --resume RUN --steps 8` gave 2.2025528. Four float32 steps on another CPU move it
    # by about 1e-6 (relative); one training step more or less moves it by 4e-4.
    assert last.val_loss == pytest.approx(2.2025527954101562, rel=2e-5)
