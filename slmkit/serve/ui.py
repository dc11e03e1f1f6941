"""The web demo of `slm serve`: a Gradio Blocks page over the same CompletionService as the HTTP API.

A prompt box, the sampling presets (choosing one sets the temperature and top-k sliders) and the
controls, output streamed as it is made. With two models a "side by side" choice runs the same
prompt with the same seed on both, each into its own box. A model whose tokenizer has the chat
tokens answers in its chat template while "chat template" is ticked (on by default).
"""

from __future__ import annotations

import queue

import gradio as gr

from slmkit.errors import SlmError
from slmkit.generate.config import PRESETS
from slmkit.serve.completion import CompletionService
from slmkit.serve.limits import QueueFull

SIDE_BY_SIDE = "side by side"


def build_ui(service: CompletionService) -> gr.Blocks:
    """The Blocks page; its queue admits `max_queue` (at least 1) waiting visitors and runs `concurrency`
    at once, and each generation takes a slot of the service's pool like an API request."""
    options, models = service.options, service.models
    preset = PRESETS[options.preset]
    names = [served.name for served in models]
    with gr.Blocks(title="slmkit", analytics_enabled=False) as page:
        gr.Markdown("## slmkit\nContinue a prompt with " + " and ".join(f"`{name}`" for name in names)
                    + ". The same server answers `POST /api/complete` (JSON).")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, max_length=options.max_prompt_chars, elem_id="prompt",
                                    placeholder="Once upon a time")
                with gr.Row():
                    run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_button = gr.Button("Stop", elem_id="stop")
                target = gr.Radio([*names, SIDE_BY_SIDE], value=SIDE_BY_SIDE, label="Model",
                                  visible=len(models) > 1, elem_id="target")
                chat = gr.Checkbox(value=True, label="chat template (for models fine-tuned for chat)",
                                   visible=any(served.chat for served in models), elem_id="chat")
            with gr.Column(scale=2):
                preset_choice = gr.Dropdown(list(PRESETS), value=options.preset, label="Preset", elem_id="preset")
                temperature = gr.Slider(0.0, 2.0, value=preset["temperature"], step=0.05,
                                        label="Temperature (0: greedy)")
                top_k = gr.Slider(0, 200, value=preset["top_k"], step=1, label="Top-k (0: off)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1: off)")
                max_new_tokens = gr.Slider(1, options.max_new_tokens, value=min(128, options.max_new_tokens), step=1,
                                           label="Max new tokens")
                seed = gr.Number(value=0, precision=0, label="Seed (blank: random)", elem_id="seed")
        with gr.Row():
            outputs = [gr.Textbox(label=name, lines=10, interactive=False, elem_id=f"output-{index}")
                       for index, name in enumerate(names)]
        status = gr.Markdown(elem_id="status")

        def apply_preset(name: str):
            return PRESETS[name]["temperature"], PRESETS[name]["top_k"]

        def run(prompt_text, chosen, chat_on, preset_name, temperature_value, top_k_value, top_p_value,
                max_new, seed_value):
            chosen_rows = range(len(models)) if len(models) == 1 or chosen == SIDE_BY_SIDE else [names.index(chosen)]
            yield from stream_rows(service, list(chosen_rows), {
                "prompt": prompt_text or "", "preset": preset_name, "temperature": float(temperature_value),
                "top_k": int(top_k_value), "top_p": float(top_p_value), "max_new_tokens": int(max_new),
                "seed": None if seed_value is None else int(seed_value),
            }, chat_on)

        preset_choice.change(apply_preset, preset_choice, [temperature, top_k])
        inputs = [prompt, target, chat, preset_choice, temperature, top_k, top_p, max_new_tokens, seed]
        events = [trigger(run, inputs, [*outputs, status]) for trigger in (run_button.click, prompt.submit)]
        stop_button.click(None, cancels=events)
    # Gradio's own queue of visitors, bounded like the pool (a max_size of 0 would refuse everyone).
    page.queue(max_size=max(1, options.max_queue), default_concurrency_limit=options.concurrency)
    return page


def stream_rows(service: CompletionService, rows: list[int], fields: dict, chat_on: bool):
    """Yield the texts of every model's box (and the status line) as the chosen models generate."""
    models = service.models
    texts = [gr.skip()] * len(models)
    try:
        requests = {row: service.parse({**fields, "model": models[row].name, "chat": chat_on and models[row].chat})
                    for row in rows}
    except SlmError as error:
        raise gr.Error(str(error)) from None
    pieces: queue.Queue = queue.Queue()
    futures = {}
    try:
        for row, request in requests.items():
            futures[row] = service.submit(request, on_text=lambda text, row=row: pieces.put((row, text)))
            futures[row].add_done_callback(lambda _, row=row: pieces.put((row, None)))
            texts[row] = ""
        yield [*texts, "generating..."]
        running = len(futures)
        while running:
            row, text = pieces.get()
            if text is None:
                running -= 1
                continue
            texts[row] += text
            yield [*texts, gr.skip()]
        yield [*texts, summary(futures, models)]
    except QueueFull as error:
        raise gr.Error(str(error)) from None
    finally:  # the visitor pressed Stop or left: end the generations still running
        for request in requests.values():
            request.cancelled.set()


def summary(futures: dict, models) -> str:
    """One line per model: its tokens, why it stopped and the seed (to reproduce it through the API)."""
    lines = []
    for row, future in futures.items():
        try:
            result = future.result()
        except SlmError as error:
            raise gr.Error(str(error)) from None
        if result is not None:
            lines.append(f"`{models[row].name}`: {len(result['tokens'])} tokens, stopped by "
                         f"{result['finish_reason']}, seed {result['seed']}")
    return "  \n".join(lines)
