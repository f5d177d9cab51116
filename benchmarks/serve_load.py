"""Load on `charrnn serve`: one streaming client, many at once, and hostile requests among streams.

    python benchmarks/serve_load.py RUN [--streams 32] [--chars 2000] [--hostile 2000]

Starts `charrnn serve RUN --max-streams STREAMS` on a free port and measures, each against the
same run's `charrnn sample` figures taken in this process just before (so both are on this CPU):

1. one client streaming: characters/s, and the time to its first character on the warm server;
2. STREAMS clients at once (asyncio + httpx): aggregate characters/s, p50/p95 time to first
   character, failed requests;
3. HOSTILE malformed or hostile requests fired while 8 streams are written: every answer must be a
   4xx with OpenAI's error shape (or a valid 200 where the request was valid), the 8 streams must
   complete, and the server's resident memory is reported before and after.

Prints one JSON object on stdout. Needs the serve and test extras (httpx).
"""

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time

import httpx


def sample_rate(run: str, streams: int, chars: int) -> float:
    """Characters/s of `charrnn sample RUN --num STREAMS` (the library's sampler), warm."""
    import charrnn

    model = charrnn.load(run)
    model.sample(chars, num=streams, seed=0)  # compile (the chunk's length depends on `chars`)
    started = time.perf_counter()
    model.sample(chars, num=streams, seed=1, temperature=0.8)
    return streams * chars / (time.perf_counter() - started)


def start(run: str, streams: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "charrnn.cli.main", "serve", run, "--port", "0", "--max-streams", str(streams)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"at (http://\S+) ", line)
    if not match:
        raise SystemExit(line + process.stderr.read())
    return process, match[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


async def stream_one(http: httpx.AsyncClient, url: str, model: str, chars: int, seed: int) -> dict:
    body = {"model": model, "prompt": "", "max_tokens": chars, "stream": True, "seed": seed, "temperature": 0.8}
    started = time.perf_counter()
    first, count = None, 0
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"ok": False, "status": response.status_code}
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                data = json.loads(line[6:])
                if "error" in data:
                    return {"ok": False, "error": data["error"]["message"]}
                text = data["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - started
                count += len(text)
    return {"ok": count == chars, "first": first, "chars": count, "seconds": time.perf_counter() - started}


def hostile_bodies(model: str, n: int) -> list[tuple[bytes, dict]]:
    rng = random.Random(0)
    valid = {"model": model, "prompt": "", "max_tokens": 4}
    makers = [
        lambda: b"{" + os.urandom(rng.randint(1, 64)).replace(b"}", b""),
        lambda: json.dumps({**valid, "max_tokens": rng.choice([-1, 10**9, "9", None, True, 1.5])}).encode(),
        lambda: json.dumps({**valid, "temperature": rng.choice([-1, "hot", 1e308, [], {}])}).encode(),
        lambda: json.dumps({**valid, "model": rng.choice(["", "../../etc/passwd", "x" * 5000, 7, None])}).encode(),
        lambda: json.dumps({**valid, rng.choice(["foo", "tools", "messages"]): 1}).encode(),
        lambda: json.dumps({**valid, "n": rng.choice([0, -3, 17, 10**6])}).encode(),
        lambda: json.dumps({**valid, "logprobs": rng.choice([-1, 6, 100])}).encode(),
        lambda: json.dumps({**valid, "prompt": rng.choice(["\x00\x01", "€" * 10, 5, ["a", "b"]])}).encode(),
        lambda: json.dumps({**valid, "stop": rng.choice(["", [""], ["a"] * 9, 3])}).encode(),
        lambda: json.dumps({**valid, "top_p": rng.choice([0, 2, -1])}).encode(),
        lambda: json.dumps(valid).encode()[: rng.randint(0, 20)],
        lambda: b"[" * 50000,
        lambda: b" " * (2 << 20),
        lambda: json.dumps(valid).encode(),
    ]
    return [(rng.choice(makers)(), {"content-type": "application/json"}) for _ in range(n)]


async def hostile(url: str, model: str, n: int, chars: int) -> dict:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        streams = [asyncio.create_task(stream_one(http, url, model, chars, seed)) for seed in range(8)]
        bad, shapes = 0, 0
        semaphore = asyncio.Semaphore(32)

        async def fire(body: bytes, headers: dict) -> None:
            nonlocal bad, shapes
            async with semaphore:
                try:
                    response = await http.post(url + "/v1/completions", content=body, headers=headers)
                except httpx.HTTPError:
                    bad += 1
                    return
                if response.status_code == 200:
                    return
                if not 400 <= response.status_code < 500:
                    bad += 1
                    return
                try:
                    error = response.json()["error"]
                    shapes += set(error) == {"message", "type", "param", "code"}
                except (ValueError, KeyError, TypeError):
                    bad += 1

        bodies = hostile_bodies(model, n)
        await asyncio.gather(*(fire(body, headers) for body, headers in bodies))
        # A client that sends half a body and vanishes, and one that opens a stream and leaves.
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*url.removeprefix("http://").rsplit(":", 1))
            writer.write(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model"')
            await writer.drain()
            writer.close()
        finished = await asyncio.gather(*streams)
    return {
        "requests": n,
        "not_4xx_or_unreadable": bad,
        "4xx_with_error_shape": shapes,
        "streams_completed": sum(s["ok"] for s in finished),
    }


async def many(url: str, model: str, streams: int, chars: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_one(http, url, model, chars, seed) for seed in range(streams)))
        seconds = time.perf_counter() - started
    firsts = sorted(r["first"] for r in results if r.get("first") is not None)
    return {
        "clients": streams,
        "chars_per_s": sum(r.get("chars", 0) for r in results) / seconds,
        "first_char_p50_s": firsts[len(firsts) // 2] if firsts else None,
        "first_char_p95_s": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))] if firsts else None,
        "failed": sum(not r["ok"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--hostile", type=int, default=2000)
    args = parser.parse_args()
    model = os.path.basename(os.path.abspath(args.run))
    figures = {"sample_1_stream_chars_per_s": sample_rate(args.run, 1, args.chars)}
    figures[f"sample_{args.streams}_streams_chars_per_s"] = sample_rate(args.run, args.streams, args.chars)
    process, url = start(args.run, args.streams)
    try:

        async def one_client() -> dict:
            async with httpx.AsyncClient(timeout=300) as http:
                await stream_one(http, url, model, 64, 0)  # warm
                firsts = [(await stream_one(http, url, model, 64, s))["first"] for s in range(1, 6)]
                result = await stream_one(http, url, model, args.chars, 99)
            return {"chars_per_s": result["chars"] / result["seconds"], "first_char_median_s": sorted(firsts)[2]}

        figures["serve_1_client"] = asyncio.run(one_client())
        print(figures, file=sys.stderr)
        figures["serve_many_clients"] = asyncio.run(many(url, model, args.streams, args.chars))
        print(figures, file=sys.stderr)
        before = rss_mb(process.pid)
        figures["hostile"] = asyncio.run(hostile(url, model, args.hostile, 500))
        figures["hostile"]["rss_mb_before_after"] = [round(before, 1), round(rss_mb(process.pid), 1)]
        figures["hostile"]["still_serving"] = httpx.get(url + "/health", timeout=60).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    figures["server_exit_status"] = process.returncode
    one, many_ = figures["serve_1_client"], figures["serve_many_clients"]
    figures["ratio_1_client_to_sample"] = one["chars_per_s"] / figures["sample_1_stream_chars_per_s"]
    figures["ratio_many_to_sample"] = many_["chars_per_s"] / figures[f"sample_{args.streams}_streams_chars_per_s"]
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
