"""GenerationConfig: every control of decoding, its presets and its validation.

Temperature 0 means greedy decoding; it runs through the same sampling engine (the argmax of the
processed logits instead of a draw). `num_beams > 1` switches to beam search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from slmkit.errors import SlmError

OVERFLOW_POLICIES = ("refuse", "slide")

# Named presets: (temperature, top_k). "greedy" is temperature 0.
PRESETS: dict[str, dict] = {
    "creative": {"temperature": 0.9, "top_k": 50},
    "coherent": {"temperature": 0.7, "top_k": 40},
    "deterministic": {"temperature": 0.5, "top_k": 20},
    "greedy": {"temperature": 0.0, "top_k": 0},
}


@dataclass
class GenerationConfig:
    """How to decode. Counts are tokens; probabilities are in [0, 1].

    Sampling: temperature (0 = greedy), top_k (0 = off), top_p (1 = off), min_p (0 = off), applied in
    that order after the penalties, as transformers does. temperature_decay multiplies the
    temperature after each generated token (annealing; 1 = constant), never below min_temperature.
    Penalties: repetition_penalty (transformers' rule: a seen token's logit is divided by the penalty
    when positive, multiplied when negative; prompt tokens count), presence_penalty and
    frequency_penalty (OpenAI's rule: subtracted from the logits of tokens generated so far, once
    or per occurrence), no_repeat_ngram_size (an n-gram never appears twice in prompt + output).
    Beam search: num_beams > 1 with temperature 0; length_penalty divides a beam's summed log
    probability by (generated length ** length_penalty); early_stopping True stops once num_beams
    hypotheses are finished, False stops when no running beam can improve on them (transformers'
    heuristic), "never" runs until no improvement is possible even in principle.
    Stops: the end-of-text id (unless ignore_eot), any of stop_token_ids, any of stop_strings
    (needs a tokenizer; the text is cut before the stop string), or max_new_tokens.
    overflow: what happens when prompt + output would exceed the model's context: "refuse" raises
    SlmError before generating; "slide" drops the oldest tokens (a prompt longer than the context
    keeps its last tokens, with a warning) and re-reads the kept quarter-trimmed window.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    temperature_decay: float = 1.0
    min_temperature: float = 0.0
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eot: bool = False
    overflow: str = "slide"

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GenerationConfig:
        """A config from a named preset (creative, coherent, deterministic, greedy) plus overrides."""
        if name not in PRESETS:
            raise SlmError(f"unknown generation preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validate()

    def replace(self, **changes) -> GenerationConfig:
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> GenerationConfig:
        """Raise SlmError naming the first value that cannot work; return self otherwise."""
        def whole(name, low):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SlmError(f"{name} = {value!r}: must be a whole number >= {low}")

        def number(name):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise SlmError(f"{name} = {value!r}: must be a number")
            return value

        whole("max_new_tokens", 0)
        whole("top_k", 0)
        whole("no_repeat_ngram_size", 0)
        whole("num_beams", 1)
        whole("num_return_sequences", 1)
        if number("temperature") < 0:
            raise SlmError(f"temperature = {self.temperature}: must be >= 0 (0 means greedy decoding)")
        if not 0.0 < number("top_p") <= 1.0:
            raise SlmError(f"top_p = {self.top_p}: must be in (0, 1] (1 turns it off)")
        if not 0.0 <= number("min_p") <= 1.0:
            raise SlmError(f"min_p = {self.min_p}: must be in [0, 1] (0 turns it off)")
        if number("repetition_penalty") <= 0:
            raise SlmError(f"repetition_penalty = {self.repetition_penalty}: must be > 0 (1 turns it off)")
        number("presence_penalty")
        number("frequency_penalty")
        number("length_penalty")
        if not 0.0 < number("temperature_decay") <= 1.0:
            raise SlmError(f"temperature_decay = {self.temperature_decay}: must be in (0, 1] (1: constant)")
        if number("min_temperature") < 0:
            raise SlmError(f"min_temperature = {self.min_temperature}: must be >= 0")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SlmError(f"seed = {self.seed!r}: must be a whole number or None")
        if self.early_stopping not in (True, False, "never"):
            raise SlmError(f"early_stopping = {self.early_stopping!r}: must be true, false or \"never\"")
        if self.overflow not in OVERFLOW_POLICIES:
            raise SlmError(f"overflow = {self.overflow!r}: must be one of {', '.join(OVERFLOW_POLICIES)}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise SlmError(f"stop_strings = {self.stop_strings!r}: each must be a non-empty string")
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in self.stop_token_ids):
            raise SlmError(f"stop_token_ids = {self.stop_token_ids!r}: each must be a token id >= 0")
        if self.num_beams > 1:
            if not self.greedy:
                raise SlmError(
                    f"num_beams = {self.num_beams} with temperature = {self.temperature}: beam search is "
                    f"deterministic here; set temperature 0 (or --preset greedy), or use num_beams 1 to sample"
                )
            unsupported = {"top_k": self.top_k != 0, "top_p": self.top_p != 1.0, "min_p": self.min_p != 0.0,
                           "presence_penalty": self.presence_penalty != 0.0,
                           "frequency_penalty": self.frequency_penalty != 0.0}
            used = [name for name, on in unsupported.items() if on]
            if used:
                raise SlmError(f"num_beams = {self.num_beams} cannot be combined with {', '.join(used)}; "
                               f"beam search supports repetition_penalty, no_repeat_ngram_size and "
                               f"length_penalty")
            if self.num_return_sequences > self.num_beams:
                raise SlmError(f"num_return_sequences = {self.num_return_sequences} exceeds num_beams = "
                               f"{self.num_beams}; beam search returns at most num_beams sequences")
        return self
