import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import periodic_text

from charrnn.batching import StreamBatcher
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import UsageError
from charrnn.sampling import SampleOptions, make_sample_chunk, pick, sample_stream
from charrnn.step import create_state, make_train_step
from charrnn.vocab import Vocabulary


def test_greedy_is_argmax():
    logits = jnp.array([[0.1, 3.0, 0.2], [5.0, -1.0, 4.9]])
    ids = pick(logits, jax.random.key(0), SampleOptions(temperature=0))
    assert ids.tolist() == [1, 0]


def test_top_k_and_top_p_never_pick_outside_the_kept_set():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.15, 0.1]]))
    keys = jax.random.split(jax.random.key(1), 2000)
    top2 = jax.vmap(lambda k: pick(logits, k, SampleOptions(1.0, top_k=2)))(keys).ravel()
    assert set(np.unique(top2)) == {1, 2}
    nucleus = jax.vmap(lambda k: pick(logits, k, SampleOptions(1.0, top_p=0.8)))(keys).ravel()
    assert set(np.unique(nucleus)) == {1, 2, 3}  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
    everything = jax.vmap(lambda k: pick(logits, k, SampleOptions(1.0)))(keys).ravel()
    assert set(np.unique(everything)) == {0, 1, 2, 3, 4}


def test_low_temperature_sharpens():
    logits = jnp.log(jnp.array([[0.6, 0.4]]))
    keys = jax.random.split(jax.random.key(2), 4000)
    cold = jax.vmap(lambda k: pick(logits, k, SampleOptions(0.25)))(keys).ravel()
    warm = jax.vmap(lambda k: pick(logits, k, SampleOptions(1.0)))(keys).ravel()
    assert np.mean(warm == 0) == pytest.approx(0.6, abs=0.04)
    assert np.mean(cold == 0) > 0.8  # 0.6^4 / (0.6^4 + 0.4^4) = 0.835


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "^temperature must be"),
        ({"temperature": float("nan")}, "^temperature must be"),
        ({"top_p": 0}, "^top_p must be"),
        ({"top_p": 1.5}, "^top_p must be"),
        ({"top_k": -1}, "^top_k must be"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, message):
    """By the parameter's name in the library; by the option's (--temp) on the command line."""
    with pytest.raises(UsageError, match=message):
        SampleOptions(**kwargs)


@pytest.fixture(scope="module")
def trained():
    text = periodic_text()
    vocab = Vocabulary.from_text(text)
    batcher = StreamBatcher(vocab.encode(text), 8, 16)
    model_config = ModelConfig(vocab_size=len(vocab), layers=1, hidden_size=32, embed_size=8)
    train_config = TrainConfig(batch_size=8, seq_len=16, learning_rate=1e-2)
    state, step = create_state(model_config, train_config), make_train_step(model_config, train_config)
    for i in range(200):
        state, _ = step(state, *batcher.batch(i % batcher.windows_per_epoch), np.float32(1e-2))
    return state.params, model_config, vocab


def generate(trained, **kwargs):
    params, model_config, vocab = trained
    pieces = list(sample_stream(params, model_config, vocab, **kwargs))
    return ["".join(p[i] for p in pieces) for i in range(len(pieces[0]))], pieces


def test_trained_model_continues_the_pattern(trained):
    (text,), _ = generate(trained, length=40, prime="hello", options=SampleOptions(0.0))
    assert text == " world, hello world, hello world, hello "


def test_streams_in_chunks_of_exact_total_length(trained):
    texts, pieces = generate(trained, length=70, prime="h", options=SampleOptions(1.0), num=3, chunk_size=32, seed=3)
    assert [len(p[0]) for p in pieces] == [32, 32, 6]
    assert [len(t) for t in texts] == [70, 70, 70]
    again, _ = generate(trained, length=70, prime="h", options=SampleOptions(1.0), num=3, chunk_size=32, seed=3)
    assert again == texts  # same seed, same text
    other, _ = generate(trained, length=70, prime="h", options=SampleOptions(3.0), num=3, chunk_size=32, seed=4)
    assert other != texts


def test_sampler_compiles_once_per_option_set(trained):
    params, model_config, vocab = trained
    options = SampleOptions(0.7, top_k=3)
    for seed in range(3):
        list(sample_stream(params, model_config, vocab, length=50, options=options, seed=seed, chunk_size=16))
    assert make_sample_chunk(model_config, options, 16)._cache_size() == 1


def test_zero_length_yields_nothing(trained):
    params, model_config, vocab = trained
    assert list(sample_stream(params, model_config, vocab, length=0)) == []


def test_stop_scanner_finds_a_stop_text_spanning_chunks():
    from charrnn.sampling import StopScanner

    scanner = StopScanner(2, printed=("\n\n", "END"))
    assert scanner.cut(["ab\n", "xE"]) == ["ab\n", "xE"]
    assert scanner.cut(["\ncd", "N"]) == ["\n", "N"]  # "\n" + "\n", "E" + "N"... not yet "END"
    assert scanner.done == [True, False]
    assert scanner.cut(["more", "Dzz"]) == ["", "D"]
    assert scanner.all_done()
    hidden = StopScanner(1, printed=("lo",), hidden=("\x1e",))
    assert hidden.cut(["ab\x1ecd"]) == ["ab"]  # a hidden stop (the document boundary) is not printed
    first = StopScanner(1, printed=("abc", "b"))
    assert first.cut(["xabc"]) == ["xab"]  # the stop text that is complete first wins


def test_stop_ends_each_sample_on_its_own_even_across_small_chunks(trained):
    params, model_config, vocab = trained
    pieces = list(
        sample_stream(
            params,
            model_config,
            vocab,
            length=200,
            prime="hello",
            options=SampleOptions(0.0),
            chunk_size=3,
            stop=("rld,",),
        )
    )
    text = "".join(p[0] for p in pieces)
    assert text == " world,"
    assert len(pieces) == 3  # " wo", "rld", ",": no chunk computed or yielded after the stop
    texts, _ = generate(
        trained, length=60, prime="h", options=SampleOptions(1.5), num=3, chunk_size=4, seed=5, stop=(" ",)
    )
    free, _ = generate(trained, length=60, prime="h", options=SampleOptions(1.5), num=3, chunk_size=4, seed=5)
    for stopped, full in zip(texts, free, strict=True):
        assert stopped == full[: full.index(" ") + 1] if " " in full else stopped == full
