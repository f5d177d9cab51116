import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import periodic_text

from charrnn.batching import StreamBatcher, evaluation_windows
from charrnn.cells import REGISTRY
from charrnn.checkpoint import CheckpointStore
from charrnn.config import (
    ADDED_WEIGHT_DROP,
    LEAST_WEIGHT_DROP,
    MAX_AUTO_DROPOUT,
    MAX_AUTO_WEIGHT_DECAY,
    MAX_AUTO_WEIGHT_DROP,
    RULE_DECIMALS,
    RULE_STEP,
    VAL_BURN_IN,
    WIDE_FROM_EPOCHS,
    WIDE_HIDDEN_SIZE,
    WIDENED_EPOCH_WEIGHT,
    ModelConfig,
    TrainConfig,
    auto_dropout,
    auto_dropout_and_weight_drop,
    auto_embed_size,
    auto_hidden_size,
    auto_weight_decay,
    auto_weight_drop,
    memorising_load,
    widened_load,
)
from charrnn.corpus import prepare
from charrnn.loop import EvalReport, Finished, Notice, StepReport, fit, steps_per_call
from charrnn.model import initial_carry
from charrnn.placement import make_placement
from charrnn.runs import Run
from charrnn.step import create_state, evaluate, learning_rate, make_eval_step, make_train_step, restarted
from charrnn.vocab import Vocabulary

SMALL = {"layers": 1, "hidden_size": 32, "embed_size": 8}


def batches(text, batch_size, seq_len):
    vocab = Vocabulary.from_text(text)
    return vocab, StreamBatcher(vocab.encode(text), batch_size, seq_len)


@pytest.mark.parametrize("cell", list(REGISTRY))
def test_small_model_learns_a_periodic_text(cell):
    vocab, batcher = batches(periodic_text(), 8, 16)
    model_config = ModelConfig(vocab_size=len(vocab), cell=cell, **SMALL)
    train_config = TrainConfig(batch_size=8, seq_len=16, learning_rate=1e-2, warmup_steps=10)
    state, step = create_state(model_config, train_config), make_train_step(model_config, train_config)
    first = None
    for i in range(200):
        batch = batcher.batch(i % batcher.windows_per_epoch)
        state, metrics = step(state, batch.inputs, batch.targets, np.float32(learning_rate(train_config, i, i / 200)))
        first = first if first is not None else float(metrics["loss"])
    assert first > 2.0  # ~log(9) at the start
    assert float(metrics["loss"]) < 0.05
    assert step._cache_size() == 1  # compiled once, never retraced


ONE_RULE_STEP = RULE_STEP * 1.01  # the rules' rounding step, and room for the floats' last bit


def test_the_chosen_dropout_grows_with_the_log_of_the_planned_epochs():
    """None for short runs; the same growth for every doubling beyond; capped; no budget known: the cap.
    Tiny Shakespeare's 30 minutes on a bf16 CPU (22.4 epochs) get about the 0.25 measured best there."""
    assert [auto_dropout(e) for e in (0.5, 3.0, 6.0, 12.0, 22.4, 110.0)] == [0.0, 0.0, 0.09, 0.18, 0.26, 0.47]
    assert auto_dropout(1e6) == auto_dropout(math.inf) == MAX_AUTO_DROPOUT
    epochs = np.geomspace(3.0, 100.0, 50)  # never less for a longer run
    chosen = [auto_dropout(e) for e in epochs]
    assert chosen == sorted(chosen)


def test_the_chosen_regularisers_move_continuously_with_the_planned_epochs():
    """No step a plan's few percent can flip: 3% more planned epochs never move a chosen dropout,
    weight drop or weight decay by more than 0.01 (the rules' rounding), but where the weight drop
    starts, at `LEAST_WEIGHT_DROP`."""
    many = np.geomspace(0.5, 1000.0, 4000)
    starts = [e for e in many if auto_weight_drop(e) == 0 < auto_weight_drop(1.03 * e)]
    assert starts
    assert all(LEAST_WEIGHT_DROP <= auto_weight_drop(1.03 * e) <= LEAST_WEIGHT_DROP + ONE_RULE_STEP for e in starts)
    rules = (auto_weight_decay, auto_weight_drop, *[lambda e, i=i: auto_dropout_and_weight_drop(e)[i] for i in (0, 1)])
    for rule in rules:
        assert max(abs(rule(1.03 * e) - rule(e)) for e in many if e not in starts) <= ONE_RULE_STEP


def test_the_chosen_weight_drop_grows_with_the_log_of_the_planned_epochs_and_then_takes_over_dropout():
    """None for runs too short to pay for its mask; then the same growth for every doubling; past 0.12,
    the dropout less by as much: 30 epochs get about the 0.25 and 0.15 measured best there (dropout 0.3
    alone, 0.3 + 0.1), 40 the 0.25 and 0.2 measured best there (dropout 0.35 alone), chosen or given."""
    epochs = (0.5, 6.7, 12.0, 15.0, 24.0, 30.0, 40.0, 120.0)
    chosen = [auto_dropout_and_weight_drop(e) for e in epochs]
    assert [drop for _, drop in chosen] == [auto_weight_drop(e) for e in epochs] == [0, 0, 0, 0, 0.12, 0.16, 0.2, 0.2]
    assert [dropout for dropout, _ in chosen] == [0.0, 0.1, 0.18, 0.21, 0.27, 0.25, 0.26, 0.4]
    assert auto_dropout(40.0, 0.2) == 0.26
    assert all(auto_dropout(e, ADDED_WEIGHT_DROP) == auto_dropout(e) for e in epochs)
    many = np.geomspace(0.5, 1000.0, 2000)
    drops = [auto_weight_drop(e) for e in many]
    assert drops == sorted(drops) and max(drops) == MAX_AUTO_WEIGHT_DROP
    assert min(d for d in drops if d) == LEAST_WEIGHT_DROP
    both = [auto_dropout_and_weight_drop(e) for e in many]
    together = [round(dropout + drop, RULE_DECIMALS) for dropout, drop in both]
    assert np.diff(together).min() >= -ONE_RULE_STEP  # moved from one to the other, never less in all but rounding


def test_no_band_of_planned_epochs_keeps_the_dropout_at_0_3_beside_a_weight_drop_of_0_1():
    """The weight drop's excess is taken before rounding: from 17 to 46 planned epochs (tiny
    Shakespeare's 20 minutes to two hours) the dropout stays within 0.03 of the 0.25 measured best
    beside 0.05 to 0.2 of weight drop; 0.3 beside 0.1 (what 25-28 epochs once got) measured worse than
    0.25 beside 0.15."""
    span = np.geomspace(17.0, 46.0, 3000)
    assert all(0.22 <= auto_dropout_and_weight_drop(e)[0] <= 0.28 for e in span)
    assert [auto_dropout_and_weight_drop(e) for e in (18.0, 22.0, 26.1, 27.2, 33.0)] == [
        (0.23, 0.05),
        (0.26, 0.1),
        (0.27, 0.13),
        (0.26, 0.14),
        (0.25, 0.19),
    ]


def test_the_planned_epochs_weigh_the_models_parameters_per_training_character():
    """Tiny Shakespeare's default model (2.5 parameters per character) counts its epochs as they are;
    the quatrains' (6,257 characters, an embedding of 512, half the text) about seven times over."""
    shakespeare = ModelConfig(vocab_size=65).parameter_count()
    quatrains = ModelConfig(vocab_size=6257, embed_size=512).parameter_count()
    assert memorising_load(22.4, shakespeare, 1_003_854) == pytest.approx(22.4, rel=0.01)
    assert memorising_load(16.0, quatrains, 538_289) == pytest.approx(16.0 * 7.1, rel=0.01)
    assert memorising_load(2.0, 1000, 2000) == memorising_load(1.0, 1000, 1000)


def test_a_time_budget_long_for_the_default_model_widens_it_on_a_text_large_for_it():
    """Tiny Shakespeare's default model (2.5 parameters per character) widens where the time covers
    more than `WIDE_FROM_EPOCHS` of its epochs; the quatrains' (17.8 per character, memorised by epoch
    ~28 at the default width) never does; a shorter budget keeps the default."""
    shakespeare = ModelConfig(vocab_size=65).parameter_count()
    quatrains = ModelConfig(vocab_size=6257, embed_size=512).parameter_count()
    default = ModelConfig.hidden_size
    assert auto_hidden_size(45.0, shakespeare, 1_003_854) == WIDE_HIDDEN_SIZE > default
    assert auto_hidden_size(WIDE_FROM_EPOCHS + 1, shakespeare, 1_003_854) == WIDE_HIDDEN_SIZE
    assert auto_hidden_size(WIDE_FROM_EPOCHS, shakespeare, 1_003_854) == default
    assert auto_hidden_size(12.0, shakespeare, 1_003_854) == default
    assert auto_hidden_size(119.0, quatrains, 538_289) == default
    assert auto_hidden_size(math.inf, shakespeare, 1_003_854) == WIDE_HIDDEN_SIZE


def test_a_widened_models_load_never_falls_below_the_default_widths_at_the_edge():
    """A widened model's epochs weigh `WIDENED_EPOCH_WEIGHT` each, but where that is less than the
    default width's `WIDE_FROM_EPOCHS` (the budget just past the edge plans few of the wider model's
    epochs), the load is the edge's: the regularisation does not drop where the model widens."""
    shakespeare = ModelConfig(vocab_size=65).parameter_count()
    edge = memorising_load(WIDE_FROM_EPOCHS, shakespeare, 1_003_854)
    few = WIDE_FROM_EPOCHS / WIDENED_EPOCH_WEIGHT / 2
    assert widened_load(few, shakespeare, 1_003_854) == edge
    assert widened_load(40.0, shakespeare, 1_003_854) == WIDENED_EPOCH_WEIGHT * memorising_load(
        40.0, shakespeare, 1_003_854
    )
    assert widened_load(40.0, shakespeare, 1_003_854) > edge


def test_the_chosen_embedding_grows_with_the_log_of_the_vocabulary_up_to_the_hidden_size():
    sizes = [65, 512, 700, 1000, 2048, 6257, 100_000]
    assert [auto_embed_size(v, 512) for v in sizes] == [64, 64, 64, 128, 256, 512, 512]
    assert [auto_embed_size(v, 256) for v in sizes] == [64, 64, 64, 128, 256, 256, 256]
    assert auto_embed_size(6257, 16) == 64  # never narrower than the default


def test_the_chosen_weight_decay_grows_with_the_log_of_the_planned_epochs():
    """The default for short runs; the same growth for every doubling beyond; capped; never less for a longer run."""
    assert [auto_weight_decay(e) for e in (0.5, 6.0, 12.0, 22.4, 96.0)] == [0.1, 0.1, 0.2, 0.29, 0.5]
    assert auto_weight_decay(math.inf) == MAX_AUTO_WEIGHT_DECAY
    chosen = [auto_weight_decay(e) for e in np.geomspace(1.0, 100.0, 50)]
    assert chosen == sorted(chosen)


def test_learning_rate_schedule_warms_up_then_decays():
    config = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_fraction=0.1)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 50, 0.5) == pytest.approx(0.55)
    assert learning_rate(config, 99, 1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("attention", [0, 5])  # the attention's memory is part of the state
def test_save_restore_gives_identical_params_and_next_loss(tmp_path, attention):
    vocab, batcher = batches(periodic_text(), 4, 8)
    model_config = ModelConfig(vocab_size=len(vocab), attention=attention, **SMALL)
    train_config = TrainConfig(batch_size=4, seq_len=8)
    step = make_train_step(model_config, train_config)
    state = create_state(model_config, train_config)
    for i in range(3):
        state, _ = step(state, *batcher.batch(i), np.float32(1e-3))
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(3, state, {"step": 3}, val_loss=1.0)
    store.wait()
    restored, progress = store.restore(3, jax.eval_shape(lambda: create_state(model_config, train_config)))
    store.close()
    assert progress == {"step": 3}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    original_state, original = step(state, *batcher.batch(3), np.float32(1e-3))
    _, again = step(restored, *batcher.batch(3), np.float32(1e-3))
    assert float(original["loss"]) == float(again["loss"])


def test_a_memory_saved_in_float32_resumes_into_a_bfloat16_model_unchanged(tmp_path):
    """Runs saved before the memory's keys and values were kept in the compute dtype hold them in
    float32: they restore into today's bf16 memory (the values the attention read from them all along)."""
    vocab, batcher = batches(periodic_text(), 4, 8)
    model_config = ModelConfig(vocab_size=len(vocab), attention=5, dtype="bfloat16", **SMALL)
    train_config = TrainConfig(batch_size=4, seq_len=8)
    step = make_train_step(model_config, train_config)
    state = create_state(model_config, train_config)
    for i in range(3):
        state, _ = step(state, *batcher.batch(i), np.float32(1e-3))
    *stored, valid, slot = state.carry[-1]
    assert [array.dtype for array in stored] == [jnp.bfloat16] * 2  # keys, values
    older = state.replace(carry=(*state.carry[:-1], (*[a.astype(jnp.float32) for a in stored], valid, slot)))
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(3, older, {"step": 3}, val_loss=1.0)
    store.wait()
    restored, _ = store.restore(3, jax.eval_shape(lambda: create_state(model_config, train_config)))
    store.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, original = step(state, *batcher.batch(3), np.float32(1e-3))
    _, again = step(restored, *batcher.batch(3), np.float32(1e-3))
    assert float(original["loss"]) == float(again["loss"])


def train_run(tmp_path, name, text_path, *, resume=False, stop_after=None, attention=0, **train_options):
    prepared, _ = prepare(str(text_path), val_fraction=0.1)
    model_config = ModelConfig(vocab_size=len(prepared.vocab), dropout=0.1, attention=attention, **SMALL)
    train_config = TrainConfig(**({"batch_size": 4, "seq_len": 10, "log_every": 1} | train_options))
    run = Run(tmp_path / name)
    run.directory.mkdir(exist_ok=True)
    losses, evals = {}, []
    for report in fit(run, prepared, model_config, train_config, resume=resume):
        if isinstance(report, StepReport):
            losses[report.step] = report.loss
            if stop_after is not None and report.step == stop_after:
                break  # like a kill: no final checkpoint is written
        elif isinstance(report, EvalReport):
            evals.append(report)
        elif isinstance(report, Finished):
            final = report
    else:
        return losses, evals, final, run
    return losses, evals, None, run


def latest_params(run, **train_options):
    model_config = ModelConfig(vocab_size=9, dropout=0.1, **SMALL)
    store = CheckpointStore(run.checkpoints_dir, create=False)
    state, _ = store.restore(
        store.latest_step(),
        jax.eval_shape(lambda: create_state(model_config, TrainConfig(batch_size=4, seq_len=10, **train_options))),
    )
    store.close()
    return state


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(2000))
    # An epoch is 45 windows: no epoch boundary here. The weights' moving average is part of the state.
    options = {"steps": 30, "eval_every": 10, "ema": 0.9}
    losses, _, final, run_a = train_run(tmp_path, "a", text_path, **options)
    assert final.reason == "steps" and final.step == 30

    # Interrupted (no final checkpoint, like kill -9) at three points, resumed each time.
    partial, _, _, run_b = train_run(tmp_path, "b", text_path, stop_after=15, **options)
    assert max(partial) == 15
    resumed, _, _, _ = train_run(tmp_path, "b", text_path, resume=True, stop_after=23, **options)
    assert min(resumed) == 11  # restarted from the checkpoint of step 10
    assert {k: resumed[k] for k in range(11, 24)} == {k: losses[k] for k in range(11, 24)}
    resumed, _, final_b, _ = train_run(tmp_path, "b", text_path, resume=True, **options)
    assert min(resumed) == 21 and final_b.step == 30
    assert {k: resumed[k] for k in range(21, 31)} == {k: losses[k] for k in range(21, 31)}
    a, b = latest_params(run_a, ema=0.9), latest_params(run_b, ema=0.9)
    assert int(a.step) == int(b.step) == 30 and a.ema is not None
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_few_steps_per_call_train_exactly_as_one_step_per_call_and_resume_exactly(tmp_path):
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(600))
    # 13 windows an epoch: calls of 4 steps cross epoch starts (the state is reset inside a call),
    # and 30 steps end with two single steps. One step per call where log_every is 1.
    options = {"steps": 30, "eval_every": 12, "ema": 0.9}
    assert steps_per_call(TrainConfig(log_every=4, eval_every=12), make_placement()) == 4
    assert steps_per_call(TrainConfig(log_every=1, eval_every=12), make_placement()) == 1
    single, single_evals, _, run_a = train_run(tmp_path, "a", text_path, **options)
    losses, evals, final, run_b = train_run(tmp_path, "b", text_path, log_every=4, **options)
    assert final.step == 30 and sorted(losses) == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [(e.step, e.val_loss) for e in evals] == [(e.step, e.val_loss) for e in single_evals]
    assert losses[8] == pytest.approx(sum(single[k] for k in range(5, 9)) / 4, rel=1e-6)
    a, b = latest_params(run_a, ema=0.9), latest_params(run_b, ema=0.9)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # Interrupted after step 20 and resumed from the checkpoint of step 12: the same steps again.
    train_run(tmp_path, "c", text_path, log_every=4, stop_after=20, **options)
    resumed, _, final_c, run_c = train_run(tmp_path, "c", text_path, resume=True, log_every=4, **options)
    assert min(resumed) == 16 and final_c.step == 30
    assert resumed == {k: losses[k] for k in resumed}
    c = latest_params(run_c, ema=0.9)
    for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_with_attention_a_few_steps_per_call_train_as_one_step_per_call_across_an_epoch_start(tmp_path):
    """Inside a call an epoch start empties the attention memory by its valid flags and next slot
    alone (`attention.cleared`), keeping the stale keys and values: one step per call starts from a
    memory of zeros, and the two must train alike."""
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(600))  # 13 windows an epoch: steps 13-16 cross the epoch start
    options = {"steps": 16, "eval_every": 16, "attention": 6}
    single, single_evals, _, _ = train_run(tmp_path, "a", text_path, **options)
    losses, evals, _, _ = train_run(tmp_path, "b", text_path, log_every=4, **options)
    assert sorted(losses) == [4, 8, 12, 16]
    for step, loss in losses.items():
        assert loss == pytest.approx(sum(single[k] for k in range(step - 3, step + 1)) / 4, rel=1e-6), step
    assert [e.val_loss for e in evals] == [e.val_loss for e in single_evals]


def test_streams_restarted_within_an_epoch_train_alike_in_calls_of_several_steps_and_resume_exactly(tmp_path):
    """A few streams restart from a zero state at most steps (restart_every 30 = 3 windows, 13 windows
    an epoch): between single steps `fit` zeroes their rows, inside a call of several the step does;
    with attention, the memory of those rows is emptied either way. Same losses, same weights."""
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(600))
    options = {"steps": 20, "eval_every": 8, "attention": 6, "restart_every": 30}
    single, single_evals, _, run_a = train_run(tmp_path, "a", text_path, **options)
    losses, evals, _, run_b = train_run(tmp_path, "b", text_path, log_every=4, **options)
    for step, loss in losses.items():
        assert loss == pytest.approx(sum(single[k] for k in range(step - 3, step + 1)) / 4, rel=1e-6), step
    assert [e.val_loss for e in evals] == [e.val_loss for e in single_evals]
    plain, _, _, _ = train_run(tmp_path, "p", text_path, **(options | {"restart_every": 0}))
    assert plain[1] == single[1] and plain[2] != single[2]  # the first restart (stream 2) comes before step 2
    train_run(tmp_path, "c", text_path, stop_after=13, **options)
    resumed, _, _, _ = train_run(tmp_path, "c", text_path, resume=True, **options)
    assert min(resumed) == 9 and resumed == {k: single[k] for k in resumed}


def test_restarted_zeroes_the_chosen_streams_and_empties_their_memory():
    config = ModelConfig(vocab_size=9, attention=4, **SMALL)
    carry = jax.tree.map(jnp.ones_like, initial_carry(config, 3))
    out = restarted(config, carry, np.array([False, True, False]))
    for leaf in jax.tree.leaves(out[:-1]):  # the layers' states: stream 1 zeroed, the others kept
        np.testing.assert_array_equal(leaf[np.array([0, 2])], 1)
        np.testing.assert_array_equal(leaf[1], 0)
    *stored, valid, slot = out[-1]  # the memory: stream 1 emptied (no slot valid, the next entry to 0)
    np.testing.assert_array_equal(valid, [[1] * 4, [0] * 4, [1] * 4])
    np.testing.assert_array_equal(slot, [1, 0, 1])
    for leaf in stored:  # keys and values not rewritten: a slot not valid is never read
        np.testing.assert_array_equal(leaf, 1)


def test_weight_decay_shrinks_the_matrices_by_the_learning_rate_and_nothing_else():
    """AdamW: the update is Adam's plus weight_decay × the parameter, for matrices only, so a step
    with decay lands lr × weight_decay × p below the same step without it."""
    vocab, batcher = batches(periodic_text(), 4, 8)
    model_config = ModelConfig(vocab_size=len(vocab), **SMALL)
    lr = np.float32(1e-2)
    after = {}
    for decay in (0.5, 0.0):
        config = TrainConfig(batch_size=4, seq_len=8, weight_decay=decay)
        state, _ = make_train_step(model_config, config)(create_state(model_config, config), *batcher.batch(0), lr)
        after[decay] = dict(jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, state.params))[0])
    before = jax.tree_util.tree_flatten_with_path(create_state(model_config, TrainConfig()).params)[0]
    for path, p in before:
        p = np.asarray(p)
        expected = -lr * 0.5 * p if p.ndim >= 2 else np.zeros_like(p)
        np.testing.assert_allclose(after[0.5][path] - after[0.0][path], expected, atol=1e-6, err_msg=str(path))
    assert sum(np.ndim(p) >= 2 for _, p in before) >= 4  # embedding, input and recurrent weights, output layer


def test_the_weights_moving_average_follows_its_formula():
    vocab, batcher = batches(periodic_text(), 4, 8)
    model_config = ModelConfig(vocab_size=len(vocab), **SMALL)
    train_config = TrainConfig(batch_size=4, seq_len=8, ema=0.9)
    step, state = make_train_step(model_config, train_config), create_state(model_config, train_config)
    expected = jax.tree.map(np.asarray, state.params)
    for i in range(12):
        state, _ = step(state, *batcher.batch(i), np.float32(1e-2))
        rate = np.float32(1.0 - min(0.9, (1 + i) / (10 + i)))  # ramps up: 0.9 only from step 80 on
        expected = jax.tree.map(lambda a, p, r=rate: a + r * (np.asarray(p) - a), expected, state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(state.ema["head_bias"]), np.asarray(state.params["head_bias"]))
    assert create_state(model_config, TrainConfig()).ema is None  # off: the state is what it always was


def test_a_run_with_a_moving_average_is_validated_and_sampled_with_it(tmp_path):
    from charrnn.start import new_run
    from charrnn.trained import load

    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(2000))
    options = {"steps": 20, "eval_every": 20, "ema": 0.8, "learning_rate": 1e-2}
    model = {"dropout": 0.1, "dtype": "float32", **SMALL}
    train = {"batch_size": 4, "seq_len": 10, "log_every": 1, "val_fraction": 0.1, **options}
    with new_run(str(text_path), directory=tmp_path / "r", model=model, train=train) as start:  # as `charrnn train`
        evals = [report for report in start.fit() if isinstance(report, EvalReport)]
    run, prepared = start.run, start.corpus
    state = latest_params(run, ema=0.8)
    loaded = load(run, "latest")
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    windows = evaluation_windows(prepared.val, 4, 10, burn_in=VAL_BURN_IN)
    model_config = loaded.model_config
    val_ema = evaluate(make_eval_step(model_config), state.ema, model_config, windows)
    val_raw = evaluate(make_eval_step(model_config), state.params, model_config, windows)
    assert evals[-1].val_loss == pytest.approx(val_ema, abs=1e-6) and val_ema != val_raw


def test_epoch_boundary_resets_state_and_validation_is_logged(tmp_path):
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(600))
    losses, evals, final, run = train_run(tmp_path, "r", text_path, epochs=2.0, eval_every=5, learning_rate=1e-2)
    windows = (540 - 1) // 4 // 10
    assert final.reason == "epochs" and final.step == 2 * windows
    records = run.read_metrics()
    assert [r["step"] for r in records] == [e.step for e in evals]
    assert records[-1]["step"] == final.step
    assert all(math.isfinite(r["val_loss"]) for r in records)
    assert records[-1]["val_bits_per_char"] == pytest.approx(records[-1]["val_loss"] / math.log(2))
    assert final.best_val_loss == min(r["val_loss"] for r in records)


def test_patience_stops_early(tmp_path):
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(2000))
    # A tiny learning rate with constant schedule barely moves; huge rates diverge: pick one that plateaus.
    _, evals, final, _ = train_run(
        tmp_path, "p", text_path, steps=400, eval_every=2, patience=2, learning_rate=1e-9, warmup_steps=0
    )
    assert final.reason == "patience"
    assert final.step < 400


def test_validation_reads_at_most_max_val_chars(tmp_path):
    text_path = tmp_path / "text.txt"
    text_path.write_text(periodic_text(2000))
    prepared, _ = prepare(str(text_path), val_fraction=0.1)
    model_config = ModelConfig(vocab_size=len(prepared.vocab), **SMALL)
    train_config = TrainConfig(batch_size=4, seq_len=10, steps=2, eval_every=2, max_val_chars=50)
    run = Run(tmp_path / "v")
    run.directory.mkdir()
    reports = list(fit(run, prepared, model_config, train_config))
    assert "the first 50 of 200 validation characters" in [r for r in reports if isinstance(r, Notice)][0].message
    (report,) = [r for r in reports if isinstance(r, EvalReport)]
    params = latest_params(run).params
    windows = evaluation_windows(prepared.val[:50], 4, 10, burn_in=VAL_BURN_IN)
    assert report.val_loss == evaluate(make_eval_step(model_config), params, model_config, windows)


def test_the_rnn_default_unroll_computes_the_same_step():
    """The Elman RNN unrolls its time loop by default (speed); the update must not change."""
    vocab, batcher = batches(periodic_text(), 4, 9)
    model_config = ModelConfig(vocab_size=len(vocab), cell="rnn", **SMALL)
    results = []
    for unroll in (None, 1):
        train_config = TrainConfig(batch_size=4, seq_len=9, unroll=unroll)
        state = create_state(model_config, train_config)
        state, metrics = make_train_step(model_config, train_config)(state, *batcher.batch(0), np.float32(1e-2))
        results.append((float(metrics["loss"]), jax.tree.leaves(state.params)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_the_library_changes_nothing_process_wide(tmp_path):
    """A notebook that saves and restores checkpoints keeps its own hooks and log levels: what the
    command line quiets, it quiets in its own process (cli/process.py)."""
    import logging
    import sys

    from charrnn.checkpoint import CheckpointStore

    hook, level = sys.unraisablehook, logging.getLogger("asyncio").level
    model_config = ModelConfig(vocab_size=5, layers=1, hidden_size=4, embed_size=2)
    state = create_state(model_config, TrainConfig(batch_size=2, seq_len=4))
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(1, state, {"step": 1}, 1.0)
    store.close()
    assert sys.unraisablehook is hook and logging.getLogger("asyncio").level == level


@pytest.mark.parametrize(
    "reason, best_step, since_best, peaked",
    [
        ("time", 5500, 7, True),  # the quatrains' 30 minutes: best at step 5,500 of 9,490, worse after
        ("time", 8000, 3, False),  # best in the last quarter: the budget was used
        ("steps", 5500, 1, False),  # one worse validation is not yet a trend
        ("patience", 5500, 7, False),  # stopped early already, and said why
        ("interrupted", 5500, 7, False),  # the budget was not used up
    ],
)
def test_a_run_is_said_to_have_peaked_early_only_when_it_used_its_budget_memorising(
    reason, best_step, since_best, peaked
):
    assert Finished(reason, 9490, 4.767, best_step, evals_since_best=since_best).peaked_early is peaked


def test_a_time_budgets_plan_reads_the_machines_speed_past_a_slow_spell(monkeypatch):
    """The plan times calls for a while and takes the fast quarter's speed: a few calls slowed by a
    busy host at the start do not move it, where one timing alone would have read the host slow."""
    import time

    from charrnn import bench
    from charrnn.step import STEPS_PER_CALL

    durations = iter([0.08] * 4 + [0.02] * 1000)

    def fake_calls(model_config, train_config):
        def call():
            time.sleep(next(durations))
            return jnp.zeros(())

        return call, 0.0

    monkeypatch.setattr(bench, "train_calls", fake_calls)
    train = TrainConfig(batch_size=4, seq_len=8)
    rate = bench.steady_train_rate(ModelConfig(vocab_size=5), train, seconds=0.6)
    per_fast_call = STEPS_PER_CALL * 4 * 8 / 0.02
    assert per_fast_call / 1.5 < rate <= per_fast_call * 1.01
