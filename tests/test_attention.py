"""The attention head over the top layer's recent outputs (charrnn.attention, `train --attention M`).

Checked against its definition written as a Python loop over positions (each position attends to
the last M positions, itself included, back to the last reset), outputs and every gradient; by
composition (windows read one after another, or one character at a time, give what one pass gives);
by causality; and by use: a model with attention learns to copy a random string from further back
than the same LSTM without it can hold, and every command takes such a run.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import charrnn_in_process
from test_cells import textbook_layer

from charrnn.batching import StreamBatcher
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import ConfigError
from charrnn.kinds import cross_entropy
from charrnn.model import CharRNN, init_params, initial_carry
from charrnn.sampling import reset_at
from charrnn.step import create_state, make_train_step
from charrnn.vocab import Vocabulary

SMALL = {"layers": 2, "hidden_size": 6, "embed_size": 4, "cell": "lstm"}


def norm(x, params, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * params["scale"] + params["bias"]


def textbook_attention(config, params, tokens, carry, reset_id=None):
    """Logits by the definition: the recurrent layers as Python loops over time, then for each row
    and position the softmax over the last M positions' keys, itself included and none from before
    a reset, the memory's entries oldest first, mixing their values (the normalised outputs). With
    `attention_keys` 0 (runs made before it), the values are the keys, scaled by a gate."""
    size, a = config.attention, params["attention"]
    boundary = np.zeros(tokens.shape, bool) if reset_id is None else np.asarray(tokens) == reset_id
    h = jnp.swapaxes(params["embed"]["embedding"][tokens], 0, 1)
    for layer in range(config.layers):
        h, _ = textbook_layer(config.cell, params[f"layer{layer}"], h, carry[layer], boundary.T)
    *_, values, valid, slot = carry[-1]
    keys, valid, slot = carry[-1][0], np.asarray(valid), np.asarray(slot)
    gate_q, gate_k = jax.nn.sigmoid(a["gates"])[:2]
    gate_v = jax.nn.sigmoid(a["value_gate"] if config.key_width else a["gates"][2])

    def key_of(value):
        return (value @ a["key_kernel"] if config.key_width else value) * gate_k

    rows = []
    for b in range(tokens.shape[0]):
        ages = range(size, 0, -1)  # the memory, oldest first
        where = [(slot[b] - age) % size for age in ages]
        history = [(keys[b, i] * gate_k, values[b, i], valid[b, i] > 0) for i in where]
        out = []
        for t in range(tokens.shape[1]):
            if boundary[b, t]:
                history = []
            y = h[t, b]
            value = norm(y, a["memory_norm"])
            history.append((key_of(value), value, True))
            seen = [(k, v) for k, v, ok in history[-size:] if ok]
            x = norm(y, a["input_norm"])
            q = norm(x @ a["query_kernel"] + a["query_bias"], a["query_norm"]) * gate_q
            scores = jnp.stack([jnp.dot(q, k) for k, _ in seen]) / np.sqrt(q.shape[-1])
            weights = jax.nn.softmax(scores)
            out.append(x + sum(w * v * gate_v for w, (_, v) in zip(weights, seen, strict=True)))
        rows.append(jnp.stack(out))
    return jnp.stack(rows) @ params["head_kernel"] + params["head_bias"]


def random_model(size=3, batch=3, seed=0, layers=2, keys=3):
    config = ModelConfig(vocab_size=7, attention=size, attention_keys=keys, **SMALL | {"layers": layers})
    rng = np.random.default_rng(seed)  # numpy: eager JAX would compile every draw's shape on its own

    def normal(shape):
        return rng.standard_normal(shape, np.float32)

    params = init_params(config, jax.random.key(seed))
    params = jax.tree.map(lambda p: np.asarray(p) + 0.3 * normal(p.shape), params)  # gates, biases too
    layers = jax.tree.map(lambda c: normal(c.shape), initial_carry(config, batch)[:-1])
    memory = (
        *([normal((batch, size, keys))] if keys else []),
        normal((batch, size, config.hidden_size)),
        (rng.uniform(size=(batch, size)) > 0.3).astype(np.float32),
        np.arange(batch, dtype=np.int32) % size,
    )
    return config, *jax.tree.map(jnp.asarray, (params, (*layers, memory)))


@pytest.mark.parametrize(
    "reset_id, keys", [pytest.param(None, 3, marks=pytest.mark.slow), (2, 3), (2, 0)], ids=["keys", "reset", "older"]
)
def test_outputs_and_every_gradient_match_the_textbook_loop(reset_id, keys):
    """The keyed head, with and without a reset in the window; and the form runs made before it keep
    (`attention_keys` 0: the values are the keys)."""
    config, params, carry = random_model(batch=2, layers=1, keys=keys)  # layers: test_cells; here, what comes after
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 7, (2, 7)), jnp.int32)  # windows longer than M
    model = CharRNN(config)
    resets = None if reset_id is None else tokens == reset_id
    assert reset_id is None or bool(resets[:, 1:].any())

    def ours(params, carry):
        return model.apply({"params": params}, tokens, carry, resets=resets)[0]

    def textbook(params, carry):
        return textbook_attention(config, params, tokens, carry, reset_id)

    np.testing.assert_allclose(jax.jit(ours)(params, carry), textbook(params, carry), rtol=1e-5, atol=1e-5)

    def loss(run):  # of the parameters and of the memory's keys and values
        def of(params, stored):
            memory = (*stored, *carry[-1][-2:])
            return jnp.sum(jnp.sin(run(params, (*carry[:-1], memory))) * jnp.arange(7.0))

        return of

    stored = carry[-1][:-2]
    grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, stored)
    reference = jax.grad(loss(textbook), argnums=(0, 1))(params, stored)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    for name in ("query_kernel", "gates", *(["key_kernel", "value_gate"] if keys else [])):
        assert float(jnp.abs(grads[0]["attention"][name]).max()) > 0, name
    for array in grads[1]:
        assert float(jnp.abs(array).max()) > 0  # the carried memory is read


def test_windows_one_after_another_and_single_steps_give_one_pass():
    config, params, carry = random_model(size=4, batch=2, seed=1)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 7, (2, 12)), jnp.int32)
    resets = tokens == 3
    model = CharRNN(config)
    read = jax.jit(lambda tokens, carry, resets: model.apply({"params": params}, tokens, carry, resets=resets))
    whole, whole_carry = read(tokens, carry, resets)
    for cuts in ((0, 2, 7, 12), (0, 7, 12)):  # windows shorter and longer than the memory
        pieces, state = [], carry
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            logits, state = read(tokens[:, start:end], state, resets[:, start:end])
            pieces.append(logits)
        np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(whole_carry), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    @jax.jit
    def steps(tokens, carry):  # as sampling reads: one character, the state reset where a boundary is read
        def one(carry, t):
            carry = reset_at(carry, tokens[:, t], 3)
            logits, carry = CharRNN(config).apply({"params": params}, tokens[:, t], carry, method=CharRNN.step)
            return carry, logits

        return jax.lax.scan(one, carry, jnp.arange(tokens.shape[1]))[1]

    np.testing.assert_allclose(jnp.swapaxes(steps(tokens, carry), 0, 1), whole, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_model_keeps_its_memory_in_bfloat16_with_the_same_numbers():
    """The attention's matmuls read the memory in the compute dtype: keeping it so changes nothing."""
    config, params, (*layers, memory) = random_model(size=4, batch=2, seed=2)
    config = dataclasses.replace(config, dtype="bfloat16")
    *stored, valid, slot = memory
    stored = [array.astype(jnp.bfloat16) for array in stored]
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 7, (2, 6)), jnp.int32)
    read = jax.jit(lambda carry: CharRNN(config).apply({"params": params}, tokens, carry))
    kept, kept_carry = read((*layers, (*stored, valid, slot)))
    wide, wide_carry = read((*layers, (*[array.astype(jnp.float32) for array in stored], valid, slot)))
    np.testing.assert_array_equal(kept, wide)
    for i in range(len(stored)):  # keys and values
        assert initial_carry(config, 2)[-1][i].dtype == kept_carry[-1][i].dtype == jnp.bfloat16
        np.testing.assert_array_equal(kept_carry[-1][i], wide_carry[-1][i].astype(jnp.bfloat16))


def test_a_bfloat16_head_has_the_float32_heads_gradients_to_bfloat16_precision():
    """The attention's bf16 matmuls have a hand-written backward pass (`attention.attend`)."""
    config = ModelConfig(vocab_size=7, attention=5, layers=1, hidden_size=32, embed_size=8)
    params = init_params(config, jax.random.key(3))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape).astype(np.float32), params)
    tokens = jnp.asarray(rng.integers(0, 7, (3, 12)), jnp.int32)
    weights = jnp.asarray(rng.standard_normal((3, 12, 7)), jnp.float32)

    def gradient(dtype):
        model = CharRNN(dataclasses.replace(config, dtype=dtype))
        carry = initial_carry(model.config, 3)
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens, carry)[0] * weights))(params)

    want, got = gradient("float32")["attention"], gradient("bfloat16")["attention"]
    for name in ("query_kernel", "key_kernel", "gates", "value_gate"):
        assert jnp.linalg.norm(got[name] - want[name]) < 0.02 * jnp.linalg.norm(want[name]), name


def test_a_later_character_never_changes_an_earlier_probability():
    config, params, carry = random_model(size=5, batch=1, seed=2)
    tokens = jnp.asarray([[1, 4, 2, 6, 0, 3, 5, 1, 2]], jnp.int32)
    read = jax.jit(lambda tokens: CharRNN(config).apply({"params": params}, tokens, carry)[0])
    before = read(tokens)
    for t in range(tokens.shape[1]):
        after = read(tokens.at[0, t].set((tokens[0, t] + 1) % 7))
        np.testing.assert_array_equal(after[:, :t], before[:, :t])  # bit for bit: never read
        assert not np.array_equal(after[:, t:], before[:, t:])


def copies(blocks, length, seed):
    """Random strings of 8 letters, each written twice: "R|R\\n". The second copy can be predicted
    only by remembering the first, `length` + 1 characters back."""
    rng = np.random.default_rng(seed)
    strings = ("".join(rng.choice(list("abcdefgh"), length)) for _ in range(blocks))
    return "".join(f"{s}|{s}\n" for s in strings)


def test_with_attention_a_model_copies_what_the_same_lstm_without_it_cannot_hold():
    length = 16
    text = copies(3000, length, seed=0)
    vocab = Vocabulary.from_text(text)
    test = copies(40, length, seed=1)
    ids = jnp.asarray(vocab.encode(test))[None]
    period = 2 * length + 2
    second = np.array([i for i in range(ids.shape[1] - 1) if length < (i + 1) % period <= 2 * length])

    def copy_loss(attention: int, seed: int, steps: int = 4000) -> float:
        """Mean loss on the second copies' letters after `steps` of training from start `seed`."""
        model_config = ModelConfig(vocab_size=len(vocab), layers=1, hidden_size=32, embed_size=16, attention=attention)
        train_config = TrainConfig(batch_size=16, seq_len=32, warmup_steps=10, seed=seed)
        batcher = StreamBatcher(vocab.encode(text), 16, 32)
        state, step = create_state(model_config, train_config), make_train_step(model_config, train_config)
        for i in range(steps):
            batch = batcher.batch(i % batcher.windows_per_epoch)
            rate = 0.01 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * i / steps)))
            state, _ = step(state, batch.inputs, batch.targets, np.float32(rate))
        carry = initial_carry(model_config, 1)
        logits, _ = jax.jit(CharRNN(model_config).apply)({"params": state.params}, ids[:, :-1], carry)
        return float(np.asarray(cross_entropy(logits, ids[:, 1:]))[0, second].mean())

    # log(8) = 2.08 nats is chance. Without attention the LSTM stays near it (1.8 after these steps,
    # from learning which letters a string has). With it, the head finds the copy: 0.06-0.23 on most
    # starts, 1.0-1.1 where it found it late (the step the head locks on varies with the CPU's
    # rounding); a second start makes a head that never finds it a real failure, not bad luck.
    without = copy_loss(0, seed=0)
    with_attention = [copy_loss(40, seed=0)]
    if with_attention[0] >= 1.3:
        with_attention.append(copy_loss(40, seed=1))
    assert without > 1.6 and min(with_attention) < 1.3, (without, with_attention)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attention", "-1"], "--attention must be between 0 and 65536, not -1"),
        (
            ["--bidirectional", "--attention", "8"],
            "--attention is for models that write left to right; a bidirectional model already sees both sides",
        ),
        (["--attention", "8", "--attention-keys", "-1"], "--attention-keys must be between 0 and 65536, not -1"),
        (
            ["--attention-keys", "4"],
            "--attention-keys is the width of the attention head's keys: give --attention M too",
        ),
    ],
)
def test_bad_attention_options_are_one_line_and_write_nothing(tmp_path, args, message):
    (tmp_path / "text.txt").write_text(copies(100, 6, seed=0))
    result = charrnn_in_process("train", "text.txt", "--out", "run", *args, cwd=tmp_path, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"charrnn: error: {message}\n")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="^attention is for models that write left to right"):
        ModelConfig(vocab_size=5, bidirectional=True, attention=8)  # the library says it by parameter name


def test_bench_refuses_a_negative_attention_in_one_line(tmp_path):
    result = charrnn_in_process("bench", "--attention", "-1", cwd=tmp_path, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "charrnn: error: --attention must be between 0 and 65536, not -1\n"


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("attention")
    (home / "text.txt").write_text(copies(300, 6, seed=3))
    tiny = ["--layers", "1", "--hidden", "16", "--embed", "8", "-b", "4", "-t", "8", "--dropout", "0"]
    attended = ["--attention", "12", "--attention-keys", "6", "--steps", "40", "--eval-every", "20"]
    trained = charrnn_in_process("train", "text.txt", "--out", "run", *tiny, *attended, cwd=home)
    return home, trained


def test_every_command_takes_a_run_with_attention(attention_run):
    home, trained = attention_run
    assert "attention 12" in trained.stderr
    info = charrnn_in_process("info", "run", cwd=home).stdout
    assert "1×16 LSTM-COUPLED, attention 12, embed 8" in info
    recorded = json.loads((home / "run" / "config.json").read_text())["model"]
    assert (recorded["attention"], recorded["attention_keys"]) == (12, 6)
    first = charrnn_in_process("sample", "run", "-n", "50", "--seed", "4", "--prime", "abc|", cwd=home).stdout
    again = charrnn_in_process("sample", "run", "-n", "50", "--seed", "4", "--prime", "abc|", cwd=home).stdout
    assert first == again and first.startswith("abc|") and len(first) == 54
    scored = charrnn_in_process("score", "run", "--json", input="abcdef|abcdef\n", cwd=home).stdout
    assert json.loads(scored.splitlines()[0])["chars"] == 14
    evaluated = charrnn_in_process("eval", "run", "--json", cwd=home).stdout
    assert json.loads(evaluated)["nats_per_char"] > 0
    # --init-from: the head's weights do not depend on M, so a child may read further back; not without one.
    tiny = ["--out", "wider", "-b", "4", "-t", "8", "--steps", "2", "--eval-every", "2"]
    charrnn_in_process("train", "text.txt", "--init-from", "run", "--attention", "20", *tiny, cwd=home)
    assert json.loads((home / "wider" / "config.json").read_text())["model"]["attention"] == 20
    refused = charrnn_in_process("train", "text.txt", "--init-from", "run", "--attention", "0", cwd=home, check=False)
    assert refused.returncode == 2 and "--attention 0 (the parent has 12)" in refused.stderr


def test_dropout_leaves_the_expected_logits_of_a_model_with_attention_unchanged():
    """Training-mode logits averaged over dropout masks equal evaluation's where only linear maps follow
    each dropout (one layer: dropout after the head, and inside it on the mixed values). The head's
    layer norms read the top layer's outputs whole: read dropped out, they scaled them otherwise in
    training than in evaluation (off by ~1 here; by 1 / sqrt(1 - p) in the norms' scale)."""
    config = ModelConfig(vocab_size=7, layers=1, hidden_size=16, embed_size=4, cell="lstm", attention=8, dropout=0.5)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 7)
    carry = initial_carry(config, 2)
    model = CharRNN(config)
    evaluated = model.apply({"params": params}, tokens, carry)[0]

    def trained(key):
        return model.apply({"params": params}, tokens, carry, train=True, rngs={"dropout": key})[0]

    mean = jax.vmap(trained)(jax.random.split(jax.random.key(2), 4096)).mean(0)
    assert float(jnp.abs(evaluated).max()) > 1.0
    assert float(jnp.abs(mean - evaluated).max()) < 0.25  # sampling error ~0.07; 0.95 with the norms after dropout


def test_a_run_made_before_the_keyed_head_keeps_its_form_in_every_command(tmp_path):
    """Runs written before `attention_keys` existed have no such field: they read as 0, the head
    whose values are its keys, and sample, score and resume as they did."""
    from charrnn.start import new_run

    (tmp_path / "text.txt").write_text(copies(300, 6, seed=3))
    model = {"layers": 1, "hidden_size": 16, "embed_size": 8, "dropout": 0.0, "attention": 12, "attention_keys": 0}
    train = {"batch_size": 4, "seq_len": 8, "steps": 20, "eval_every": 10}
    with new_run(str(tmp_path / "text.txt"), directory=tmp_path / "old", model=model, train=train) as start:
        list(start.fit())
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["attention_keys"]
    config_path.write_text(json.dumps(config))
    first = charrnn_in_process("sample", "old", "-n", "30", "--seed", "4", "--prime", "abc|", cwd=tmp_path).stdout
    assert len(first) == 34
    scored = charrnn_in_process("score", "old", "--json", input="abcdef|abcdef\n", cwd=tmp_path).stdout
    assert json.loads(scored.splitlines()[0])["chars"] == 14
    charrnn_in_process("train", "--resume", "old", "--steps", "30", cwd=tmp_path)
    assert json.loads(config_path.read_text())["model"].get("attention_keys", 0) == 0
