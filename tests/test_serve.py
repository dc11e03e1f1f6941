"""`slm serve`'s JSON API on a real server (uvicorn in a background thread, 127.0.0.1, a free port): the
text it answers is slmkit.generate's for the same seed, whole or streamed; its bounds (prompt length,
new tokens, queue, concurrency) hold under 20 concurrent requests; bad input gets one clear line."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("gradio", reason="slm serve needs the serve extra: pip install 'slmkit[serve]'")
import httpx  # noqa: E402  (comes with gradio)

from slmkit.cli import main  # noqa: E402
from slmkit.finetune.chat import with_chat_tokens  # noqa: E402
from slmkit.generate import generate  # noqa: E402
from slmkit.generate.chat import ChatSession  # noqa: E402
from slmkit.model import ModelConfig, Transformer, save_model  # noqa: E402
from slmkit.serve import QUEUE_FULL, GenerationPool, QueueFull, ServedModel, ServeOptions, start_server  # noqa: E402
from slmkit.tokenizer import train_tokenizer  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on a mat, and then it ran!"
OPTIONS = dict(port=0, concurrency=2, max_queue=4, max_prompt_chars=200, max_prompt_tokens=100, max_new_tokens=64)


def tiny_model(tokenizer, seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=128, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3, tie_embeddings=False)
    return Transformer(config).eval()


class Throttle:
    """A forward hook on the model's head: sleeps `delay` seconds per forward and never lets end-of-text
    win while `delay` is set (so each admitted request of the load test holds its slot for a while),
    and records the most forwards in flight at once (the concurrency the server really allowed)."""

    def __init__(self, model: Transformer, eot_id: int):
        self.delay, self.eot_id = 0.0, eot_id
        self.active = self.most_active = self.forwards = 0
        self.lock = threading.Lock()
        model.register_forward_pre_hook(self.enter)
        model.lm_head.register_forward_hook(self.leave)

    def enter(self, module, args):
        with self.lock:
            self.active += 1
            self.forwards += 1
            self.most_active = max(self.most_active, self.active)

    def leave(self, module, args, logits):
        if self.delay:
            time.sleep(self.delay)
            logits[..., self.eot_id] = torch.finfo(logits.dtype).min
        with self.lock:
            self.active -= 1
        return logits


@pytest.fixture(scope="module")
def plain():
    tokenizer = train_tokenizer([TEXT], "char")
    return ServedModel("plain", tiny_model(tokenizer, 0), tokenizer)


@pytest.fixture(scope="module")
def chatty():
    tokenizer = with_chat_tokens(train_tokenizer([TEXT + "\n"], "char"))
    return ServedModel("chatty", tiny_model(tokenizer, 1), tokenizer)


@pytest.fixture(scope="module")
def server(plain, chatty):
    throttle = Throttle(plain.model, plain.tokenizer.eot_id)
    with start_server([plain, chatty], ServeOptions(**OPTIONS)) as running:
        running.throttle = throttle
        yield running


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, plain):
    directory = save_model(plain.model, tmp_path_factory.mktemp("run") / "checkpoints" / "best")
    plain.tokenizer.save(directory)
    return directory.parent.parent


def post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/api/complete", json=body, timeout=60, **kwargs)


def test_complete_answers_what_generate_gives_for_the_same_seed(server, plain):
    body = {"prompt": "the cat", "preset": "creative", "seed": 7, "max_new_tokens": 24, "top_p": 0.9}
    answer = post(server, body)
    expected = generate(plain.model, "the cat", "creative", tokenizer=plain.tokenizer, seed=7, max_new_tokens=24,
                        top_p=0.9)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["text"] == expected.text and result["tokens"] == expected.tokens
    assert result["finish_reason"] == expected.finish_reason
    assert result["model"] == "plain" and result["seed"] == 7 and result["prompt_tokens"] == 7
    assert post(server, {**body, "seed": 8}).json()["tokens"] != expected.tokens  # the seed is used


def test_complete_without_a_seed_reports_the_one_it_drew_and_that_seed_reproduces_it(server):
    first = post(server, {"prompt": "a dog", "max_new_tokens": 16}).json()
    again = post(server, {"prompt": "a dog", "max_new_tokens": 16, "seed": first["seed"]}).json()
    assert isinstance(first["seed"], int) and again["tokens"] == first["tokens"]


def test_streamed_complete_sends_the_text_piece_by_piece_then_the_whole_result(server, plain):
    body = {"prompt": "the dog", "preset": "coherent", "seed": 3, "max_new_tokens": 20, "stream": True}
    with httpx.stream("POST", server.url + "/api/complete", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    expected = generate(plain.model, "the dog", "coherent", tokenizer=plain.tokenizer, seed=3, max_new_tokens=20)
    pieces, final = lines[:-1], lines[-1]
    assert len(pieces) > 1 and all(set(piece) == {"text"} for piece in pieces)
    assert "".join(piece["text"] for piece in pieces) == expected.text
    assert final["done"] is True and final["text"] == expected.text and final["tokens"] == expected.tokens


def test_a_chat_model_answers_in_its_template_as_chat_session_does(server, chatty):
    answer = post(server, {"prompt": "what is a cat", "model": "chatty", "preset": "greedy", "max_new_tokens": 30})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    session = ChatSession(chatty.model, chatty.tokenizer, "greedy")
    session.config = session.config.replace(max_new_tokens=30, seed=result["seed"])
    assert result["chat"] is True and result["text"].strip() == session.reply("what is a cat")
    plain_answer = post(server, {"prompt": "what is a cat", "model": "chatty", "chat": False, "preset": "greedy",
                                 "max_new_tokens": 30}).json()
    assert plain_answer["chat"] is False and plain_answer["prompt_tokens"] == len("what is a cat")


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "x" * 201}, 413, "prompt of 201 characters exceeds this server's limit of 200"),
    ({"prompt": "a" * 150}, 413, "prompt of 150 tokens exceeds this server's limit of 100"),
    ({"prompt": "a" * 150, "model": "chatty"}, 413, "prompt of 150 tokens exceeds this server's limit of 100"),
    ({"prompt": "a", "system": "be brief"}, 400, "\"system\" needs the chat template"),
    ({"prompt": "a", "max_new_tokens": 65}, 400, "max_new_tokens 65 exceeds this server's limit of 64"),
    ({"prompt": "a", "temperature": "hot"}, 400, "temperature = 'hot': must be a number"),
    ({"prompt": "a", "top_k": 2.5}, 400, "top_k = 2.5: must be a whole number"),
    ({"prompt": "a", "preset": "wild"}, 400, "unknown preset 'wild'"),
    ({"prompt": "a", "model": "nope"}, 404, "unknown model 'nope'; this server has 'plain', 'chatty'"),
    ({"prompt": "a", "model": "plain", "chat": True}, 400, "model 'plain' has no chat template"),
    ({"promt": "a"}, 400, "unknown field 'promt' (did you mean 'prompt'?)"),
    ({"prompt": "a cat?"}, 400, "cannot encode the prompt: characters not in the 31-id character vocabulary"),
    ({"prompt": 5}, 400, "\"prompt\" must be a string, not int"),
    (["a"], 400, "the request body must be a JSON object"),
])
def test_bad_or_oversize_requests_are_refused_with_a_clear_message(server, body, status, words):
    answer = post(server, body)
    assert answer.status_code == status and words in answer.json()["error"], answer.text


def test_a_body_that_is_not_json_is_refused_with_400(server):
    answer = httpx.post(server.url + "/api/complete", content=b"{prompt: oops", timeout=30)
    assert answer.status_code == 400 and answer.json()["error"].startswith("the request body is not valid JSON")


def test_twenty_concurrent_requests_are_answered_or_refused_and_the_server_still_answers(server):
    """concurrency 2, queue 4: the first 6 to arrive are admitted and answered; while they hold their
    slots (10 ms a token here, 40 tokens) the rest are refused at once with 429 and the message."""
    barrier, answers = threading.Barrier(20), [None] * 20

    def ask(index: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            answers[index] = client.post(server.url + "/api/complete",
                                         json={"prompt": "the cat", "seed": index, "max_new_tokens": 40})

    server.throttle.delay, server.throttle.most_active = 0.01, 0
    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.throttle.delay = 0.0
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 6 and statuses.count(429) >= 1, statuses
    assert all(a.json() == {"error": QUEUE_FULL} for a in answers if a.status_code == 429)
    assert all(len(a.json()["tokens"]) == 40 for a in answers if a.status_code == 200)
    assert server.throttle.most_active <= 2  # never more generations at once than --concurrency
    assert wait_until_idle(server) == {"status": "ok", "admitted": 0, "capacity": 6}
    assert post(server, {"prompt": "still there", "max_new_tokens": 5}).status_code == 200


def wait_until_idle(server, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while (health := httpx.get(server.url + "/api/health", timeout=30).json())["admitted"] and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    return health


def test_the_server_answers_other_requests_while_a_generation_runs(server):
    """Generation runs in a worker thread: mid-stream, the event loop still answers /api/health (which
    sees the generation running) and /api/models."""
    server.throttle.delay = 0.02
    try:
        body = {"prompt": "the cat", "seed": 1, "max_new_tokens": 40, "stream": True}
        with httpx.stream("POST", server.url + "/api/complete", json=body, timeout=60) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            during = httpx.get(server.url + "/api/health", timeout=30).json()
            models = httpx.get(server.url + "/api/models", timeout=30).json()
            rest = [json.loads(line) for line in lines if line]
    finally:
        server.throttle.delay = 0.0
    assert set(first) == {"text"} and rest[-1]["done"] is True and len(rest[-1]["tokens"]) == 40
    assert during["admitted"] == 1  # answered while the generation was still running
    assert [m["name"] for m in models["models"]] == ["plain", "chatty"] and models["limits"]["max_queue"] == 4


def test_a_caller_that_disconnects_mid_stream_stops_its_generation(server):
    server.throttle.delay, before = 0.02, server.throttle.forwards
    try:
        body = {"prompt": "the cat", "seed": 2, "max_new_tokens": 60, "stream": True}
        with httpx.stream("POST", server.url + "/api/complete", json=body, timeout=60) as response:
            next(response.iter_lines())  # generation has started; then the caller goes away
        health = wait_until_idle(server)
    finally:
        server.throttle.delay = 0.0
    assert health["admitted"] == 0
    assert server.throttle.forwards - before < 60  # stopped early: 60 tokens would take 60 forwards


def test_generation_threads_use_the_threads_per_generation():
    pool = GenerationPool(concurrency=1, max_queue=0, threads=1)
    try:
        assert pool.submit(torch.get_num_threads).result(timeout=10) == 1
    finally:
        pool.shutdown()
    assert ServeOptions(concurrency=2, threads=None).threads_per_generation() >= 1
    assert ServeOptions(concurrency=2, threads=3).threads_per_generation() == 3


def test_the_pool_admits_concurrency_plus_queue_jobs_and_refuses_one_more():
    pool, release = GenerationPool(concurrency=1, max_queue=1, threads=1), threading.Event()
    try:
        running, waiting = pool.submit(release.wait), pool.submit(release.wait)
        with pytest.raises(QueueFull, match="queue full, try again"):
            pool.submit(release.wait)
        assert pool.admitted == 2
        release.set()
        running.result(timeout=10), waiting.result(timeout=10)
        deadline = time.monotonic() + 10
        while pool.admitted and time.monotonic() < deadline:  # released by the futures' callbacks
            time.sleep(0.01)
        assert pool.admitted == 0
        assert pool.submit(lambda: 42).result(timeout=10) == 42
    finally:
        release.set()
        pool.shutdown()


def test_serve_of_a_busy_port_says_so_in_one_line(checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", str(checkpoint), "--port", str(port)])
    error = capsys.readouterr().err
    assert code == 2 and error == f"error: port {port} is in use; pass --port N (another port), or stop what " \
                                  f"listens there\n"


def test_serve_of_a_missing_model_says_so_in_one_line(tmp_path, capsys):
    code = main(["serve", str(tmp_path / "no-such-run"), "--port", "0"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: model not found: ") and error.count("\n") == 1
    assert "no-such-run" in error


def test_serve_refuses_three_models_and_bounds_that_cannot_work(checkpoint, capsys):
    assert main(["serve", *[str(checkpoint)] * 3, "--port", "0"]) == 2
    assert "slm serve takes one model, or two to compare side by side; got 3" in capsys.readouterr().err
    assert main(["serve", str(checkpoint), "--concurrency", "0"]) == 2
    assert capsys.readouterr().err == "error: concurrency = 0: must be a whole number >= 1\n"


def test_accepted_connections_get_tcp_nodelay_so_short_answers_are_not_held_back():
    """asyncio (under uvicorn) switches TCP_NODELAY on for an accepted connection only when the listening
    socket says IPPROTO_TCP; without it Nagle held every short answer back ~44 ms (bench/bench_serve.py)."""
    import asyncio

    from slmkit.serve.server import bind

    def nodelay_of_accepted(listener: socket.socket) -> int:
        async def main_loop() -> int:
            seen = asyncio.get_running_loop().create_future()

            async def handle(reader, writer):
                seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                writer.close()

            server = await asyncio.start_server(handle, sock=listener)
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            server.close()
            return value

        return asyncio.run(main_loop())

    assert nodelay_of_accepted(bind("127.0.0.1", 0)) != 0
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # protocol 0: what bind made before
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    assert nodelay_of_accepted(plain) == 0  # the check can fail
