"""Run by tests/test_placement.py in a fresh interpreter whose XLA_FLAGS fake several CPU devices
(the flag must be set before JAX starts). Prints one JSON object of what the tests check."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from charrnn.batching import StreamBatcher
from charrnn.config import ModelConfig, TrainConfig
from charrnn.corpus import prepare
from charrnn.loop import EvalReport, StepReport, fit
from charrnn.placement import make_placement
from charrnn.runs import Run
from charrnn.step import make_train_step, placed_state


def text() -> str:
    """A few kilobytes that a tiny model cannot learn in a few steps (the losses keep moving)."""
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far"]
    return " ".join(rng.choice(words, 1200))


def train(root: Path, name: str, prepared, mc, tc, devices: int, *, resume: bool = False) -> dict:
    run = Run(root / name)
    run.directory.mkdir(exist_ok=True)
    out = {"loss": {}, "val": {}}
    for report in fit(run, prepared, mc, tc, resume=resume, placement=make_placement(devices)):
        if isinstance(report, StepReport):
            out["loss"][report.step] = report.loss
        elif isinstance(report, EvalReport):
            out["val"][report.step] = report.val_loss
    return out


def sharding_facts(ids, mc, tc) -> dict:
    """Where a batch's rows and the state's leaves live after one step on every device."""
    placement = make_placement()
    full = StreamBatcher(ids, tc.batch_size, tc.seq_len).batch(0)
    local = StreamBatcher(ids, tc.batch_size, tc.seq_len, rows=placement.local_rows(tc.batch_size)).batch(0)
    inputs, targets = (placement.put_rows(rows, tc.batch_size) for rows in local)
    shards = [
        {"device": shard.device.id, "rows": np.asarray(shard.data).tolist(), "index": shard.index[0].start}
        for shard in inputs.addressable_shards
    ]
    state = placed_state(mc, tc, placement)
    state, _ = make_train_step(mc, tc, placement)(state, inputs, targets, np.float32(1e-3))
    carry = jax.tree.leaves(state.carry)[0]
    kernel = state.params["head_kernel"]
    return {
        "devices": placement.size,
        "batch_shards": shards,
        "full_batch": full.inputs.tolist(),
        "carry_shard_shapes": [list(s.data.shape) for s in carry.addressable_shards],
        "carry_devices": len({s.device.id for s in carry.addressable_shards}),
        "memory_shard_shapes": [list(s.data.shape) for s in state.carry[-1][-3].addressable_shards],  # values
        "key_shard_shapes": [list(s.data.shape) for s in state.carry[-1][0].addressable_shards],
        "kernel_fully_replicated": bool(kernel.sharding.is_fully_replicated),
        "kernel_devices": len(kernel.sharding.device_set),
    }


def collectives(ids, mc, tc) -> dict:
    """The collectives in the compiled multi-device training step, by kind, for models that exercise
    its different paths: the gradients' all-reduce should be all that devices exchange (float32
    weight-gradient operands and the attention memory's writes were once gathered whole)."""
    placement = make_placement()
    local = StreamBatcher(ids, tc.batch_size, tc.seq_len, rows=placement.local_rows(tc.batch_size)).batch(0)
    inputs, targets = (placement.put_rows(rows, tc.batch_size) for rows in local)
    found = {}
    variants = {
        "float32": mc,
        "bfloat16 attention": dataclasses.replace(mc, dtype="bfloat16", attention=12),
        "gru attention dropouts": dataclasses.replace(
            mc, cell="gru", attention=12, recurrent_dropout=0.1, weight_drop=0.1
        ),
    }
    for name, config in variants.items():
        state = placed_state(config, tc, placement)
        program = make_train_step(config, tc, placement).lower(state, inputs, targets, np.float32(1e-3))
        text = program.compile().as_text()
        kinds = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
        found[name] = {kind: text.count(f" {kind}(") + text.count(f" {kind}-start(") for kind in kinds}
    return found


def main(root: Path, kind: str) -> None:
    """`kind`: "attention" (the model with an attention head, whose memory is split over the devices
    with the recurrent state: it runs every path the plain model does, and more) or "bidirectional"
    (that model, trained on one and four devices only)."""
    # The resumed runs compile the very programs of the first two: let them load those.
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    (root / "corpus.txt").write_text(text())
    prepared, _ = prepare(str(root / "corpus.txt"), val_fraction=0.1)
    mc = ModelConfig(vocab_size=len(prepared.vocab), layers=1, hidden_size=16, embed_size=8, dropout=0.1)
    # restart_every 16: half the streams restart from zero at each step (their rows of a carry split over
    # the devices), between single steps (log_every 1)
    tc = TrainConfig(
        batch_size=8,
        seq_len=8,
        steps=6,
        eval_every=3,
        log_every=1,
        warmup_steps=2,
        learning_rate=1e-2,
        restart_every=16,
    )
    if kind == "bidirectional":  # the other kind of model, alike
        both = dataclasses.replace(mc, bidirectional=True, lookahead=4)
        result = {name: train(root, name, prepared, both, tc, devices) for name, devices in (("one", 1), ("four", 4))}
        print(json.dumps(result))
        return
    mc = dataclasses.replace(mc, attention=12)
    result = {"sharding": sharding_facts(prepared.train, mc, tc), "collectives": collectives(prepared.train, mc, tc)}
    result["one"] = train(root, "one", prepared, mc, tc, 1)
    result["four"] = train(root, "four", prepared, mc, tc, 4)
    # Resume across device counts: the run as it was at its step-3 checkpoint, continued elsewhere.
    for first, then, devices in (("four", "four_then_one", 1), ("one", "one_then_four", 4)):
        shutil.copytree(root / first, root / then)
        shutil.rmtree(root / then / "checkpoints" / "6")
        result[then] = train(root, then, prepared, mc, tc, devices, resume=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
