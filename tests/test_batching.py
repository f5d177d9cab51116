import numpy as np
import pytest

from charrnn.batching import StreamBatcher, evaluation_windows
from charrnn.cli.options import flag
from charrnn.errors import CorpusError


def test_windows_tile_each_stream_exactly():
    ids = np.arange(1000, dtype=np.uint16)
    batcher = StreamBatcher(ids, batch_size=4, seq_len=7)
    stream_len = 999 // 4
    assert batcher.windows_per_epoch == stream_len // 7
    inputs = np.concatenate([batcher.batch(k).inputs for k in range(batcher.windows_per_epoch)], axis=1)
    targets = np.concatenate([batcher.batch(k).targets for k in range(batcher.windows_per_epoch)], axis=1)
    used = batcher.windows_per_epoch * 7
    for b in range(4):
        start = b * stream_len
        np.testing.assert_array_equal(inputs[b], ids[start : start + used])
        np.testing.assert_array_equal(targets[b], ids[start + 1 : start + used + 1])
    assert inputs.dtype == np.int32


@pytest.mark.parametrize(("batch", "restart_every"), [(4, 30), (32, 256), (5, 70), (3, 7)])
def test_each_stream_restarts_every_interval_staggered_over_the_streams(batch, restart_every):
    batcher = StreamBatcher(np.arange(20_000, dtype=np.uint16), batch, 10, restart_every=restart_every)
    interval = max(1, restart_every // 10)
    assert batcher.restart_interval == interval
    fresh = np.array([batcher.restarts(k) for k in range(batcher.windows_per_epoch)])  # [window, stream]
    assert fresh[0].all()  # an epoch's start: every stream from its beginning
    for b in range(batch):
        starts = np.flatnonzero(fresh[:, b])
        assert np.diff(starts).max() <= interval and set(np.diff(starts)[1:]) <= {interval}
    assert fresh[1:].sum(axis=1).max() <= -(-batch // interval)  # a few streams at a time, not all at once


def test_no_restarts_within_an_epoch_shorter_than_the_interval():
    batcher = StreamBatcher(np.arange(1000, dtype=np.uint16), 4, 10, restart_every=300)  # 24 windows, every 30
    assert batcher.restart_interval == 0
    assert batcher.restarts(0).all() and not any(batcher.restarts(k).any() for k in range(1, 24))
    assert not StreamBatcher(np.arange(20_000), 4, 10).restarts(7).any()  # restart_every 0: epoch starts only


def test_too_small_corpus_says_how_long_it_must_be():
    with pytest.raises(CorpusError, match="at least 641") as raised:
        StreamBatcher(np.arange(100), batch_size=64, seq_len=10)
    # The library names its parameters; the command line, through the same error, its options.
    assert "but batch_size=64 × seq_len=10 needs" in str(raised.value)
    assert "but --batch-size 64 × --seq-len 10 needs" in raised.value.worded(flag)


@pytest.mark.parametrize("burn_in", [0, 5, 256])
@pytest.mark.parametrize(("n", "batch", "seq"), [(2, 4, 3), (101, 4, 10), (1000, 7, 13), (64, 64, 100)])
def test_evaluation_windows_count_every_target_once(n, batch, seq, burn_in):
    ids = np.arange(n) % 251
    windows = evaluation_windows(ids, batch, seq, burn_in=burn_in)
    pairs = []
    for inputs, targets, weights in windows:
        assert inputs.shape == targets.shape == weights.shape
        for b in range(inputs.shape[0]):
            for t in range(inputs.shape[1]):
                if weights[b, t]:
                    pairs.append((b, t, inputs[b, t], targets[b, t]))
    assert len(pairs) == n - 1
    # Rebuild the text stream by stream: consecutive and in order.
    by_stream = {}
    for b, _, x, y in pairs:
        by_stream.setdefault(b, []).append((x, y))
    rebuilt = [pair for b in sorted(by_stream) for pair in by_stream[b]]
    assert rebuilt == [(ids[i], ids[i + 1]) for i in range(n - 1)]


@pytest.mark.parametrize("burn_in", [0, 5, 40])
def test_each_stream_reads_the_text_before_it_first(burn_in):
    """Stream b > 0 starts `burn_in` characters early (uncounted), on the text just before its
    first counted target, and reads on without a gap; stream 0 starts at the text's start."""
    ids = np.arange(1000) % 251
    windows = evaluation_windows(ids, 7, 13, burn_in=burn_in)
    inputs, targets, weights = (np.concatenate([w[i] for w in windows], axis=1) for i in range(3))
    stream_len = -(-999 // 7)
    for b in range(7):
        first_counted = int(np.argmax(weights[b] > 0))
        early = min(burn_in, b * stream_len)
        assert first_counted == early
        span = early + min(stream_len, 999 - b * stream_len)
        np.testing.assert_array_equal(inputs[b, :span], ids[b * stream_len - early : b * stream_len - early + span])
        np.testing.assert_array_equal(
            targets[b, :span], ids[b * stream_len - early + 1 : b * stream_len - early + span + 1]
        )
        assert not weights[b, span:].any()
