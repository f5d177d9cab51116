"""Scoring and evaluating text: per-line scores against a plain reference, carried state against
eval, eval against training's own record, and the commands through real pipes."""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import charrnn
from charrnn import scoring
from charrnn.cli.main import app
from charrnn.cli.options import flag
from charrnn.model import CharRNN, initial_carry

CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]
TINY = ["--layers", "1", "--hidden", "32", "--embed", "8", "-b", "4", "-t", "16", "--dropout", "0"]
WORDS = "the cat sat on a mat and the dog ran to it".split()


def word_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A tiny LSTM trained (in a real process) on lines of words: `runs/words` in this directory."""
    home = tmp_path_factory.mktemp("scoring")
    os.environ["CHARRNN_CACHE"] = str(home / "cache")  # module-scoped: the autouse fixture is not active yet
    (home / "words.txt").write_text("\n".join(word_lines(400)) + "\n")
    subprocess.run(
        [*CHARRNN, "train", "words.txt", *TINY, "--steps", "60", "--eval-every", "30", "--lr", "0.01"],
        cwd=home,
        check=True,
        capture_output=True,
    )
    return home


@pytest.fixture()
def model(home, monkeypatch):
    monkeypatch.chdir(home)
    monkeypatch.setenv("CHARRNN_CACHE", str(home / "cache"))
    return charrnn.load("runs/words")


def reference_logprob(model, line: str) -> float:
    """One line alone, unpadded, one plain forward pass: sum of log p(next char), newline included."""
    ids = model.vocab.encode(line + "\n").astype(np.int32)
    inputs = np.concatenate([[model.vocab.index["\n"]], ids[:-1]])[None]
    forward = jax.jit(CharRNN(model.model_config).apply)  # unpadded: one compile per line length
    logits, _ = forward({"params": model.params}, inputs, initial_carry(model.model_config, 1))
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    return float(np.take_along_axis(np.asarray(logp), ids[:, None], axis=1).sum())


def test_line_scores_equal_a_one_line_at_a_time_reference(model):
    # Lengths across several buckets, an empty line, and one longer than a compiled chunk (carried across chunks).
    lines = word_lines(10, seed=1) + ["", "the cat " * 90]
    assert len(lines[-1]) + 1 > scoring.MAX_LENGTH
    scores = model.score(lines)
    assert [s.number for s in scores] == list(range(1, len(lines) + 1))
    assert [s.text for s in scores] == lines
    for line, score in zip(lines, scores, strict=True):
        assert score.chars == len(line) + 1
        assert score.logprob == pytest.approx(reference_logprob(model, line), abs=2e-4, rel=1e-5)


def test_a_line_scores_the_same_alone_and_in_any_batch(model):
    lines = word_lines(30, seed=2)
    together = [s.logprob for s in model.score(lines)]
    alone = [model.score([line])[0].logprob for line in lines[:5]]
    assert together[:5] == pytest.approx(alone, abs=1e-5)


def test_context_scores_equal_eval_over_the_same_text(model):
    lines = word_lines(20, seed=3)
    text = "".join(line + "\n" for line in lines)
    carried = model.score(lines, context=True)
    evaluated = model.eval(text)
    assert sum(s.chars for s in carried) == evaluated.chars == len(text)
    assert -sum(s.logprob for s in carried) / evaluated.chars == pytest.approx(evaluated.nats_per_char, rel=1e-5)
    assert carried[0].logprob == pytest.approx(model.score(lines[:1])[0].logprob, abs=1e-5)  # same fresh start
    assert model.eval(text, streams=3).chars == len(text)


def test_streams_with_context_as_long_as_the_text_equal_one_stream(model):
    """Each stream reads the text before it first, uncounted: with a burn-in reaching back to the
    start, every stream is in the state one stream would be in, so the losses agree; without it
    the streams start cold and lose."""
    text = "".join(line + "\n" for line in word_lines(20, seed=4))
    ids = np.concatenate([[scoring.start_id(model.vocab)], model.vocab.encode(text).astype(np.int64)])
    one = scoring.evaluate_ids(model.params, model.model_config, ids, 1, 16).nats_per_char
    full = scoring.evaluate_ids(model.params, model.model_config, ids, 5, 16, burn_in=len(ids)).nats_per_char
    cold = scoring.evaluate_ids(model.params, model.model_config, ids, 5, 16, burn_in=0).nats_per_char
    assert full == pytest.approx(one, rel=2e-6)
    assert cold > one + 1e-3


def test_eval_of_the_validation_split_equals_the_recorded_loss(home):
    metrics = [json.loads(line) for line in (home / "runs/words/metrics.jsonl").read_text().splitlines()]
    runner = CliRunner()
    for which, record in (("30", metrics[0]), ("latest", metrics[-1])):
        result = runner.invoke(app, ["eval", str(home / "runs/words"), "--checkpoint", which, "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["checkpoint"] == record["step"]
        assert report["nats_per_char"] == pytest.approx(record["val_loss"], abs=1e-5)
        assert report["recorded_val_loss"] == record["val_loss"]


def test_unknown_characters_are_named_with_their_line_or_skipped_and_counted(model):
    with pytest.raises(charrnn.errors.VocabularyError, match=r"line 2 has characters the model never saw: 'Q', 'Z'"):
        list(model.score(["the cat", "the QcatZ", "a Q"]))
    skipped = model.score(["the cat", "the QcatZ"], unknown="skip")
    assert [s.oov for s in skipped] == [0, 2]
    assert skipped[1].logprob == pytest.approx(model.score(["the cat"])[0].logprob, abs=1e-5)


def test_lines_before_an_unknown_character_are_all_scored_first(home, monkeypatch):
    monkeypatch.chdir(home)
    text = "\n".join(word_lines(20, seed=4)) + "\nbad Q line\nthe cat\n"
    result = CliRunner().invoke(app, ["score", "runs/words", "-"], input=text)
    assert isinstance(result.exception, charrnn.errors.VocabularyError) and "line 21" in str(result.exception)
    assert len(result.stdout.splitlines()) == 20


def test_score_cli_columns_json_and_argument_forms(home, monkeypatch):
    monkeypatch.chdir(home)
    lines = word_lines(12, seed=5)
    (home / "some.txt").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    tsv = runner.invoke(app, ["score", "runs/words", "some.txt"])
    assert tsv.exit_code == 0, tsv.output
    rows = [row.split("\t") for row in tsv.stdout.splitlines()]
    assert [row[3] for row in rows] == lines
    for bits, nats, chars, _ in rows:
        assert float(bits) == pytest.approx(-float(nats) / int(chars) / math.log(2), abs=1e-3)
    assert "scored 12 lines" in tsv.stderr and "OOV 0" in tsv.stderr
    # One argument: a file means the latest run; a run directory means standard input.
    assert runner.invoke(app, ["score", "some.txt"]).stdout == tsv.stdout
    assert runner.invoke(app, ["score", "runs/words"], input="\n".join(lines) + "\n").stdout == tsv.stdout
    assert runner.invoke(app, ["score"], input="\n".join(lines)).stdout == tsv.stdout  # no final newline
    objects = [json.loads(x) for x in runner.invoke(app, ["score", "some.txt", "--json"]).stdout.splitlines()]
    assert [o["text"] for o in objects] == lines and [o["line"] for o in objects] == list(range(1, 13))
    assert objects[0]["logprob"] == pytest.approx(float(rows[0][1]), abs=1e-4)


def test_score_and_eval_read_a_named_pipe(home, monkeypatch, tmp_path):
    """`charrnn score RUN <(zcat lines.gz)`: a pipe is read once, as it comes."""
    monkeypatch.chdir(home)
    text = "\n".join(word_lines(6, seed=9)) + "\n"
    (tmp_path / "lines.txt").write_text(text)
    results = {}
    for command in ("score", "eval"):
        os.mkfifo(tmp_path / command)
        producer = threading.Thread(target=(tmp_path / command).write_text, args=(text,), daemon=True)
        producer.start()
        piped = CliRunner().invoke(app, [command, "runs/words", str(tmp_path / command), "--json"])
        producer.join(timeout=10)
        assert piped.exit_code == 0, piped.output
        from_pipe = piped.stdout
        from_file = CliRunner().invoke(app, [command, "runs/words", str(tmp_path / "lines.txt"), "--json"]).stdout
        kept = {"score": lambda record: record, "eval": lambda record: record | {"text": "(its name)"}}[command]
        results[command] = [[kept(json.loads(line)) for line in out.splitlines()] for out in (from_pipe, from_file)]
    assert all(piped == filed and piped for piped, filed in results.values())  # eval's "text" names the file


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["score", "--unknown", "banana"], "--unknown must be error or skip"),
        (["score", "--checkpoint", "soon"], "--checkpoint must be best, latest or a step number"),
        (["score", "runs/words", "-", "--checkpoint", "7"], "has no checkpoint at step 7; it has 30, 60"),
        (["score", "runs/words", "missing.txt"], "missing.txt does not exist"),
        (["score", "nowhere"], "nowhere does not exist (neither a run directory nor a file)"),
        (["score", "cache"], "cache is not a charrnn run"),
        (["score", "--html", "cache"], "--html cache is a directory, not a file"),
        (["score", "--show", "--json"], "give --show or --json, not both"),
        (["eval", "--streams", "0"], "--streams must be positive"),
    ],
)
def test_bad_options_are_one_line_errors(home, monkeypatch, args, fragment):
    monkeypatch.chdir(home)
    result = CliRunner().invoke(app, args, input="the cat\n")
    assert isinstance(result.exception, charrnn.errors.CharrnnError), result.output
    shown = result.exception.worded(flag)  # what `main` prints
    assert fragment in shown and "\n" not in shown


def test_score_streams_before_its_input_ends(home):
    """The first line's score is printed while the writer still holds standard input open."""
    env = os.environ | {"CHARRNN_CACHE": str(home / "cache")}
    process = subprocess.Popen(
        [*CHARRNN, "score", "runs/words"], cwd=home, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        process.stdin.write("the cat sat\n")
        process.stdin.flush()
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert first and first[0].endswith("\tthe cat sat\n")
        assert process.poll() is None  # still running: stdin is open
        process.stdin.write("a dog\n")
        process.stdin.close()
        assert process.stdout.read().endswith("\ta dog\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()


def test_score_into_head_ends_quietly(home):
    (home / "many.txt").write_text("\n".join(word_lines(20000, seed=6)) + "\n")
    command = " ".join(CHARRNN) + ' score runs/words many.txt | head -n 1; echo " ${PIPESTATUS[0]}" >&2'
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=home,
        env=os.environ | {"CHARRNN_CACHE": str(home / "cache")},
        timeout=120,
    )
    assert len(result.stdout.splitlines()) == 1
    *progress, status = result.stderr.strip().splitlines()
    assert status == "0", result.stderr  # exit status 0; on stderr at most a progress line
    assert all(line.endswith("lines so far") for line in progress), result.stderr


def test_parameters_only_restore_equals_the_full_training_state(home, model):
    from charrnn.checkpoint import CheckpointStore
    from charrnn.step import create_state

    store = CheckpointStore(model.run.checkpoints_dir, create=False)
    try:
        state, _ = store.restore(
            model.step, jax.eval_shape(lambda: create_state(model.model_config, model.train_config))
        )
    finally:
        store.close()
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), state.params, model.params)
    )


def test_importing_charrnn_does_not_import_jax():
    code = "import sys, charrnn; print(callable(charrnn.load), 'jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "True",
        "False",
    ]


def test_html_page_has_every_character_with_its_alternatives(model, tmp_path):
    from charrnn.surprisal import html_page

    lines = ["the cat", "a dog ran"]
    scores = model.score(lines, details=True)
    page = html_page(scores, model.vocab, "test")
    assert page.count('id="c') == sum(len(line) + 1 for line in lines)
    assert "http" not in page and "<script" not in page  # self-contained
    assert page.count("5. ") == page.count('id="c')  # five alternatives in every tooltip


def chromium() -> str | None:
    return next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed")
def test_html_page_renders_in_a_headless_browser(home, tmp_path):
    """Chromium loads the page (no network, no scripts) and its DOM holds every coloured character."""
    lines = word_lines(5, seed=7)
    (tmp_path / "few.txt").write_text("\n".join(lines) + "\n")
    page = tmp_path / "page.html"
    result = CliRunner().invoke(
        app, ["score", str(home / "runs/words"), str(tmp_path / "few.txt"), "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    characters = sum(len(line) + 1 for line in lines)
    assert dom.count('id="c') == characters
    assert dom.count("data-tip=") == characters
    assert "likeliest:" in dom and "p = " in dom


def test_show_prints_the_text_itself(home, monkeypatch):
    monkeypatch.chdir(home)
    result = CliRunner().invoke(app, ["score", "runs/words", "--show"], input="the cat\nQ dog\n", color=False)
    assert isinstance(result.exception, charrnn.errors.VocabularyError)  # 'Q' on line 2; line 1 came first
    assert result.stdout == "the cat↵\n"
    skipped = CliRunner().invoke(app, ["score", "runs/words", "--show", "--unknown", "skip"], input="Q dog\n")
    assert skipped.exit_code == 0 and skipped.stdout == "Q dog↵\n" and "1 unknown characters left out" in skipped.stderr


def test_validation_split_comes_from_the_cache_or_a_clear_error(home, monkeypatch, tmp_path):
    monkeypatch.chdir(home)
    monkeypatch.setenv("CHARRNN_CACHE", str(home / "cache"))  # where training prepared the corpus
    run = tmp_path / "moved"
    shutil.copytree(home / "runs/words", run)
    config = json.loads((run / "config.json").read_text())
    config["corpus"]["source"] = str(tmp_path / "gone.txt")
    (run / "config.json").write_text(json.dumps(config))
    cached = CliRunner().invoke(app, ["eval", str(run), "--json"])  # the corpus is gone, its preparation is not
    assert cached.exit_code == 0, cached.output
    config["corpus"]["sha256"] = "0" * 64
    (run / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert isinstance(result.exception, charrnn.errors.RunError)
    assert "gone.txt, which is gone; give a FILE to evaluate" in str(result.exception)


def test_a_ragged_file_compiles_a_handful_of_programs(model):
    rng = random.Random(8)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    scoring.make_score_chunk.cache_clear()  # count this test's compilations only
    scores = model.score(lines)
    assert [s.text for s in scores] == lines  # input order, whatever bucket each line went to
    programs = scoring.make_score_chunk(model.model_config, False)._cache_size()
    assert len({len(line) for line in lines}) > 100 and programs <= 12


def test_the_library_names_its_parameters_and_the_command_its_options(model, home, monkeypatch):
    with pytest.raises(charrnn.errors.ConfigError, match=r"^streams must be positive, not 0$"):
        model.eval("the cat\n", streams=0)
    with pytest.raises(charrnn.errors.ConfigError, match=r"^unknown must be error or skip, not 'maybe'$"):
        model.score(["the cat"], unknown="maybe")
    monkeypatch.chdir(home)
    result = CliRunner().invoke(app, ["eval", "runs/words", "-", "--streams", "0"], input="the cat\n")
    assert result.exception.worded(flag) == "--streams must be positive, not 0"


def test_output_formats_come_from_one_table(home, monkeypatch):
    """--format chooses a writer; --json and --show are its shorthands, and say the same."""
    monkeypatch.chdir(home)
    runner = CliRunner()
    lines = "the cat\nsat on a mat\n"
    for command, formats in (("score", ("tsv", "json", "show")), ("eval", ("text", "json"))):
        for name in formats:
            result = runner.invoke(app, [command, "runs/words", "-", "--format", name], input=lines)
            assert result.exit_code == 0 and result.stdout, (command, name, result.output)
            if name in ("json", "show"):
                short = runner.invoke(app, [command, "runs/words", "-", f"--{name}"], input=lines)
                assert short.stdout == result.stdout
        wrong = runner.invoke(app, [command, "runs/words", "-", "--format", "xml"], input=lines)
        assert str(wrong.exception) == f"--format must be one of {', '.join(formats)}, not 'xml'"
    json_lines = runner.invoke(app, ["score", "runs/words", "-", "--format", "json"], input=lines).stdout
    assert [json.loads(row)["text"] for row in json_lines.splitlines()] == ["the cat", "sat on a mat"]
    both = runner.invoke(app, ["score", "runs/words", "-", "--format", "tsv", "--json"], input=lines)
    assert str(both.exception) == "give --format or --json, not both"
