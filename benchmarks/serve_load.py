"""Load test for `weitiao serve`: N concurrent streaming clients on loopback, batched vs one at a time.

    .venv/bin/python benchmarks/serve_load.py                       # 16 clients, 20 s per setting, demo model
    .venv/bin/python benchmarks/serve_load.py --clients 32 --seconds 10 --max-tokens 64 --batches 16,4,1

What it does, in one invocation:
1. For each `--batches` value, starts `weitiao.infer.serve.serve(max_batch=B)` in its own subprocess on a free
   port and waits for /health. The server's torch runs `--threads` threads (default 1: on a small shared
   machine more threads than free cores makes every step wait on the slowest thread).
2. Sends one warm-up request, then runs `--clients` coroutines, each looping: one streaming chat request
   (Chinese prompts, temperature 0.7, `max_tokens`), recording time to the first content delta, the whole
   request time and the completion tokens from the final usage chunk. No client starts a request after
   `--seconds`; requests in flight then finish and count.
3. Prints per setting: requests, requests/s, completion tokens/s, p50/p95 time-to-first-token, errors
   (non-200 or broken streams), rows that joined a decoding batch (continuous batching); then the
   throughput ratio of the first setting to the last, the first's p95 TTFT against the last's p50, and the
   machine's load average (`os.getloadavg`) before and after: on a shared machine only the ratios of one
   run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = [
    "今天天气怎么样？",
    "周末有什么安排？",
    "推荐一部电影吧。",
    "怎么做番茄炒蛋？",
    "你会做饭吗？",
    "给我讲个笑话。",
    "学英语有什么好方法？",
    "晚上吃什么好呢？",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_queue: int, port: int, threads: int) -> subprocess.Popen:
    code = (
        f"import torch; torch.set_num_threads({threads}) if {threads} else None; "
        "from weitiao.infer.serve import serve; "
        f"serve(model={model!r}, port={port}, max_batch={max_batch}, max_queue={max_queue}, model_name='bench')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
    proc.terminate()
    raise SystemExit("server did not come up in 120 s")


async def one_request(http: httpx.AsyncClient, url: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(time to first content delta, whole time, completion tokens) of one streaming chat request."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, tokens, done = None, 0, False
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            if ttft is not None and '"usage"' not in line:
                continue  # keep the client's CPU for the server: parse only what is measured
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and (c["delta"].get("content") or c["finish_reason"]):
                    ttft = time.perf_counter() - t0
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return ttft, time.perf_counter() - t0, tokens


async def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await one_request(http, url, 0, 8)  # warm-up
        t0 = time.perf_counter()

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() - t0 < seconds:
                try:
                    results.append(await one_request(http, url, i, max_tokens))
                except Exception as e:  # count and go on: the point is how the server copes
                    errors.append(str(e))
                i += clients

        h0 = (await http.get(url + "/health")).json()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
        h1 = (await http.get(url + "/health")).json()
    ttfts = sorted(r[0] for r in results)
    pct = (lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))]) if ttfts else (lambda q: float("nan"))
    return {
        "requests": len(results),
        "elapsed_s": elapsed,
        "req_per_s": len(results) / elapsed,
        "tok_per_s": sum(r[2] for r in results) / elapsed,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p95_s": pct(0.95),
        "rows_per_batch": len(results) / max(1, h1["batches"] - h0["batches"]),
        "joined": h1.get("joined", 0) - h0.get("joined", 0),
        "busy": (h1["busy_s"] - h0["busy_s"]) / elapsed,  # share of the time the model was generating
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="per setting")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batches", default="16,1", help="max_batch values to compare; ratio = first / last")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads (0 = torch default)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rows = {}
    load0 = os.getloadavg()
    for b in (int(x) for x in args.batches.split(",")):
        port = free_port()
        proc = start_server(args.model, b, max(64, 2 * args.clients), port, args.threads)
        try:
            rows[b] = asyncio.run(load(f"http://127.0.0.1:{port}", args.clients, args.seconds, args.max_tokens))
        finally:
            proc.terminate()
            proc.wait(30)
        r = rows[b]
        print(
            f"max_batch={b:<3} {r['requests']:>5} req in {r['elapsed_s']:.1f}s  {r['req_per_s']:7.2f} req/s  "
            f"{r['tok_per_s']:8.1f} tok/s  TTFT p50 {r['ttft_p50_s'] * 1000:7.1f} ms  "
            f"p95 {r['ttft_p95_s'] * 1000:7.1f} ms  {r['rows_per_batch']:.1f} req/batch  {r['joined']} joined  "
            f"busy {r['busy']:.0%}  "
            f"errors {r['errors']}" + (f" ({r['first_error']})" if r["errors"] else ""),
            flush=True,
        )
    first, last = list(rows)[0], list(rows)[-1]
    if first != last:
        ratio = rows[first]["req_per_s"] / rows[last]["req_per_s"]
        print(f"throughput max_batch={first} / max_batch={last}: {ratio:.2f}x  ({args.clients} clients)")
        p95, p50 = rows[first]["ttft_p95_s"], rows[last]["ttft_p50_s"]
        print(f"TTFT p95 max_batch={first} {p95 * 1000:.0f} ms vs p50 max_batch={last} {p50 * 1000:.0f} ms")
    loadavg = {"before": load0, "after": os.getloadavg()}
    print(f"load average (1, 5, 15 min) before {load0}, after {loadavg['after']} on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows, "load": loadavg}, f, indent=2)


if __name__ == "__main__":
    main()
