"""Parsers of the model's answers, built from the tag syntax of conf/prompts.yaml.

No tag is typed here: every pattern is compiled from `conf.prompts.tags(prompts)`, so a user
who overrides the templates in a config gets parsers that accept what those templates ask
for. Compiled patterns are cached per tag set.

Accepted syntax (the prompts' "[think]..[/think][answer]Score:x[/answer]"):
- A score is ASCII digits with an optional sign and one optional decimal part ("3", "3.7",
  "-0.5"). `\\d` is deliberately not used: it matches Arabic-Indic, fullwidth and other
  Unicode digits, which `float()` would then silently accept.
- Whitespace (ASCII) is allowed around "Score:" and the number, between the think and the
  answer block, and at the very start and end of the output: the sampler's stray newline
  is not a format error.
- An output with more or fewer than one of each expected tag (nested tags, a second answer
  block, a think tag in a no-think answer) is malformed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from conf.prompts import MODES, tags

# The tag keys the parsers need, in the order `_compile` receives them.
TAG_KEYS = ("think_open", "think_close", "answer_open", "answer_close", "score_prefix",
            "choice_separator")
NUMBER = r"[-+]?[0-9]+(?:\.[0-9]+)?"


@dataclass(frozen=True)
class Grammar:
    """The tags of one prompt set and the patterns compiled from them."""

    think_open: str
    think_close: str
    answer_open: str
    answer_close: str
    score_prefix: str
    choice_separator: str
    score_body: re.Pattern[str]       # the inside of an answer block: "Score: 3.7"
    think_output: re.Pattern[str]     # a whole think-mode output
    no_think_output: re.Pattern[str]  # a whole no-think output

    def answer_content(self, text: str) -> str | None:
        """The text between the one answer_open and the one answer_close, else None."""
        if text.count(self.answer_open) != 1 or text.count(self.answer_close) != 1:
            return None
        start = text.index(self.answer_open) + len(self.answer_open)
        end = text.index(self.answer_close)
        return text[start:end] if end >= start else None

    def score(self, text: str) -> float | None:
        """The finite score of the one answer block of `text`, else None."""
        content = self.answer_content(text)
        if content is None:
            return None
        match = self.score_body.fullmatch(content)
        if match is None:
            return None
        # float() of an ASCII digit string never raises; hundreds of digits give inf.
        value = float(match.group("num"))
        return value if math.isfinite(value) else None

    def is_well_formed(self, text: str, mode: str) -> bool:
        """True when `text` is exactly one output of the given mode (see module docstring)."""
        n_think = (text.count(self.think_open), text.count(self.think_close))
        if mode == "think":
            if n_think != (1, 1):
                return False
            match = self.think_output.fullmatch(text)
            if match is None or not match.group("think").strip():
                return False
        elif mode == "no_think":
            if n_think != (0, 0):
                return False
            match = self.no_think_output.fullmatch(text)
            if match is None:
                return False
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        # The counts of answer tags and a finite number are checked by score().
        return self.score(text) is not None


def _tag_values(prompts: Any) -> tuple[str, ...]:
    try:
        node = tags(prompts)
    except Exception as err:  # AttributeError, or omegaconf's missing-key errors
        raise ValueError("the prompts node has no `tags` section; pass the `prompts` "
                         "section of a loaded config (see conf/prompts.yaml)") from err
    values = []
    for key in TAG_KEYS:
        try:
            value = node[key]
        except Exception as err:  # omegaconf raises its own KeyError/ConfigKeyError types
            raise ValueError(f"prompts.tags.{key} is missing; conf/prompts.yaml declares "
                             "every tag the reward parsers need") from err
        values.append(value)
    return tuple(values)


@lru_cache(maxsize=32)
def _compile(values: tuple[str, ...]) -> Grammar:
    named = dict(zip(TAG_KEYS, values))
    for key, value in named.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"prompts.tags.{key} must be a non-empty string, got {value!r}")
    blocks = ("think_open", "think_close", "answer_open", "answer_close")
    for a in blocks:
        for b in blocks:
            # Counting tags is how nesting and duplicates are detected; a tag that contains
            # another would be counted twice.
            if a != b and named[a] in named[b]:
                raise ValueError(f"prompts.tags.{a} ({named[a]!r}) occurs inside "
                                 f"prompts.tags.{b} ({named[b]!r}); the answer parsers "
                                 "need tags that do not contain each other")
    e = {key: re.escape(value) for key, value in named.items()}
    flags = re.ASCII | re.DOTALL
    score_body = re.compile(rf"\s*{e['score_prefix']}\s*(?P<num>{NUMBER})\s*", flags)
    answer = rf"{e['answer_open']}(?P<body>.*){e['answer_close']}"
    think_output = re.compile(
        rf"\s*{e['think_open']}(?P<think>.*){e['think_close']}\s*{answer}\s*", flags)
    no_think_output = re.compile(rf"\s*{answer}\s*", flags)
    return Grammar(**named, score_body=score_body, think_output=think_output,
                   no_think_output=no_think_output)


@lru_cache(maxsize=1)
def _default_grammar() -> Grammar:
    return _compile(_tag_values(None))


def grammar(prompts: Any | None = None) -> Grammar:
    """The compiled answer grammar of a prompts node (default: conf/prompts.yaml).

    Reading an omegaconf node costs microseconds per key, so batch callers resolve the
    grammar once per step and call its methods.
    """
    return _default_grammar() if prompts is None else _compile(_tag_values(prompts))


def _check_text(text: Any, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be the decoded model output (str), "
                        f"got {type(text).__name__}")
    return text


def answer_content(text: str, prompts: Any | None = None) -> str | None:
    """The text inside the single answer block of `text`.

    None when there is not exactly one answer_open and one answer_close tag, in that
    order. Text outside the block is not looked at (format_reward judges that).
    """
    return grammar(prompts).answer_content(_check_text(text))


def extract_score(text: str, prompts: Any | None = None) -> float | None:
    """The number inside `[answer]Score: x[/answer]`, or None.

    None when the output has no answer block or more than one, when the block holds
    anything but "Score:" and one ASCII number (whitespace aside), or when the number is not
    finite (hundreds of digits overflow to inf). The think part and text around the block
    are not looked at. Raises TypeError when `text` is not a str.
    """
    return grammar(prompts).score(_check_text(text))


def format_reward(text: str, mode: str, prompts: Any | None = None) -> float:
    """1.0 when `text` is exactly the answer format of `mode`, else 0.0.

    mode "think": `[think]T[/think][answer]Score:x[/answer]` with T not blank;
    mode "no_think": `[answer]Score:x[/answer]`. Optional whitespace is accepted around
    "Score:" and the number, between the blocks and at the ends; anything else before,
    between or after, a nested or repeated tag, a missing part or a number that is not a
    finite ASCII decimal gives 0.0. Raises ValueError for an unknown mode, TypeError when
    `text` is not a str.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return 1.0 if grammar(prompts).is_well_formed(_check_text(text), mode) else 0.0
