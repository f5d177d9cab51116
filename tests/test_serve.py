"""`charrnn serve`: a real server process on 127.0.0.1, real clients (the `openai` package, httpx)."""

import concurrent.futures
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import charrnn_in_process, periodic_text
from test_scoring import home  # noqa: F401 (a tiny run trained on lines of words: runs/words)

import charrnn

openai = pytest.importorskip("openai")
CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]


def start_server(home, *args: str, env: dict | None = None, run: str = "runs/words") -> tuple[subprocess.Popen, str]:
    """`charrnn serve RUN ARGS` on a free port; the process and its base URL, once it serves."""
    process = subprocess.Popen(
        [*CHARRNN, "serve", run, "--port", "0", *args],
        cwd=home,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    line = process.stderr.readline()
    match = re.search(r"at (http://\S+) ", line)
    assert match, line + process.stderr.read()
    return process, match[1]


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stderr


@pytest.fixture(scope="module")
def server(home):
    process, url = start_server(home, "--max-streams", "4", "--queue", "2")
    yield url
    stderr = stop(process)
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def model(home):
    return charrnn.load(home / "runs" / "words")


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_a_completion_is_the_text_sample_writes_for_the_same_seed(client, model):
    result = client.completions.create(model="words", prompt="the ", max_tokens=60, temperature=0.8, seed=5)
    assert result.choices[0].text == model.sample(60, prime="the ", temperature=0.8, seed=5)
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 60)


def test_streaming_gives_the_same_text_in_pieces(client):
    asked = {"model": "words", "prompt": "a ", "max_tokens": 300, "temperature": 1.0, "seed": 9}
    whole = client.completions.create(**asked).choices[0].text
    chunks = list(client.completions.create(**asked, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason == "length"


def test_echo_with_logprobs_scores_the_prompt_as_charrnn_score_does(client, model):
    line = "the dog sat on it"
    result = client.completions.create(model="words", prompt="\n" + line + "\n", max_tokens=0, echo=True, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert result.choices[0].text == "\n" + line + "\n"
    assert logprobs.tokens == list("\n" + line + "\n") and logprobs.token_logprobs[0] is None
    assert logprobs.text_offset == list(range(len(line) + 2))
    # The server steps one character at a time, score runs the line as one window: in bf16 the two
    # orders of summation round the state differently (a few 1e-4 nats a character), in float32 not.
    exact = model.model_config.dtype == "float32"
    tolerance = {"rel_tol": 1e-4} if exact else {"abs_tol": 0.02}
    assert math.isclose(sum(logprobs.token_logprobs[1:]), model.score([line])[0].logprob, **tolerance)
    top = logprobs.top_logprobs[5]
    assert len(top) == 3 and max(top.values()) >= logprobs.token_logprobs[5] - 1e-6


def test_stop_texts_end_the_choice_and_are_not_returned(client):
    result = client.completions.create(model="words", prompt="the ", max_tokens=200, stop=["\n", "og"], seed=1)
    text = result.choices[0].text
    assert "\n" not in text and "og" not in text and result.choices[0].finish_reason == "stop"


def test_any_seed_openai_allows_is_taken(client, model):
    result = client.completions.create(model="words", prompt="a", max_tokens=20, seed=2**62 + 5)
    assert result.choices[0].text == model.sample(20, prime="a", temperature=1.0, seed=2**62 + 5)


def test_n_choices_are_the_requests_with_the_next_seeds(client):
    both = client.completions.create(model="words", prompt="the", max_tokens=30, n=2, seed=20)
    second = client.completions.create(model="words", prompt="the", max_tokens=30, seed=21)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].text == second.choices[0].text and both.usage.completion_tokens == 60


def test_concurrent_requests_get_the_text_each_gets_alone(server):
    asked = [{"model": "words", "prompt": "the ", "max_tokens": 80, "seed": s, "temperature": 0.9} for s in range(6)]

    def complete(body):
        with httpx.Client(timeout=60) as http:
            response = http.post(server + "/v1/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"]

    alone = [complete(body) for body in asked]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 4 slots: two wait in the queue
        together = list(pool.map(complete, asked))
    assert together == alone and len(set(alone)) == 6


def test_a_model_with_attention_serves_each_request_the_text_it_gets_alone(tmp_path):
    """Slots share one batch and are reused: each stream's attention memory must be its own and
    start empty, as in `charrnn sample`."""
    (tmp_path / "text.txt").write_text(periodic_text(2000))
    tiny = ["--layers", "1", "--hidden", "16", "--embed", "8", "-b", "4", "-t", "8", "--steps", "30"]
    charrnn_in_process("train", "text.txt", "--out", "runs/att", *tiny, "--attention", "12", cwd=tmp_path)
    model = charrnn.load(tmp_path / "runs" / "att")
    alone = [model.sample(60, prime="hel", temperature=1.5, seed=s) for s in range(4)]
    process, url = start_server(tmp_path, "--max-streams", "2", "--queue", "4", run="runs/att")
    try:

        def complete(seed):
            body = {"model": "att", "prompt": "hel", "max_tokens": 60, "temperature": 1.5, "seed": seed}
            response = httpx.post(url + "/v1/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 2 slots: each serves two requests in turn
            together = list(pool.map(complete, range(4)))
    finally:
        stop(process)
    assert together == alone and len(set(alone)) == 4


def gauges(server) -> tuple[int, int]:
    """(active streams, characters generated so far) from /metrics."""
    metrics = httpx.get(server + "/metrics").text
    active = re.search(r'charrnn_active_streams\{model="words"\} (\d+)', metrics)[1]
    return int(active), int(re.search(r'charrnn_characters_generated_total\{model="words"\} (\d+)', metrics)[1])


LONG = {"model": "words", "prompt": "the", "max_tokens": 100000, "stream": True}


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    with httpx.Client(timeout=30) as http, http.stream("POST", server + "/v1/completions", json=LONG) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith("data: {")
        active, generated = gauges(server)
        assert active == 1
    deadline = time.monotonic() + 5
    while gauges(server)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    active, after = gauges(server)
    time.sleep(0.3)
    assert active == 0 and gauges(server)[1] == after < generated + 50000  # stopped long before 100,000


def test_when_slots_and_queue_are_full_requests_get_429(server):
    with httpx.Client(timeout=30) as http, contextlib.ExitStack() as held:
        for _ in range(6):  # 4 slots + a queue of 2
            held.enter_context(http.stream("POST", server + "/v1/completions", json=LONG))
        refused = http.post(server + "/v1/completions", json=LONG)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert gauges(server)[0] == 4


ERRORS = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"prompt": "the"}), 400, "model"),
    (json.dumps({"model": "nope", "prompt": "the"}), 404, "model"),
    (json.dumps({"model": "words", "max_tokens": -1}), 400, "max_tokens"),
    (json.dumps({"model": "words", "max_tokens": "ten"}), 400, "max_tokens"),
    (json.dumps({"model": "words", "max_tokens": True}), 400, "max_tokens"),
    (json.dumps({"model": "words", "max_tokens": 10**30}), 400, "max_tokens"),
    (json.dumps({"model": "words", "temperature": -0.5}), 400, "temperature"),
    (b'{"model": "words", "temperature": 1e999}', 400, "temperature"),
    (json.dumps({"model": "words", "top_p": 0}), 400, "top_p"),
    (json.dumps({"model": "words", "n": 0}), 400, "n"),
    (json.dumps({"model": "words", "n": 1000}), 400, "n"),
    (json.dumps({"model": "words", "logprobs": 6}), 400, "logprobs"),
    (json.dumps({"model": "words", "stop": ""}), 400, "stop"),
    (json.dumps({"model": "words", "stop": ["a", "b", "c", "d", "e"]}), 400, "stop"),
    (json.dumps({"model": "words", "seed": -1}), 400, "seed"),
    (json.dumps({"model": "words", "prompt": 7}), 400, "prompt"),
    (json.dumps({"model": "words", "prompt": "Zebra"}), 400, "prompt"),
    (json.dumps({"model": "words", "banana": 1}), 400, "banana"),
    (json.dumps({"model": "words", "stream": "yes"}), 400, "stream"),
    (json.dumps({"model": "words", "presence_penalty": 1.5}), 400, "presence_penalty"),
    (json.dumps({"model": "words", "prompt": "x" * (1 << 20)}), 413, None),
    (b"[" * 100000 + b"]" * 100000, 400, None),
]


@pytest.mark.parametrize(("body", "status", "param"), ERRORS)
def test_bad_requests_get_a_4xx_with_the_error_shape(server, body, status, param):
    response = httpx.post(server + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert "Traceback" not in error["message"] and "\n" not in error["message"]


def test_other_routes_and_methods(server):
    assert httpx.get(server + "/health").json() == {"status": "ok", "models": ["words"]}
    assert [m["id"] for m in httpx.get(server + "/v1/models").json()["data"]] == ["words"]
    missing = httpx.get(server + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert httpx.get(server + "/v1/completions").status_code == 405
    metrics = httpx.get(server + "/metrics").text
    assert "# TYPE charrnn_request_seconds histogram" in metrics and 'le="+Inf"' in metrics
    assert httpx.get(server + "/").headers["content-type"].startswith("text/html")


def test_score_route_returns_what_charrnn_score_json_prints(server, model):
    lines = ["the cat", "a dog ran", ""]
    body = httpx.post(server + "/v1/score", json={"model": "words", "input": lines, "details": True}).json()
    expected = [line.to_dict() for line in model.score(lines)]
    for got, want in zip(body["lines"], expected, strict=True):
        assert got["text"] == want["text"] and got["chars"] == want["chars"]
        assert math.isclose(got["logprob"], want["logprob"], rel_tol=1e-5)
        assert [c["char"] for c in got["characters"]] == list(want["text"] + "\n")
        assert len(got["characters"][0]["top"]) == 5
    assert body["summary"]["lines"] == 3
    unknown = httpx.post(server + "/v1/score", json={"model": "words", "input": "Zzz"})
    assert unknown.status_code == 400 and "never saw" in unknown.json()["error"]["message"]


def test_an_api_key_guards_every_api_route(home):
    process, url = start_server(home, env={"CHARRNN_API_KEY": "sesame"})
    try:
        assert httpx.get(url + "/v1/models").status_code == 401
        wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer open"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert httpx.get(url + "/health").status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert client.completions.create(model="words", prompt="the", max_tokens=5).choices[0].text
    finally:
        stop(process)


def test_a_port_in_use_is_one_line(home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CHARRNN, "serve", "runs/words", "--port", str(port)], cwd=home, capture_output=True, text=True
        )
    assert result.returncode == 1
    assert result.stderr == f"charrnn: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_bad_serve_options_are_one_line_before_anything_loads(home):
    result = subprocess.run([*CHARRNN, "serve", "--max-streams", "0"], cwd=home, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, "charrnn: error: --max-streams must be positive, not 0\n")


def test_without_the_serve_extra_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what a missing package looks like to import
    result = charrnn_in_process("serve", cwd=tmp_path, check=False)
    assert (result.returncode, result.stderr) == (
        2,
        "charrnn: error: charrnn serve needs the serve extra: pip install 'charrnn[serve]'\n",
    )
