"""Which model `options` a client may send: sampling settings only, each within bounds.

Options such as `num_ctx`, `num_gpu` or `use_mmap` make Ollama reload the model for every
user of the GPU, so only the sampling settings below pass; an operator can allow more with
`ALLOWED_OPTIONS`. Every answer is bounded: without `num_predict`, `MAX_NUM_PREDICT` is sent.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# name -> (lowest, highest, integer only). Ranges are what a chat front end needs, no more.
SAMPLING_OPTIONS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "top_k": (0, 1000, True),
    "min_p": (0, 1, False),
    "typical_p": (0, 1, False),
    "repeat_penalty": (0, 2, False),
    "repeat_last_n": (-1, 4096, True),  # -1: the whole context, 0: off
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "seed": (0, 2**32 - 1, True),
    "mirostat": (0, 2, True),  # 0 off, 1 Mirostat, 2 Mirostat 2.0
    "mirostat_tau": (0, 10, False),
    "mirostat_eta": (0, 1, False),
}
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 200
MAX_OPTION_NAME_CHARS = 64


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(value: Any, low: float, high: float, integer: bool) -> str | None:
    """The reason `value` is refused, or None."""
    if integer and not (isinstance(value, int) and not isinstance(value, bool)):
        return "Must be an integer."
    if not _is_number(value):
        return "Must be a number."
    if not low <= value <= high:
        return f"Must be between {low} and {high}."
    return None


def _check_stop(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        return "Must be a list of strings."
    if len(value) > MAX_STOP_SEQUENCES:
        return f"At most {MAX_STOP_SEQUENCES} stop sequences."
    if not all(1 <= len(s) <= MAX_STOP_CHARS for s in value):
        return f"Each stop sequence must be 1 to {MAX_STOP_CHARS} characters."
    return None


def parse_allowed_options(value: Any) -> dict[str, tuple[float, float] | None]:
    """Read `ALLOWED_OPTIONS`: option name -> [min, max], or null for any value."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("ALLOWED_OPTIONS must be a JSON object: name -> [min, max] or null")
    allowed: dict[str, tuple[float, float] | None] = {}
    for name, bounds in value.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_OPTION_NAME_CHARS:
            raise ValueError(f"ALLOWED_OPTIONS: bad option name {name!r}")
        if bounds is None:
            allowed[name] = None
            continue
        if (
            not isinstance(bounds, list | tuple)
            or len(bounds) != 2
            or not all(_is_number(b) for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ValueError(f"ALLOWED_OPTIONS[{name!r}]: want [min, max] or null, not {bounds!r}")
        allowed[name] = (bounds[0], bounds[1])
    return allowed


@dataclass(frozen=True)
class OptionRules:
    """The options a client may send, and the bound put on every answer's length."""

    max_num_predict: int
    allowed: Mapping[str, tuple[float, float] | None]  # the operator's additions

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "OptionRules":
        """Read `MAX_NUM_PREDICT` and `ALLOWED_OPTIONS`; raise ValueError when invalid."""
        max_num_predict = config["MAX_NUM_PREDICT"]
        if isinstance(max_num_predict, bool) or not isinstance(max_num_predict, int):
            raise ValueError(f"MAX_NUM_PREDICT must be an integer, not {max_num_predict!r}")
        if max_num_predict < 1:
            raise ValueError("MAX_NUM_PREDICT must be at least 1")
        return cls(max_num_predict, parse_allowed_options(config.get("ALLOWED_OPTIONS")))

    def names(self) -> list[str]:
        """Every option name a client may send."""
        return sorted({*SAMPLING_OPTIONS, "stop", "num_predict", *self.allowed})

    def problem(self, name: str, value: Any) -> str | None:
        """Why this option is refused, or None when it may go to the chat instance."""
        if name in self.allowed:  # the operator's rule replaces a built-in one
            bounds = self.allowed[name]
            return None if bounds is None else _check_number(value, *bounds, integer=False)
        if name in SAMPLING_OPTIONS:
            return _check_number(value, *SAMPLING_OPTIONS[name])
        if name == "num_predict":
            return _check_number(value, 1, self.max_num_predict, integer=True)
        if name == "stop":
            return _check_stop(value)
        return "Not an allowed option (sampling settings only)."

    def problems(self, options: Mapping[str, Any]) -> dict[str, str]:
        """Every refused option with its reason; `null` values mean "not set" and pass."""
        found = {}
        for name, value in options.items():
            if value is not None and (reason := self.problem(name, value)):
                found[name] = reason
        return found

    def for_upstream(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The options to send: the client's (unset ones dropped), with an answer bound."""
        sent = {name: value for name, value in (options or {}).items() if value is not None}
        sent.setdefault("num_predict", self.max_num_predict)
        return sent
