"""The bidirectional model (charrnn.bidirectional) and `charrnn check` (charrnn.checking).

The model is checked against its definition written as Python loops over time (the textbook cells
of test_cells), outputs and every gradient; by symmetry (reversing the text and swapping the
stacks gives the same scores); and by use: a model trained on a periodic text finds an error put
into it, and every command that cannot use such a model says so in one line.
"""

import copy
import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import charrnn_in_process, periodic_text
from test_cells import TEXTBOOK, textbook_layer

from charrnn.batching import StreamBatcher, cloze_windows
from charrnn.bidirectional import BiCharRNN
from charrnn.checking import CLOZE_WEIGHT, EXPLAINED, Checker, _reported, _score, make_cloze_chunk
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import UsageError
from charrnn.kinds import cross_entropy, kind_of
from charrnn.model import init_params, initial_carry
from charrnn.step import create_state, evaluate, make_eval_step, make_train_step
from charrnn.vocab import Vocabulary

SMALL = {"layers": 2, "hidden_size": 6, "embed_size": 4}


def zero_carry(name, batch, hidden):
    return tuple(jnp.zeros((batch, hidden)) for _ in range(2 if name.startswith("lstm") else 1))


def textbook_cloze(config, params, chars, after, carry, reset_id=None, *, split=False, sides=False):
    """Logits of every character of `chars` from the forward state before it and the backward state
    after it, by the definition: Python loops over time. `split`: read the look-ahead with the
    parameters' gradient stopped (the truncation the model trains with), else in one pass. `sides`:
    the two states instead, [B, T, H] each."""
    name, hidden, layers = config.cell, config.hidden_size, config.layers
    tokens = jnp.concatenate([chars, after], axis=1)  # [B, T + L]
    batch, length, lookahead = chars.shape[0], chars.shape[1], after.shape[1]
    present = tokens >= 0
    xs = jnp.swapaxes(params["embed"]["embedding"][jnp.maximum(tokens, 0)], 0, 1)  # [T + L, B, E]
    boundary = jnp.zeros(tokens.shape, bool) if reset_id is None else tokens == reset_id

    h = xs[:length]
    for layer in range(layers):
        h, _ = textbook_layer(name, params[f"layer{layer}"], h, carry[layer], boundary[:, :length].T)
    left = jnp.concatenate([carry[-1][0][None], h[:-1]])

    seen = present[:, 1:].T[::-1]  # what follows each character, reversed: the look-ahead first
    after_padding = jnp.concatenate([jnp.zeros_like(seen[:1]), ~seen[:-1]])
    resets = after_padding | boundary[:, 1:].T[::-1]
    b = xs[1:][::-1]
    for layer in range(layers):
        weights = params[f"backward{layer}"]
        start = zero_carry(name, batch, hidden)
        if split:
            frozen = jax.lax.stop_gradient(weights)
            ahead, state = textbook_layer(name, frozen, jax.lax.stop_gradient(b[:lookahead]), start, resets[:lookahead])
            rest, _ = textbook_layer(name, weights, b[lookahead:], state, resets[lookahead:])
            b = jnp.concatenate([ahead, rest])
        else:
            b, _ = textbook_layer(name, weights, b, start, resets)
    follows = jnp.concatenate([present[:, 1:].T, jnp.zeros((1, batch), bool)])[:length]
    right = b[::-1][:length] * follows[:, :, None]
    if sides:
        return jnp.swapaxes(left, 0, 1), jnp.swapaxes(right, 0, 1)
    joined = jnp.swapaxes(jnp.concatenate([left, right], axis=-1), 0, 1)
    return joined @ params["head_kernel"] + params["head_bias"]


def random_inputs(vocab_size, batch=3, length=5, lookahead=3, seed=0):
    rng = np.random.default_rng(seed)
    chars = rng.integers(0, vocab_size, (batch, length)).astype(np.int32)
    after = rng.integers(0, vocab_size, (batch, lookahead)).astype(np.int32)
    after[1, 1:] = -1  # the text ends inside this row's look-ahead
    after[2, :] = -1  # and right after this row's window
    return jnp.asarray(chars), jnp.asarray(after)


@pytest.mark.parametrize(
    ("cell", "reset_id"),
    [
        ("lstm", 2),
        pytest.param("gru", None, marks=pytest.mark.slow),  # its cell alone: test_cells, quick suite
        pytest.param("lstm", None, marks=pytest.mark.slow),
        pytest.param("gru", 2, marks=pytest.mark.slow),
    ],
)
def test_outputs_and_every_gradient_match_the_textbook_loops(cell, reset_id):
    assert cell in TEXTBOOK
    config = ModelConfig(vocab_size=7, cell=cell, bidirectional=True, lookahead=3, **SMALL)
    params = init_params(config, jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # biases too
    chars, after = random_inputs(7)
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(3), c.shape), initial_carry(config, 3))
    model = BiCharRNN(config)

    def ours(params, carry):
        return model.apply({"params": params}, chars, after, carry, reset_id=reset_id)[0]

    np.testing.assert_allclose(
        jax.jit(ours)(params, carry),
        textbook_cloze(config, params, chars, after, carry, reset_id),
        rtol=1e-5,
        atol=1e-5,
    )

    def loss(run):
        return lambda params, carry: jnp.sum(jnp.sin(run(params, carry)) * jnp.arange(7.0))

    grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, carry)
    reference = jax.grad(
        loss(lambda p, c: textbook_cloze(config, p, chars, after, c, reset_id, split=True)), argnums=(0, 1)
    )(params, carry)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    for name in ("layer0", "layer1", "backward0", "backward1"):  # both stacks learn, every layer
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[0][name])) > 0, name


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_each_stack_reads_one_way_with_its_own_output_layer_which_trains_it_by_its_weight(weight):
    """The direction heads: the forward state before a character, and the backward state after it,
    each through its own output layer (the textbook's states). Training adds their loss to nothing
    reported, their gradient to theirs, and to the stacks `direction_weight` of it: with 0 the cloze
    and the stacks train exactly as without them."""
    config = ModelConfig(vocab_size=7, cell="lstm", bidirectional=True, lookahead=3, direction_weight=weight, **SMALL)
    params = init_params(config, jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    chars, after = random_inputs(7)
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(3), c.shape), initial_carry(config, 3))
    _, _, (forward, backward) = BiCharRNN(config).apply(
        {"params": params}, chars, after, carry, reset_id=2, directions=True
    )
    left, right = textbook_cloze(config, params, chars, after, carry, 2, sides=True)
    for got, state, name in [(forward, left, "forward_head"), (backward, right, "backward_head")]:
        want = state @ params[f"{name}_kernel"] + params[f"{name}_bias"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)

    plain = dataclasses.replace(config, direction_heads=False)
    shared = {k: v for k, v in params.items() if not k.endswith(("_head_kernel", "_head_bias"))}
    assert set(params) - set(shared) == {f"{d}_head_{p}" for d in ("forward", "backward") for p in ("kernel", "bias")}

    def loss(config, params):
        nats, _ = kind_of(config).nats(
            BiCharRNN(config), params, carry, (chars, after), 2, train=True, rngs={"dropout": jax.random.key(0)}
        )
        return nats.mean()

    as_trained = {"train": True, "padded": False, "rngs": {"dropout": jax.random.key(0)}}  # as `nats` reads

    def one_way_loss(params):  # the heads' own loss, its whole gradient into the stacks
        full = dataclasses.replace(config, direction_weight=1.0)
        _, _, logits = BiCharRNN(full).apply(
            {"params": params}, chars, after, carry, reset_id=2, **as_trained, directions=True
        )
        return sum(cross_entropy(each, jnp.maximum(chars, 0)) for each in logits).mean()

    (with_heads, grads), (without, plain_grads) = (
        jax.value_and_grad(loss, argnums=1)(config, params),
        jax.value_and_grad(loss, argnums=1)(plain, shared),
    )
    one_way_grads = jax.grad(one_way_loss)(params)
    assert float(with_heads) == pytest.approx(float(without), abs=1e-6)  # the cloze's loss alone
    for (path, got), want, extra in zip(
        jax.tree_util.tree_leaves_with_path({k: grads[k] for k in shared}),
        jax.tree.leaves(plain_grads),
        jax.tree.leaves({k: one_way_grads[k] for k in shared}),
        strict=True,
    ):
        np.testing.assert_allclose(got, want + weight * extra, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    for name in ("forward_head_kernel", "backward_head_kernel", "forward_head_bias", "backward_head_bias"):
        np.testing.assert_allclose(grads[name], one_way_grads[name], rtol=1e-5, atol=1e-7, err_msg=name)
        assert float(jnp.abs(grads[name]).max()) > 0, name
    if weight:  # the stacks do learn from the heads
        assert any(float(jnp.abs(e).max()) > 1e-4 for e in jax.tree.leaves({k: one_way_grads[k] for k in shared}))


def test_reversing_the_text_and_swapping_the_stacks_gives_the_same_scores():
    config = ModelConfig(vocab_size=9, cell="lstm", bidirectional=True, lookahead=2, **SMALL)
    params = init_params(config, jax.random.key(5))
    swapped = dict(params)
    for layer in range(config.layers):
        swapped[f"layer{layer}"], swapped[f"backward{layer}"] = params[f"backward{layer}"], params[f"layer{layer}"]
    hidden = config.hidden_size
    swapped["head_kernel"] = jnp.concatenate([params["head_kernel"][hidden:], params["head_kernel"][:hidden]])
    chars = jnp.asarray(np.random.default_rng(1).integers(0, 9, (2, 11)), jnp.int32)
    nothing_after = jnp.full((2, 2), -1, jnp.int32)  # the whole text is in the window
    model, carry = BiCharRNN(config), initial_carry(config, 2)
    forward, _ = model.apply({"params": params}, chars, nothing_after, carry)
    backward, _ = model.apply({"params": swapped}, chars[:, ::-1], nothing_after, carry)
    np.testing.assert_allclose(forward, backward[:, ::-1], rtol=1e-5, atol=1e-6)


def test_the_checks_reading_pairs_the_states_as_the_joined_output_layer_does():
    """The check reads each text once and pairs its states three ways through the output layer's
    two halves (`head_halves`): each pairing must be the joined output layer of those two states;
    and it reads each state through its own stack's output layer (`direction_logits`)."""
    config = ModelConfig(vocab_size=9, cell="lstm", bidirectional=True, lookahead=3, **SMALL)
    params = init_params(config, jax.random.key(7))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(8), p.shape), params)  # biases too
    chars, after = random_inputs(9)
    carry, model = initial_carry(config, 3), BiCharRNN(config)
    left, right, _ = model.apply({"params": params}, chars, after, carry, method="sides")

    def joined(left, right):
        logits = model.apply({"params": params}, jnp.concatenate([left, right], axis=-1), method="head")
        return jax.nn.log_softmax(logits, axis=-1)

    def pick(logprobs, ids):
        return np.take_along_axis(np.asarray(logprobs), np.asarray(ids)[..., None], axis=-1)[..., 0]

    _, logprob, _, top_probs, hole_first, hole_second, gap, gap_ids, forward, backward = make_cloze_chunk(config, None)(
        params, carry, chars, after
    )
    whole = joined(left, right)
    np.testing.assert_allclose(logprob, pick(whole, chars), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(top_probs[..., 0], np.exp(np.max(whole, axis=-1)), rtol=1e-5, atol=1e-6)
    hole = joined(left[:, :-1], right[:, 1:])  # x_t and x_t+1 taken out
    np.testing.assert_allclose(hole_first[:, :-1], pick(hole, chars[:, :-1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hole_second[:, :-1], pick(hole, chars[:, 1:]), rtol=1e-5, atol=1e-5)
    between = joined(left[:, 1:], right[:, :-1])  # a character between x_t-1 and x_t
    np.testing.assert_allclose(gap[:, 1:], np.max(between, axis=-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gap_ids[:, 1:], np.argmax(between, axis=-1))
    for got, state, name in [(forward, left, "forward_head"), (backward, right, "backward_head")]:
        one_way = jax.nn.log_softmax(state @ params[f"{name}_kernel"] + params[f"{name}_bias"], axis=-1)
        np.testing.assert_allclose(got, pick(one_way, chars), rtol=1e-5, atol=1e-5, err_msg=name)
    plain = dataclasses.replace(config, direction_heads=False)  # a run from before the heads: no such columns
    assert len(make_cloze_chunk(plain, None)(params, carry, chars, after)) == 8


def test_cloze_windows_read_every_character_once_and_look_ahead_into_the_text():
    ids = np.arange(1, 101)
    windows = cloze_windows(ids, 4, 7, 5, burn_in=3)
    counted = np.concatenate([chars[weights > 0] for chars, _, weights in windows])
    assert sorted(counted.tolist()) == list(range(2, 101))  # every character after the first, once
    for chars, after, _ in windows:
        rows = np.concatenate([chars, after], axis=1)
        for row in rows:  # each row reads the text in order, look-ahead included, then only padding
            real = row[row >= 0]
            assert (np.diff(real) == 1).all() and (row[len(real) :] == -1).all()
    batcher = StreamBatcher(ids, 3, 7, extra=5)  # training: the look-ahead is real text, never padding
    for window in range(batcher.windows_per_epoch):
        chunk = batcher.chunk(window)
        assert chunk.shape == (3, 12) and (np.diff(chunk, axis=1) == 1).all()
    assert batcher.streams.max() <= 100


def test_the_validation_loss_is_the_mean_cloze_loss_over_the_split():
    config = ModelConfig(vocab_size=7, cell="gru", bidirectional=True, lookahead=4, **SMALL)
    params = init_params(config, jax.random.key(0))
    ids = np.random.default_rng(0).integers(0, 7, 60)
    windows = kind_of(config).eval_windows(ids, 3, 8, burn_in=5)
    loss = evaluate(make_eval_step(config), params, config, windows)
    whole, _ = BiCharRNN(config).apply(
        {"params": params}, jnp.asarray(ids[None], jnp.int32), jnp.full((1, 4), -1, jnp.int32), initial_carry(config, 1)
    )
    nats = -jax.nn.log_softmax(whole[0])[np.arange(60), ids]
    # Streams read less context than one pass (a window's look-ahead, a stream's burn-in): close, not equal.
    assert abs(loss - float(nats[1:].mean())) < 0.05
    single = kind_of(config).eval_windows(ids, 1, 60)  # one stream, one window: exactly the single pass
    assert evaluate(make_eval_step(config), params, config, single) == pytest.approx(float(nats[1:].mean()), rel=1e-5)


@pytest.mark.parametrize("boundary", [None, "\n"])
def test_edits_are_judged_as_one_reading_of_the_edited_text_judges_them(boundary):
    """The check compares edits by the summed cloze log-probability of the characters around them,
    read between the states the text on either side leaves: with the whole text as that context,
    exactly what reading the edited text from end to end gives."""
    rng = np.random.default_rng(3)
    text = "".join(rng.choice(list("abcde \n"), 30))
    vocab = Vocabulary.from_text(text + "\n")
    config = ModelConfig(vocab_size=len(vocab), cell="lstm", bidirectional=True, lookahead=4, **SMALL)
    params = init_params(config, jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
    checker = Checker(params, config, vocab, boundary=boundary, context=64)
    ids = checker.encode(text)  # 32 ids: the text between two newlines
    groups = []
    for lo, hi in [(0, 9), (5, 14), (20, 32), (0, 32)]:
        here = ids[lo:hi]
        replaced, inserted = here.copy(), np.insert(here, 4, (here[4] + 1) % len(vocab))
        replaced[3] = (here[3] + 2) % len(vocab)
        groups.append((lo, hi, [here, replaced, np.delete(here, 2), inserted]))
    model, reset_id = BiCharRNN(config), checker.reset_id
    for (lo, hi, rows), sums in zip(groups, checker.judge(ids, groups), strict=True):
        for row, got in zip(rows, sums, strict=True):
            edited = np.concatenate([ids[:lo], row, ids[hi:]])[None].astype(np.int32)
            logits, _, one_way = model.apply(
                {"params": params},
                edited,
                np.full((1, 4), -1, np.int32),
                initial_carry(config, 1),
                reset_id=reset_id,
                directions=True,
            )
            for each, total in zip([logits, *one_way], got, strict=True):  # the cloze, forward, backward
                logprobs = np.asarray(jax.nn.log_softmax(each[0]))[np.arange(edited.shape[1]), edited[0]]
                assert total == pytest.approx(float(logprobs[lo : lo + len(row)].sum()), rel=1e-5, abs=1e-4)


@pytest.fixture(scope="module")
def periodic_checker():
    """A bidirectional model trained until it knows `periodic_text` by heart."""
    text = periodic_text(3000)
    vocab = Vocabulary.from_text(text)
    config = ModelConfig(
        vocab_size=len(vocab), cell="lstm", layers=1, hidden_size=32, embed_size=8, bidirectional=True, lookahead=8
    )
    train = TrainConfig(batch_size=8, seq_len=16, learning_rate=1e-2, warmup_steps=10)
    kind, batcher = kind_of(config), StreamBatcher(vocab.encode(text), 8, 16, extra=8)
    state, step = create_state(config, train), make_train_step(config, train)
    for i in range(250):
        state, metrics = step(state, *kind.split(batcher.chunk(i % batcher.windows_per_epoch)), np.float32(1e-2))
    assert float(metrics["loss"]) < 0.05
    assert step._cache_size() == 1  # compiled once
    return Checker(state.params, config, vocab, window=16)


@pytest.mark.parametrize(
    ("text", "where", "edit"),
    [
        ("hello world, hello wprld, hello world, ", 20, ("replace", "o")),
        ("hello world, hello wold, hello world, ", 21, ("insert", "rl")),
        ("hello world, hello worrld, hello world, ", 22, ("delete", "")),
        ("hello world, hello wrold, hello world, ", 20, ("swap", "or")),
    ],
    ids=["substitution", "missing", "extra", "swapped"],
)
def test_a_model_of_a_periodic_text_finds_an_error_put_into_it(periodic_checker, text, where, edit):
    findings = periodic_checker.check(text, threshold=1.0)  # a tiny model: sure of little, by a nat or two
    assert len(findings) == 1, findings
    (finding,) = findings
    assert abs(finding.offset - where) <= 1 and (finding.line, finding.column) == (1, finding.offset + 1)
    assert (finding.edit, finding.suggestion) == edit
    assert periodic_checker.check(periodic_text(200), threshold=1.0) == []  # nothing in the text as it should be


def test_an_edits_gain_is_the_one_way_gain_and_a_share_of_the_cloze_gain(periodic_checker):
    """The suggestion's gain is what `judge` reads for the neighbourhood as it is and as the edit
    writes it: the mean of the one-way layers' gains, whole, plus `CLOZE_WEIGHT` of the cloze's."""
    text = "hello world, hello wprld, hello world, "
    (finding,) = periodic_checker.check(text, threshold=1.0)
    ids, tried = periodic_checker.encode(text), (finding.edit, finding.suggestion, *finding.span)
    (sums,) = periodic_checker.judge(ids, [periodic_checker.versions(ids, finding.offset, [tried])])
    cloze, forward, backward = (sums[1] - sums[0]).tolist()
    assert forward > 0 and backward > 0
    assert finding.gain == pytest.approx(CLOZE_WEIGHT * cloze + (forward + backward) / 2, rel=1e-5)


def test_a_surprising_character_near_a_reported_edit_is_its_doing_unless_more_surprising():
    """An error makes the characters whose context holds it surprising too: those within `EXPLAINED`
    of its edit are not reported again, unless more surprising than the edited character (the edit
    may be in the wrong place); one farther away, or with no edit near it, is."""
    threshold, far = 5.0, 5 + EXPLAINED + 1
    surprisal = np.zeros(20)
    surprisal[[5, 7]] = [9.0, 6.0]  # the edited error, and a character two after it
    assert _reported([5], surprisal, threshold) == [5]
    surprisal[7] = 10.0  # more surprising than the edited one: reported
    assert _reported([5], surprisal, threshold) == [5, 7]
    surprisal[7], surprisal[far] = 0.0, 6.0  # beyond the edit's reach: reported
    assert _reported([5], surprisal, threshold) == [5, far]
    surprisal[6] = 20.0  # next to the edit: the same place, however surprising
    assert _reported([5], surprisal, threshold) == [5, far]
    assert _reported([], surprisal, threshold) == [6, far]  # no edit: each run's most surprising


def test_an_insertion_or_a_swap_is_credited_what_choosing_a_character_costs(periodic_checker):
    """A dropped character or two swapped ones chose no character of the vocabulary: the edits that
    undo them meet the threshold with half of ln V added to their gain."""
    credit = 0.5 * math.log(len(periodic_checker.vocab))
    assert periodic_checker.credit == {"insert": pytest.approx(credit), "swap": pytest.approx(credit)}
    uncredited = copy.copy(periodic_checker)
    uncredited.credit = {}
    for text, edit in [
        ("hello world, hello wold, hello world, ", "insert"),
        ("hello world, hello wrold, hello world, ", "swap"),
    ]:
        (found,) = periodic_checker.check(text, threshold=1.0)
        assert found.edit == edit
        just_over = found.gain + 0.5 * credit  # met with the credit, not without
        assert [f.edit for f in periodic_checker.check(text, threshold=just_over)] == [edit]
        assert uncredited.check(text, threshold=just_over) == []


def test_a_replacement_is_held_to_the_threshold_with_the_characters_surprisal(periodic_checker):
    """An edit that blames the place's character (replacing or deleting it) is reported by the mean of
    its gain and the character's cloze surprisal, not by its gain alone; a character whose surprisal
    alone passes the threshold is reported as before."""
    text = "hello world, hello wdrld, hello world, "
    (found,) = periodic_checker.check(text, threshold=1.0)
    assert found.edit == "replace"
    # The character read as 2 nats less surprising than the edit gains, so the mean lies between them.
    reading, gain = periodic_checker.cloze(text), found.gain

    def read_with(surprisal: float):
        logprob = reading.logprob.copy()
        logprob[found.offset] = -surprisal
        return dataclasses.replace(reading, logprob=logprob)

    judged, mean = read_with(gain - 2.0), gain - 1.0
    assert [f.edit for f in periodic_checker.check(text, threshold=mean - 0.05, judged=judged)] == ["replace"]
    assert periodic_checker.check(text, threshold=mean + 0.05, judged=judged) == []  # the gain alone would pass
    # More surprising than the edit gains: the character is reported on its surprisal, past the mean.
    judged = read_with(gain + 2.0)
    (found,) = periodic_checker.check(text, threshold=gain + 1.5, judged=judged)
    assert found.edit == "replace"
    assert _score("replace", 9.0, 3.0, 2.0) == _score("delete", 9.0, 3.0, 2.0) == 6.0
    assert _score("insert", 9.0, 3.0, 2.0) == _score("swap", 9.0, 3.0, 2.0) == 11.0  # the gain and its credit


def test_an_error_the_text_repeats_is_taken_to_be_meant_unless_repeats_are_asked_for(periodic_checker):
    text = "hello world, hello wdrld, hello world, hello wdrld, hello world, "
    assert periodic_checker.check(text, threshold=1.0) == []  # " wdrl" twice: a name, say
    findings = periodic_checker.check(text, threshold=1.0, repeated=True)
    assert [(f.offset, f.edit, f.suggestion) for f in findings] == [(20, "replace", "o"), (46, "replace", "o")]


def test_a_check_reports_its_progress_to_the_end(periodic_checker):
    reports = []
    text = periodic_text(300).replace("world", "wrold", 3)
    findings = periodic_checker.check(
        text, threshold=1.0, repeated=True, progress=lambda *report: reports.append(report)
    )
    assert len(findings) == 3
    for stage in ("reading", "judging"):
        done = [(d, t) for s, d, t in reports if s == stage]
        assert done and done[-1][0] == done[-1][1] and [d for d, _ in done] == sorted(d for d, _ in done), reports
    stages = [s for s, *_ in reports]
    assert stages == sorted(stages, key=["reading", "judging"].index)


def test_a_checker_reads_at_least_one_character_of_context(periodic_checker):
    with pytest.raises(UsageError, match="^context=0 must be at least 1$"):
        Checker(periodic_checker.params, periodic_checker.config, periodic_checker.vocab, context=0)


@pytest.mark.parametrize("threshold", [-1.0, math.nan, math.inf])
def test_a_threshold_that_is_not_a_number_at_least_0_is_refused_by_name(periodic_checker, threshold):
    with pytest.raises(UsageError, match=f"^threshold must be a number >= 0, not {threshold}$"):
        periodic_checker.check("abc", threshold)


def test_a_character_far_too_unlikely_is_reported_where_no_edit_fits_better(periodic_checker):
    text = periodic_text(60)
    judged = periodic_checker.cloze(text)
    logprob = judged.logprob.copy()
    logprob[30] = -20.0  # as if the reading found text[30] most unlikely; every edit of it reads worse
    findings = periodic_checker.check(
        text, threshold=5.0, repeated=True, judged=dataclasses.replace(judged, logprob=logprob)
    )
    assert [(f.offset, f.edit, f.char) for f in findings] == [(30, "", text[30])]
    assert findings[0].prob == pytest.approx(np.exp(-20.0))


def test_a_character_training_never_read_gets_the_unseen_share_not_a_typos_verdict():
    """A character only the validation split holds has a probability the model never learned: the
    reading and the edits' judging give it at least the unseen share spread over such characters, and
    change nothing else."""
    text = "abcab zcab\nzzbca cbaz"
    vocab = Vocabulary.from_text(text + "\n")
    config = ModelConfig(vocab_size=len(vocab), cell="gru", bidirectional=True, lookahead=4, **SMALL)
    params = init_params(config, jax.random.key(4))
    plain = Checker(params, config, vocab, context=8)
    floored = Checker(params, config, vocab, context=8, untrained="zq", unseen_share=0.5)  # q: not in it
    floor = math.log(0.5)
    assert (
        floored.floor[vocab.index["z"]] == pytest.approx(floor)
        and np.isneginf(np.delete(floored.floor, vocab.index["z"])).all()
    )
    before, after = plain.cloze(text), floored.cloze(text)
    is_z = np.array([c == "z" for c in text])
    assert is_z.any() and (before.logprob[is_z] < floor).all()  # a random model: about 1 in 6
    np.testing.assert_allclose(after.logprob, np.where(is_z, floor, before.logprob), rtol=1e-5)
    for one_way in ("forward_logprob", "backward_logprob"):
        expected = np.maximum(getattr(before, one_way), np.where(is_z, floor, -np.inf))
        np.testing.assert_allclose(getattr(after, one_way), expected, rtol=1e-5)
    ids = plain.encode(text)
    groups = [(1, 6, [ids[1:6], ids[1:6].copy()]), (6, 12, [ids[6:12]])]  # without a z, then with one
    groups[0][2][1][2] = vocab.index["z"]
    (without, with_z), (around_z,) = plain.judge(ids, groups), floored.judge(ids, groups)[1:]
    one = floored.judge(ids, groups[:1])[0]
    np.testing.assert_allclose(one[0], without[0], rtol=1e-5)  # no z: unchanged
    assert (one[1] > without[1]).all() and (around_z > with_z).all()  # each z read at the floor, not below


def test_a_run_records_the_characters_its_training_never_read():
    from charrnn.corpus import PreparedCorpus
    from charrnn.start import untrained_record

    vocab = Vocabulary(tuple("abcxy"))
    train = vocab.encode("aabbbcaab")  # x and y only in the validation split; c read once
    prepared = PreparedCorpus(None, vocab, train, vocab.encode("xy"), {})
    assert untrained_record(prepared) == {"untrained": "xy", "unseen_share": pytest.approx(1 / 9)}

    class Parent:  # a run whose training read x
        def read_vocab(self):
            return Vocabulary(tuple("abx"))

        def read_config(self):
            return None, None, {"untrained": "b"}

    assert untrained_record(prepared, Parent())["untrained"] == "y"  # y: new to the parent's vocabulary
    assert untrained_record(PreparedCorpus(None, vocab, vocab.encode("abcxy"), train, {})) == {}


# -- the commands ------------------------------------------------------------------------------------
def cli(*args, cwd, input=None):
    """(exit status, stdout, stderr) of `charrnn ARGS`, run in this process."""
    done = charrnn_in_process(*args, cwd=cwd, input=input, check=False)
    return done.returncode, done.stdout, done.stderr


TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "8"]


@pytest.fixture(scope="module")
def bidirectional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidirectional")
    (root / "text.txt").write_text(periodic_text(1200) + "\nΩ\n")  # Ω and a newline: in the validation split only
    (root / "draft.txt").write_text("hello world, hello wprld, hello\nworld, hello world\n")
    code, _, err = cli(
        "train", "text.txt", "--out", "run", "--bidirectional", *TINY, "--steps", "40", "--eval-every", "20", cwd=root
    )
    assert code == 0, err
    assert "bidirectional 1×16" in err and "charrnn check run FILE" in err
    return root


def test_info_shows_a_bidirectional_run(bidirectional_run):
    code, out, _ = cli("info", "run", cwd=bidirectional_run)
    assert code == 0 and "bidirectional (cloze, look-ahead 32, one-way layers) 1×16 LSTM-COUPLED" in out


def test_a_run_keeps_the_characters_its_training_never_read_for_its_checks(bidirectional_run):
    from charrnn import load

    corpus = json.loads((bidirectional_run / "run" / "config.json").read_text())["corpus"]
    assert corpus["untrained"] == "\nΩ"  # the text has no newline before its validation split
    model = load(bidirectional_run / "run")
    assert model.checker().floor[model.vocab.index["Ω"]] == pytest.approx(math.log(corpus["unseen_share"] / 2))


@pytest.mark.parametrize(("value", "problem"), [(0.0, "must be in (0, 1], not 0.0"), ("x", 'must be a float, not "x"')])
def test_a_run_whose_unseen_share_is_damaged_is_refused_by_name(bidirectional_run, tmp_path, value, problem):
    from charrnn.errors import RunError
    from charrnn.runs import Run

    (tmp_path / "run").mkdir()
    config = json.loads((bidirectional_run / "run" / "config.json").read_text())
    config["corpus"]["unseen_share"] = value
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=re.escape(f"corpus.unseen_share {problem}")):
        Run(tmp_path / "run").read_config()


@pytest.mark.parametrize("command", ["sample", "score", "serve"])
def test_what_a_bidirectional_run_cannot_do_is_one_line(bidirectional_run, command):
    args = {"sample": ["run"], "score": ["run", "draft.txt"], "serve": ["run", "--port", "0"]}[command]
    code, out, err = cli(command, *args, cwd=bidirectional_run)
    assert code == 2 and out == ""
    assert err.strip() == (
        f"charrnn: error: run is a bidirectional model: it judges each character from both sides and gives no "
        f"left-to-right probability, so it cannot {command}; use `charrnn check` to find characters that do "
        "not fit, or `charrnn eval` for its cloze loss"
    )


def test_eval_of_a_bidirectional_run_is_its_cloze_loss_as_training_recorded(bidirectional_run):
    code, out, err = cli("eval", "run", "--json", cwd=bidirectional_run)
    assert code == 0, err
    record = json.loads(out)
    assert record["nats_per_char"] == pytest.approx(record["recorded_val_loss"], rel=1e-5)


def test_check_writes_linter_lines_json_and_a_page(bidirectional_run, tmp_path):
    code, out, err = cli("check", "run", "draft.txt", "--threshold", "0", cwd=bidirectional_run)
    assert code == 0, err
    lines = out.splitlines()
    assert lines and all(re.fullmatch(r"draft\.txt:\d+:\d+: .+ \(p [^;]+; .+\)", line) for line in lines)
    assert re.fullmatch(r"checked 51 characters: \d+ flagged \(threshold 0 nats\)\n", err)
    code, out, _ = cli(
        "check", "run", "-", "--json", "--html", tmp_path / "page.html", input="hello wprld\n", cwd=bidirectional_run
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and all(r["file"] == "-" and r["line"] == 1 for r in records)
    page = (tmp_path / "page.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('data-tip="') == len("hello wprld\n")
    code, out, _ = cli("check", "run", "draft.txt", "--show", "--threshold", "100", cwd=bidirectional_run)
    assert code == 0 and out == (bidirectional_run / "draft.txt").read_text()  # into a pipe: the text itself
    code, _, _ = cli("check", "run", "draft.txt", "--threshold", "0", "--exit-code", cwd=bidirectional_run)
    assert code == 1


@pytest.mark.slow
def test_a_bidirectional_run_on_documents_resets_at_their_boundary(tmp_path):
    (tmp_path / "docs").mkdir()
    for k in range(3):
        (tmp_path / "docs" / f"{k}.txt").write_text(periodic_text(300 + 40 * k))
    code, _, err = cli(
        "train", "docs", "--out", "run", "--bidirectional", *TINY, "--steps", "4", "--eval-every", "2", cwd=tmp_path
    )
    assert code == 0, err
    code, out, err = cli("check", "run", "-", "--json", "--threshold", "0", input="hello wprld, hello\n", cwd=tmp_path)
    assert code == 0 and all(json.loads(line)["line"] == 1 for line in out.splitlines()), err


@pytest.mark.slow
def test_a_bidirectional_run_resumes_and_parents_a_run(bidirectional_run):
    code, _, err = cli("train", "--resume", "run", "--bidirectional", "--steps", "50", cwd=bidirectional_run)
    assert code == 0, err
    code, _, err = cli(
        "train",
        "text.txt",
        "--out",
        "child",
        "--init-from",
        "run",
        "--steps",
        "2",
        "--eval-every",
        "2",
        cwd=bidirectional_run,
    )
    assert code == 0 and "bidirectional 1×16" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "left", "draft.txt"], "checking text needs a bidirectional model (train one with --bidirectional)"),
        (["check", "run", "draft.txt", "--threshold", "-1"], "--threshold must be a number >= 0, not -1.0"),
        (["check", "run", "draft.txt", "--format", "xml"], "--format must be one of text, json, show, not 'xml'"),
        (["check", "run", "nowhere.txt"], "nowhere.txt does not exist"),
        (["check", "run", "draft.txt", "--json", "--show"], "give --show or --json, not both"),
        (
            ["train", "text.txt", "--bidirectional", "--lookahead", "-1"],
            "--lookahead must be between 0 and 65536, not -1",
        ),
    ],
)
def test_check_refusals_are_one_line(bidirectional_run, args, message):
    root = bidirectional_run
    if not (root / "left").exists():
        code, _, err = cli("train", "text.txt", "--out", "left", *TINY, "--steps", "2", cwd=root)
        assert code == 0, err
    code, out, err = cli(*args, cwd=root)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_training_windows_that_never_reach_past_the_text_read_alike_without_the_padding_checks():
    config = ModelConfig(vocab_size=7, cell="lstm", bidirectional=True, lookahead=3, **SMALL)
    params, model = init_params(config, jax.random.key(0)), BiCharRNN(config)
    chars, after = random_inputs(7)
    after = jnp.abs(after)  # no padding anywhere
    carry = initial_carry(config, 3)
    checked, _ = model.apply({"params": params}, chars, after, carry, reset_id=2)
    unchecked, _ = model.apply({"params": params}, chars, after, carry, reset_id=2, padded=False)
    np.testing.assert_array_equal(checked, unchecked)


def test_weight_drop_masks_each_stack_once_per_window_look_ahead_included():
    plain = ModelConfig(vocab_size=7, bidirectional=True, lookahead=3, **SMALL)
    config = dataclasses.replace(plain, weight_drop=0.5)
    params = init_params(config, jax.random.key(1))
    chars, after = random_inputs(7)
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(3), c.shape), initial_carry(config, 3))
    evaluated = BiCharRNN(config).apply({"params": params}, chars, after, carry)[0]
    np.testing.assert_array_equal(evaluated, BiCharRNN(plain).apply({"params": params}, chars, after, carry)[0])

    def train_outputs(params):
        rngs = {"dropout": jax.random.key(5)}
        return BiCharRNN(config).apply({"params": params}, chars, after, carry, train=True, rngs=rngs)[0]

    train, pullback = jax.vjp(train_outputs, params)
    (grads,) = pullback(jnp.ones_like(train))
    masked = dict(params)
    for name in ("layer0", "layer1", "backward0", "backward1"):
        kept = grads[name]["recurrent_kernel"] != 0  # a dropped connection gets no gradient
        assert 0.25 < float(kept.mean()) < 0.75, name
        masked[name] = {**params[name], "recurrent_kernel": params[name]["recurrent_kernel"] * kept * 2.0}
    # The backward stack's look-ahead (read without gradient) drops what its window drops.
    reference = BiCharRNN(plain).apply({"params": masked}, chars, after, carry)[0]
    np.testing.assert_allclose(train, reference, rtol=1e-6, atol=1e-6)
