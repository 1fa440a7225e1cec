"""A fake model server: a model of an LLM server's cost, for routing benchmarks and tests.

Real model servers cannot run here (no GPU, no model downloads). This one speaks enough of
the OpenAI API (`POST /v1/completions`, `POST /v1/chat/completions`) and of vLLM's metrics
to stand in for one, and it charges what a real one charges in time:

- a bounded batch (`batch` requests run at once) with a queue in front of it;
- a prefix cache: an LRU of prompt block hashes (64-byte blocks of the prompt text, hashed
  as a chain, so a block's hash names the whole prefix up to it), `cache_blocks` of them;
- time to first token = the wait in the queue + prefill, where each prompt block not in
  the cache costs `prefill_ms_per_block` and each cached one `cached_ms_per_block`;
- then `max_tokens` decode steps of `decode_ms_per_token` each, holding the batch slot.

The answer is streamed (chunked): the first chunk is sent at the first token and says who
served it and how many of the prompt's blocks were cached; the last one follows the
decode. `/metrics` exposes vLLM's names (`vllm:num_requests_waiting`,
`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, and prefix-cache counters in
blocks); `/health` answers 200. It is a model, not a model server: its parameters are in
README.md ("Routing LLM inference").

    python -m loadtest.fake_model_server --count 8 --ports-file /tmp/ports.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BLOCK = 64


@dataclass(frozen=True)
class Cost:
    """What a request costs the fake server (milliseconds; capacities in blocks)."""

    batch: int = 2
    cache_blocks: int = 160
    prefill_ms_per_block: float = 3.0
    cached_ms_per_block: float = 0.05
    decode_ms_per_token: float = 8.0


def block_hashes(text: bytes) -> list[bytes]:
    """The chained hashes of `text`'s whole 64-byte blocks (one block when shorter)."""
    blocks = [text] if len(text) < BLOCK else [text[i : i + BLOCK] for i in range(0, len(text) - BLOCK + 1, BLOCK)]
    out, previous = [], b""
    for block in blocks:
        previous = hashlib.blake2b(previous + block, digest_size=8).digest()
        out.append(previous)
    return out


def prompt_of(body: dict[str, Any]) -> bytes:
    """The text a request's prefix is cached by: `prompt`, or `messages` as JSON."""
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"]).encode()
    return json.dumps(body.get("messages"), separators=(",", ":")).encode()


class FakeModelServer:
    def __init__(self, name: str, cost: Cost = Cost()) -> None:
        self.name = name
        self.cost = cost
        self.cache: OrderedDict[bytes, None] = OrderedDict()
        self.slots = asyncio.Semaphore(cost.batch)
        self.waiting = 0
        self.running = 0
        self.running_blocks = 0
        self.queries = 0  # prompt blocks looked up in the cache
        self.hits = 0
        self.served = 0
        self.port = 0

    # -- the model ------------------------------------------------------------------

    def cached_prefix(self, hashes: list[bytes]) -> int:
        n = 0
        for h in hashes:
            if h not in self.cache:
                break
            self.cache.move_to_end(h)
            n += 1
        return n

    def remember(self, hashes: list[bytes]) -> None:
        for h in hashes:
            self.cache[h] = None
            self.cache.move_to_end(h)
        while len(self.cache) > self.cost.cache_blocks:
            self.cache.popitem(last=False)

    async def complete(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        hashes = block_hashes(prompt_of(body))
        max_tokens = max(1, min(int(body.get("max_tokens") or 16), 4096))
        self.waiting += 1
        async with self.slots:
            self.waiting -= 1
            self.running += 1
            self.running_blocks += len(hashes)
            try:
                hit = self.cached_prefix(hashes)
                self.queries += len(hashes)
                self.hits += hit
                cost = self.cost
                prefill = (len(hashes) - hit) * cost.prefill_ms_per_block + hit * cost.cached_ms_per_block
                await asyncio.sleep(prefill / 1000)
                self.remember(hashes)
                first = {"served_by": self.name, "model": body.get("model"), "blocks": len(hashes), "cached": hit}
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                writer.write(head + chunk(b"data: " + json.dumps(first).encode() + b"\n\n"))
                await writer.drain()
                await asyncio.sleep(max_tokens * cost.decode_ms_per_token / 1000)
                writer.write(chunk(b"data: [DONE]\n\n") + chunk(b""))
                await writer.drain()
                self.served += 1
            finally:
                self.running -= 1
                self.running_blocks -= len(hashes)

    def metrics(self) -> bytes:
        usage = min(1.0, self.running_blocks / max(1, self.cost.cache_blocks))
        lines = [
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="fake"}} {self.waiting}',
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{model_name="fake"}} {self.running}',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{model_name="fake"}} {usage}',
            "# TYPE vllm:prefix_cache_queries counter",
            f'vllm:prefix_cache_queries_total{{model_name="fake"}} {self.queries}',
            "# TYPE vllm:prefix_cache_hits counter",
            f'vllm:prefix_cache_hits_total{{model_name="fake"}} {self.hits}',
        ]
        return ("\n".join(lines) + "\n").encode()

    # -- HTTP/1.1, just enough ------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self.connection, host, port)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = target.split("?")[0]
                if method == "POST" and path.endswith(("/v1/completions", "/v1/chat/completions")):
                    await self.complete(json.loads(body or b"{}"), writer)
                elif method == "GET" and path.endswith("/metrics"):
                    plain(writer, 200, self.metrics())
                elif method == "GET" and path.endswith("/health"):
                    plain(writer, 200, b"ok")
                else:
                    plain(writer, 404, b"not found")
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, ValueError):
            pass  # the client went away, or the fleet is stopping
        finally:
            writer.close()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def plain(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    reason = {200: "OK", 404: "Not Found"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


async def serve(count: int, cost: Cost, ports_file: Path | None) -> None:
    servers = [FakeModelServer(f"m{i}", cost) for i in range(count)]
    for s in servers:
        await s.start()
    if ports_file is not None:
        ports_file.write_text(json.dumps({"ports": [s.port for s in servers], "cost": asdict(cost)}))
    print(" ".join(f"{s.name}=http://127.0.0.1:{s.port}" for s in servers), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1, help="servers to run, each on its own loopback port")
    p.add_argument("--ports-file", type=Path, help="write their ports here (JSON) once they listen")
    defaults = Cost()
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args()
    cost = Cost(**{name: getattr(args, name) for name in asdict(defaults)})
    asyncio.run(serve(args.count, cost, args.ports_file))


if __name__ == "__main__":
    main()
