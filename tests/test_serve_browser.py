"""`slm serve`'s web demo in a real headless browser: Debian's chromium, driven by Playwright with its
executable path set (scripts/setup installs it). A person's steps: open the page, type a prompt, press
Generate, see both models' text appear side by side, the same text slmkit.generate gives."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from slmkit.generate import generate
from slmkit.model import ModelConfig, Transformer
from slmkit.tokenizer import train_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on a mat, and then it ran!"
# CI sets this (.ci/run): there the browser test must run, so a missing browser fails instead of skipping.
REQUIRED = os.environ.get("SLMKIT_REQUIRE_BROWSER") == "1"


def unavailable(reason: str):
    (pytest.fail if REQUIRED else pytest.skip)(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("SLMKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("no chromium installed: run scripts/setup as root (apt-get install chromium), or set "
                    "SLMKIT_CHROMIUM to a chromium executable")
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{module} is not installed: pip install -e '.[test]'")
    return path


def tiny_model(tokenizer, seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=128, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3, tie_embeddings=False)
    return Transformer(config).eval()


def test_the_page_streams_both_models_side_by_side_then_one_alone_after_a_prompt_is_typed(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from slmkit.serve import ServedModel, ServeOptions, start_server

    tokenizer = train_tokenizer([TEXT], "char")
    models = [ServedModel(name, tiny_model(tokenizer, seed), tokenizer) for name, seed in (("left", 0), ("right", 1))]
    # What the page sends with its defaults: the coherent preset's sliders, top-p 1, seed 0, and the
    # server's max new tokens (24 here).
    expected = [generate(m.model, "the cat", "coherent", tokenizer=tokenizer, seed=0, max_new_tokens=24, top_p=1.0).text
                for m in models]
    assert all(expected) and expected[0] != expected[1]
    screenshot = tmp_path / "serve.png"
    with start_server(models, ServeOptions(port=0, max_new_tokens=24)) as server, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.url, wait_until="load", timeout=60_000)
            page.locator("#prompt textarea").fill("the cat")
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed 0')",
                                   timeout=60_000)
            shown = [page.locator(f"#output-{index} textarea").input_value() for index in range(2)]
            status = page.locator("#status").inner_text()
            page.screenshot(path=str(screenshot), full_page=True)
            # One model alone, another seed: only its box changes.
            page.locator("#target label", has_text="right").click()
            page.locator("#seed input").fill("5")
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed 5')",
                                   timeout=60_000)
            shown_alone = [page.locator(f"#output-{index} textarea").input_value() for index in range(2)]
        finally:
            browser.close()
    assert shown == expected
    right_seed_5 = generate(models[1].model, "the cat", "coherent", tokenizer=tokenizer, seed=5, max_new_tokens=24,
                            top_p=1.0).text
    assert right_seed_5 != expected[1] and shown_alone == [expected[0], right_seed_5]
    assert "left" in status and "right" in status
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
