"""What `slm serve` costs over calling `generate` directly: per request, per token, and to the first token.

For each preset (random weights, float32, CPU, the gpt2 tokenizer): servers started with `start_server` in
this process (uvicorn in a background thread, concurrency 1, --threads torch threads for the worker) and
engines decoding the same text prompt greedily (preset "greedy", seed 0) to N new tokens:

1. direct: `slmkit.generate.generate(model, prompt, "greedy", tokenizer=..., max_new_tokens=N, seed=0)`;
2. HTTP: POST /api/complete, the whole JSON answer, over one keep-alive connection (http.client);
3. HTTP streamed: the same with "stream": true (NDJSON), timing the first chunk and the last line;
4. and 5. the same two against a second, identical server whose listening socket the bench gave TCP_NODELAY
   itself: a control. `slm serve` lacked TCP_NODELAY until its socket was made as a TCP one (its short
   exchanges waited ~40 ms for a delayed ACK, bench/results/serve_2026-12-02_0842.md); the rows as served
   must now match these.

Each engine also runs max_new_tokens=1 (its time to a first token: a whole request of one token), and the
per-token figures use the difference, (time of N - time of 1) / (N - 1). Runs are taken in turn (direct, HTTP,
streamed, ..., direct, ...) and the best of --repeats is kept, so that load from other processes hurts all
alike. The token ids of every engine are compared with the direct call's. Also: GET /api/health's round trip
on each server, whole requests of 1 to 64 tokens (medians: where the stall shows), and 4 requests at once
against concurrency 2 (1 thread each) and concurrency 1 (--threads), against the same 4 done one after another
directly.

    python bench/bench_serve.py                # print the tables (under 3 minutes)
    python bench/bench_serve.py --quick        # 8 tokens, 1 repeat: does it work
    python bench/bench_serve.py --write        # also the "Serving" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import select
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs

from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

from slmkit.api import ServedModel, ServeOptions, start_server  # noqa: E402
from slmkit.config import load_model_config  # noqa: E402
from slmkit.generate import generate  # noqa: E402
from slmkit.model import Transformer  # noqa: E402
from slmkit.tokenizer import load_tokenizer  # noqa: E402

SECTION = "## Serving (slm serve)"
DIRECT, WHOLE, STREAMED = "direct generate", "HTTP, whole answer", "HTTP, streamed"
SHARED, ONE_WORKER = "concurrency 2 x 1 thread", "concurrency 1 x --threads"
WHOLE_NODELAY, STREAMED_NODELAY = "HTTP, whole, TCP_NODELAY", "HTTP, streamed, TCP_NODELAY"
# Every gpt2 id of this prompt is below 4096, so it fits nano's 4K vocabulary; random weights over a vocabulary
# smaller than gpt2's never produce its end-of-text (50256), so every engine makes all N tokens.
PROMPT = "The cat sat on the mat, and the dog went to the door. Then the man said that it was time to go home."
SEED = 0
SWEEP = (1, 4, 16, 64)  # new tokens of the short whole requests that show where the ~40 ms stall stops
CONCURRENCY_REPEATS = 3  # each is 8 whole generations: the script stays under 3 minutes


class Client:
    """POST /api/complete over one keep-alive HTTP/1.1 connection. uvicorn closes a connection idle for 5 s
    (its timeout_keep_alive): `ready()` reconnects one it closed, outside the timed part; a request that still
    finds it closed reconnects and is sent again (counted in `resent`)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        self.connection.connect()
        self.resent = 0

    def ready(self) -> None:
        """Reconnect now if the server has closed the connection (its socket reads as ready: end of file)."""
        sock = self.connection.sock
        if sock is None or select.select([sock], [], [], 0)[0]:
            self.connection.close()
            self.connection.connect()

    def post(self, body: dict) -> http.client.HTTPResponse:
        data, headers = json.dumps(body), {"Content-Type": "application/json"}
        try:
            self.connection.request("POST", "/api/complete", data, headers)
            response = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.resent += 1
            self.connection.close()
            self.connection.request("POST", "/api/complete", data, headers)
            response = self.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        return response

    def whole(self, body: dict) -> dict:
        return json.loads(self.post(body).read())

    def streamed(self, body: dict) -> tuple[dict, float, int]:
        """(the final line, seconds from sending to the first chunk, chunks of text)."""
        start = time.perf_counter()
        response = self.post(body)
        first, chunks, last = None, 0, None
        for line in response:  # one NDJSON line per piece of text, then the result with "done"
            if first is None:
                first = time.perf_counter() - start
            last = json.loads(line)
            chunks += "text" in last
        if not (last or {}).get("done"):
            raise RuntimeError(f"the stream ended without its result: {last!r}")
        return last, first, chunks

    def close(self) -> None:
        self.connection.close()


def request_body(new_tokens: int, stream: bool = False) -> dict:
    return {"prompt": PROMPT, "preset": "greedy", "seed": SEED, "max_new_tokens": new_tokens, "stream": stream}


def random_model(preset: str, tokenizer) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(load_model_config(preset=preset)).eval()
    largest = max(tokenizer.encode(PROMPT))
    if largest >= model.config.vocab_size:
        raise SystemExit(f"the prompt's id {largest} does not fit {preset}'s vocabulary of {model.config.vocab_size}")
    return model


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class ThreadCounts:
    """A forward pre-hook recording, per engine (set `engine` before running one), the torch thread counts the
    model's forwards ran with, wherever they ran."""

    def __init__(self, model: Transformer):
        self.engine = ""
        self.seen: dict[str, set[int]] = {}
        model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.seen.setdefault(self.engine, set()).add(torch.get_num_threads())

    def describe(self) -> str:
        return "; ".join(f"{name}: {'/'.join(map(str, sorted(counts)))}" for name, counts in self.seen.items() if name)


def health_round_trip(client: Client, times: int = 20) -> float:
    """Median seconds of GET /api/health on the client's connection (no model work: the HTTP layer alone)."""
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        client.connection.request("GET", "/api/health")
        client.connection.getresponse().read()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def set_listener_nodelay(server) -> None:
    """TCP_NODELAY on the server's listening socket; Linux copies it to the connections accepted later. The
    control for `bind`, which makes an IPPROTO_TCP socket so that asyncio sets TCP_NODELAY on every accepted
    connection (with proto 0, as before the fix, asyncio's _set_nodelay left Nagle on)."""
    for listener in (sock for running in server.server.servers for sock in running.sockets):
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def measure(preset: str, tokenizer, args) -> dict:
    """Per engine: best seconds of N and of 1 new tokens, best time to the first chunk (streamed), tokens made,
    and whether they equal the direct call's; the health round trip of each connection."""
    model = random_model(preset, tokenizer)
    counts = ThreadCounts(model)
    n = args.new_tokens
    options = ServeOptions(port=0, concurrency=1, threads=args.threads, max_new_tokens=max(n, 256), preset="greedy")
    with start_server([ServedModel(preset, model, tokenizer)], options) as server, \
            start_server([ServedModel(preset, model, tokenizer)], options) as fixed:
        set_listener_nodelay(fixed)  # before any connection: every one it accepts has TCP_NODELAY
        as_served, nodelay = Client(server.url), Client(fixed.url)
        clients = (as_served, nodelay)

        def direct(new):
            output = generate(model, PROMPT, "greedy", tokenizer=tokenizer, max_new_tokens=new, seed=SEED)
            return output.tokens, output.finish_reason, None

        def whole(client):
            def run(new):
                answer = client.whole(request_body(new))
                return answer["tokens"], answer["finish_reason"], None
            return run

        def streamed(client):
            def run(new):
                answer, first, _ = client.streamed(request_body(new, stream=True))
                return answer["tokens"], answer["finish_reason"], first
            return run

        engines = {DIRECT: direct, WHOLE: whole(as_served), STREAMED: streamed(as_served)}
        if not args.no_nodelay:
            engines.update({WHOLE_NODELAY: whole(nodelay), STREAMED_NODELAY: streamed(nodelay)})
        for run in engines.values():  # warm up: the first request also builds the worker thread
            run(4)
        figures = {name: {"total": float("inf"), "one": float("inf"), "first_chunk": float("inf")} for name in engines}
        for _ in range(args.repeats):  # in turn, so that load hurts all alike
            for name, run in engines.items():
                counts.engine = name
                for client in clients:
                    client.ready()
                (tokens, finish, first), seconds = timed(lambda: run(n))  # noqa: B023
                for client in clients:
                    client.ready()
                _, one = timed(lambda: run(1))  # noqa: B023
                best = figures[name]
                best.update(total=min(best["total"], seconds), one=min(best["one"], one), tokens=tokens, finish=finish)
                if first is not None:
                    best["first_chunk"] = min(best["first_chunk"], first)
        chunks = as_served.streamed(request_body(n, stream=True))[2]
        sweep = {}  # new tokens -> {engine: best seconds}: where the stall of a connection as served shows
        short = {DIRECT: direct, WHOLE: whole(as_served), WHOLE_NODELAY: whole(nodelay)}
        for new in (length for length in SWEEP if length <= n):
            times: dict[str, list[float]] = {name: [] for name in short}
            for _ in range(args.repeats):
                for name, run in short.items():
                    for client in clients:
                        client.ready()
                    times[name].append(timed(lambda: run(new))[1])  # noqa: B023
            sweep[new] = {name: statistics.median(seconds) for name, seconds in times.items()}
        for client in clients:
            client.ready()
        health = {"as served": health_round_trip(as_served), "TCP_NODELAY": health_round_trip(nodelay)}
        resent = sum(client.resent for client in clients)
        for client in clients:
            client.close()
    reference = figures[DIRECT]["tokens"]
    for best in figures.values():
        best["same"] = best["tokens"] == reference
        best["made"] = len(best["tokens"])
    return {"engines": figures, "chunks": chunks, "health": health, "threads_seen": counts.describe(), "resent": resent,
            "sweep": sweep, "vocab": model.config.vocab_size,
            "params": sum(p.numel() for p in model.parameters())}


def concurrency(preset: str, tokenizer, args) -> dict:
    """Wall seconds of 4 requests at once against a server of concurrency 2 (1 thread each) and one of
    concurrency 1 (--threads threads), and of the same 4 done one after another by direct calls (--threads
    threads); best of CONCURRENCY_REPEATS (or fewer --repeats), in turn. Tokens compared too. The servers are
    as served (no TCP_NODELAY; a whole generation is long enough that the ~40 ms stall hardly shows)."""
    model = random_model(preset, tokenizer)
    counts = ThreadCounts(model)
    n, requests = args.new_tokens, 4
    layouts = {SHARED: (2, 1), ONE_WORKER: (1, args.threads)}  # (concurrency, threads per worker)
    best = dict.fromkeys([DIRECT, *layouts], float("inf"))
    answers = dict.fromkeys(best)
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, (workers, threads) in layouts.items():
            options = ServeOptions(port=0, concurrency=workers, threads=threads, max_queue=requests,
                                   max_new_tokens=max(n, 256), preset="greedy")
            server = stack.enter_context(start_server([ServedModel(preset, model, tokenizer)], options))
            clients[name] = [Client(server.url) for _ in range(requests)]

        def served(name):
            def run():
                results: list = [None] * requests

                def ask(index):
                    try:
                        results[index] = clients[name][index].whole(request_body(n))["tokens"]
                    except Exception as error:  # noqa: BLE001  (raised again in the main thread)
                        results[index] = error

                threads = [threading.Thread(target=ask, args=(index,)) for index in range(requests)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for result in results:
                    if isinstance(result, Exception):
                        raise result
                return results
            return run

        def direct():
            torch.set_num_threads(args.threads)  # a worker's set_num_threads may have changed this thread's count
            return [generate(model, PROMPT, "greedy", tokenizer=tokenizer, max_new_tokens=n, seed=SEED).tokens
                    for _ in range(requests)]

        engines = {DIRECT: direct, **{name: served(name) for name in layouts}}
        for name in layouts:  # warm up the workers
            engines[name]()
        for _ in range(min(args.repeats, CONCURRENCY_REPEATS)):
            for name, run in engines.items():
                counts.engine = name
                for client in (client for group in clients.values() for client in group):
                    client.ready()
                answers[name], seconds = timed(run)
                best[name] = min(best[name], seconds)
        for connection in (client for group in clients.values() for client in group):
            connection.close()
    torch.set_num_threads(args.threads)
    reference = answers[DIRECT][0]
    resent = sum(client.resent for group in clients.values() for client in group)
    return {"seconds": best, "requests": requests, "threads_seen": counts.describe(), "resent": resent,
            "same": all(tokens == reference for group in answers.values() for tokens in group)}


def engine_table(results: dict, args) -> list[str]:
    n = args.new_tokens
    rows = [f"| model | engine | {n} tokens, ms | ms per token | tokens/s | overhead vs direct, ms per request "
            f"| overhead, % | per-token overhead, ms | 1 token (time to first token), ms | first streamed chunk, ms "
            f"| tokens made, as direct's |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for preset, r in results.items():
        base = r["engines"][DIRECT]
        base_step = (base["total"] - base["one"]) / max(n - 1, 1)
        for name, e in r["engines"].items():
            label = f"`{preset}` ({r['params'] / 1e6:.1f}M)" if name == DIRECT else ""
            step = (e["total"] - e["one"]) / max(n - 1, 1)
            extra = e["total"] - base["total"]
            first = f"{1e3 * e['first_chunk']:.1f}" if e["first_chunk"] != float("inf") else ""
            overhead = ("", "", "") if name == DIRECT else (
                f"{1e3 * extra:+.1f}", f"{100 * extra / base['total']:+.1f}%", f"{1e3 * (step - base_step):+.3f}")
            same = f"{e['made']} ({e['finish']}), {'same' if e['same'] else 'DIFFERENT'}"
            rows.append(f"| {label} | {name} | {1e3 * e['total']:.1f} | {1e3 * e['total'] / n:.2f} "
                        f"| {n / e['total']:.0f} | {overhead[0]} | {overhead[1]} | {overhead[2]} "
                        f"| {1e3 * e['one']:.1f} | {first} | {same} |")
    return rows


def sweep_table(results: dict) -> list[str]:
    rows = ["| model | new tokens | direct, ms | HTTP whole, as served, ms | extra | HTTP whole, TCP_NODELAY, ms | extra |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for preset, r in results.items():
        for index, (new, t) in enumerate(r["sweep"].items()):
            rows.append(f"| {f'`{preset}`' if index == 0 else ''} | {new} | {1e3 * t[DIRECT]:.1f} "
                        f"| {1e3 * t[WHOLE]:.1f} | {1e3 * (t[WHOLE] - t[DIRECT]):+.1f} "
                        f"| {1e3 * t[WHOLE_NODELAY]:.1f} | {1e3 * (t[WHOLE_NODELAY] - t[DIRECT]):+.1f} |")
    return rows


def concurrency_table(results: dict, args) -> list[str]:
    rows = [f"| model | 4 one after another, direct, {args.threads} thread(s), s | 4 at once, concurrency 2 x 1 "
            f"thread, s | / direct | 4 at once, concurrency 1 x {args.threads} thread(s), s | / direct "
            f"| tokens as direct's | torch threads seen by the forwards |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for preset, c in results.items():
        t = c["seconds"]
        rows.append(f"| `{preset}` | {t[DIRECT]:.2f} | {t[SHARED]:.2f} | {t[SHARED] / t[DIRECT]:.2f}x "
                    f"| {t[ONE_WORKER]:.2f} | {t[ONE_WORKER] / t[DIRECT]:.2f}x "
                    f"| {'same' if c['same'] else 'DIFFERENT'} | {c['threads_seen']} |")
    return rows


def per_token(engine: dict, n: int) -> float:
    """Seconds per token past the first: (time of N - time of 1) / (N - 1)."""
    return (engine["total"] - engine["one"]) / (n - 1)


def reading(results: dict, concurrent: dict, args) -> list[str]:
    """The headline figures in words, computed from this run."""
    n, lines = args.new_tokens, []
    for preset, r in results.items():
        e = r["engines"]
        direct = e[DIRECT]
        line = (f"`{preset}`: direct {1e3 * direct['total'] / n:.2f} ms per token, first token "
                f"{1e3 * direct['one']:.1f} ms; a whole answer over HTTP "
                f"{100 * (e[WHOLE]['total'] / direct['total'] - 1):+.1f}% at {n} tokens, first token (a 1-token "
                f"request) {1e3 * e[WHOLE]['one']:.1f} ms as served")
        if WHOLE_NODELAY in e:
            line += (f", {1e3 * e[WHOLE_NODELAY]['one']:.1f} ms with TCP_NODELAY; streamed, the first chunk after "
                     f"{1e3 * e[STREAMED]['first_chunk']:.1f} ms as served, "
                     f"{1e3 * e[STREAMED_NODELAY]['first_chunk']:.1f} ms with TCP_NODELAY, and each token after it "
                     f"{1e3 * (per_token(e[STREAMED_NODELAY], n) - per_token(direct, n)):+.2f} ms "
                     f"({100 * (per_token(e[STREAMED_NODELAY], n) / per_token(direct, n) - 1):+.0f}%) over direct")
        if preset in concurrent:
            t = concurrent[preset]["seconds"]
            line += (f"; 4 requests at once took {t[SHARED] / t[DIRECT]:.2f}x the sequential direct time at "
                     f"concurrency 2 x 1 thread and {t[ONE_WORKER] / t[DIRECT]:.2f}x at concurrency 1 x "
                     f"{args.threads}")
        lines.append(f"- {line}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="nano,slm-25m")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for the direct calls and the server's worker (default 2: this machine)")
    parser.add_argument("--no-nodelay", action="store_true",
                        help="skip the two engines over a connection with TCP_NODELAY (what the fix would give)")
    parser.add_argument("--no-concurrency", action="store_true", help="skip the 4-requests-at-once figure")
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat: check that it runs")
    parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 8, 1
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the per-token figures subtract a 1-token run)")
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("gpt2")
    loads = [os.getloadavg()[0]]
    results, concurrent = {}, {}
    for preset in args.presets.split(","):
        results[preset] = measure(preset, tokenizer, args)
        if not args.no_concurrency:
            concurrent[preset] = concurrency(preset, tokenizer, args)
        loads.append(os.getloadavg()[0])
        print(f"{preset} done", flush=True)

    command = "python bench/bench_serve.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import uvicorn

    info = (f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, uvicorn {uvicorn.__version__}; niceness "
            f"{os.nice(0)}; 1-minute load average {', '.join(f'{x:.2f}' for x in loads)} at the start and after "
            f"each model")
    vocabularies = ", ".join(f"`{p}` {r['vocab']}" for p, r in results.items())
    chunks = ", ".join(f"`{p}` {r['chunks']}" for p, r in results.items())
    n = args.new_tokens
    made = {e["made"] for r in results.values() for e in r["engines"].values()}
    lengths = f"every engine made all {n} tokens" if made == {n} else f"tokens made: {sorted(made)} (see the table)"
    health = "; ".join(f"`{p}` {1e3 * r['health']['as served']:.1f} ms as served, "
                       f"{1e3 * r['health']['TCP_NODELAY']:.1f} ms with TCP_NODELAY" for p, r in results.items())
    same = all(e["same"] for r in results.values() for e in r["engines"].values())
    resent = sum(r["resent"] for r in [*results.values(), *concurrent.values()])
    threads_seen = "; ".join(f"`{p}`: {r['threads_seen']}" for p, r in results.items())
    body = [
        f"Command: `{command.strip()}` ({info}). Random weights (seed 0), float32, CPU, batch 1; the gpt2 "
        f"tokenizer (its ids of the {len(tokenizer.encode(PROMPT))}-token prompt are all below 4096, so they fit "
        f"the presets' vocabularies, {vocabularies}, and random weights over those never pick gpt2's end-of-text: "
        f"{lengths}); preset `greedy`, seed {SEED}, {n} new tokens. Direct: "
        f"`slmkit.generate.generate(model, prompt, \"greedy\", tokenizer=..., max_new_tokens=N, seed=0)` in the "
        f"main thread. HTTP: `start_server` in the same process (uvicorn in a background thread; one worker: "
        f"concurrency 1, `threads={args.threads}`, the direct calls' torch threads), POST /api/complete from "
        f"http.client over one keep-alive connection; streamed: `\"stream\": true`, the first NDJSON chunk timed "
        f"from sending the request ({chunks} text chunks for {n} tokens). Best of {args.repeats} runs taken in "
        f"turn (direct, whole, streamed, ...). The 1-token column is a whole request of max_new_tokens=1 (prompt "
        f"prefill and one token: the time to first token). Per-token overhead: (engine's time of N - its time of "
        f"1) / (N - 1) less the same for direct. uvicorn closes a keep-alive connection idle for 5 s; the client "
        f"reconnects such a one before the timed request ({resent} request(s) of this run found theirs closed "
        f"anyway and were sent again). torch threads the forwards ran with: "
        f"{threads_seen}. Token ids: "
        f"{'every engine gave the direct call ids, token for token' if same else 'SOME ENGINE DIFFERED (see the table)'}.",
        "",
        *engine_table(results, args),
        "",
        "In short (from this run):",
        "",
        *reading(results, concurrent, args),
        "",
        f"The fixed cost per request is the HTTP layer's, not generation's: GET /api/health (no model work), "
        f"median of 20 on a keep-alive connection: {health}. `slm serve` binds its socket itself "
        f"(`slmkit/serve/server.py` `bind`) and hands it to uvicorn; asyncio sets TCP_NODELAY on accepted "
        f"connections only when the socket's proto is IPPROTO_TCP. Until `bind` made it so (it made a proto-0 "
        f"socket), Nagle's algorithm held each response's second write (uvicorn writes the headers and the body "
        f"separately) until the client's delayed ACK: about 44 ms on every short exchange (health 44 ms, a "
        f"stream's first chunk 44 ms; bench/results/serve_2026-12-02_0842.md). The TCP_NODELAY rows are the "
        f"control: a second server, the same in every way except that the bench set TCP_NODELAY on its listening "
        f"socket itself (Linux copies it to the connections accepted from it); the rows as served should match "
        f"them. Whole requests of a few lengths (the median of {args.repeats}, in turn), where a stall would show:",
        "",
        *sweep_table(results),
    ]
    if concurrent:
        body += [
            "",
            f"Concurrency: 4 requests of {n} tokens sent at once (4 client threads, a connection each) to a server "
            f"of concurrency 2 with 1 torch thread per worker, and to one of concurrency 1 with {args.threads}, "
            f"against the same 4 generated one after another by direct calls with {args.threads} threads; wall "
            f"time, best of {min(args.repeats, CONCURRENCY_REPEATS)} taken in turn (the servers as served, without "
            f"TCP_NODELAY). Both servers run in this one process, so their worker threads share one Python "
            f"interpreter (the GIL) with each other.",
            "",
            *concurrency_table(concurrent, args),
        ]
    print("\n".join(body))
    if args.write:
        write_section(SECTION + "\n\n" + "\n".join(body) + "\n")


if __name__ == "__main__":
    main()
