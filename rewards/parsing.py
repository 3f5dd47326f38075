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
- The format reward also asks what the prompt asks of the score, "a float between 0 and
  5, rounded to one decimal place": one digit, a point, one digit, at most 5.0
  (`STRICT_SCORE`). `strict=False` (conf reward.strict_score_format=false) accepts any
  number there. The answer reward (Eq. 1) reads any number either way.
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
STRICT_SCORE = re.compile(r"[0-9]\.[0-9]", re.ASCII)   # then <= 5.0 (SCORE_MAX)
SCORE_MAX = 5.0


# What the format allows between and around the blocks: the ASCII whitespace of `\s`
# under re.ASCII.
_GAP = " \t\n\r\f\v"


@dataclass(frozen=True)
class Grammar:
    """The tags of one prompt set and the patterns compiled from them.

    One regex scan lists every block tag of an output with its position; the format and
    the answer block are judged from that list. (Four `str.count` calls measured 8x slower
    than the scan on 1.8 kB outputs.)
    """

    think_open: str
    think_close: str
    answer_open: str
    answer_close: str
    score_prefix: str
    choice_separator: str
    tag_scan: re.Pattern[str]    # any of the four block tags
    score_body: re.Pattern[str]  # the inside of an answer block: "Score: 3.7"

    def _tags(self, text: str) -> list[re.Match[str]]:
        return list(self.tag_scan.finditer(text))

    def _content_span(self, found: list[re.Match[str]]) -> tuple[int, int] | None:
        opens = [m for m in found if m.group() == self.answer_open]
        closes = [m for m in found if m.group() == self.answer_close]
        if len(opens) != 1 or len(closes) != 1 or closes[0].start() < opens[0].end():
            return None
        return opens[0].end(), closes[0].start()

    def _content(self, text: str, found: list[re.Match[str]]) -> str | None:
        span = self._content_span(found)
        return None if span is None else text[span[0]:span[1]]

    def _score(self, content: str | None) -> float | None:
        match = None if content is None else self.score_body.fullmatch(content)
        if match is None:
            return None
        # float() of an ASCII digit string never raises; hundreds of digits give inf.
        value = float(match.group("num"))
        return value if math.isfinite(value) else None

    def answer_content(self, text: str) -> str | None:
        """The text between the one answer_open and the one answer_close, else None."""
        return self._content(text, self._tags(text))

    def think_span(self, text: str) -> tuple[int, int] | None:
        """(start, end) of the text between the one think_open and the one think_close."""
        found = [m for m in self._tags(text) if m.group() in (self.think_open,
                                                              self.think_close)]
        if [m.group() for m in found] != [self.think_open, self.think_close]:
            return None
        return found[0].end(), found[1].start()

    def think_content(self, text: str) -> str | None:
        """The text between the one think_open and the one think_close, else None."""
        span = self.think_span(text)
        return None if span is None else text[span[0]:span[1]]

    def score_prefix_end(self, text: str) -> int | None:
        """Where the first score prefix inside the one answer block ends, else None."""
        span = self._content_span(self._tags(text))
        if span is None:
            return None
        at = text.find(self.score_prefix, span[0], span[1])
        return None if at < 0 else at + len(self.score_prefix)

    def score(self, text: str) -> float | None:
        """The finite score of the one answer block of `text`, else None."""
        return self._score(self.answer_content(text))

    def parse(self, text: str, mode: str, strict: bool = True) -> tuple[float | None, bool]:
        """(score(text), whether `text` is exactly one output of `mode`), in one pass.

        A well-formed output always has a score; the converse does not hold (text around
        the answer, a missing think, with `strict` a score the prompt does not allow).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        found = self._tags(text)
        names = [m.group() for m in found]
        expected = ([self.think_open, self.think_close, self.answer_open, self.answer_close]
                    if mode == "think" else [self.answer_open, self.answer_close])
        if names != expected:
            # Not the format; the score may still be readable (text around it, no think).
            return self._score(self._content(text, found)), False
        opening, closing = found[-2], found[-1]
        body = self.score_body.fullmatch(text, opening.end(), closing.start())
        score = self._score(text[opening.end():closing.start()])
        if score is None:
            return None, False
        if strict and not (STRICT_SCORE.fullmatch(body.group("num")) and score <= SCORE_MAX):
            return score, False
        # Everything outside the tags and the think must be whitespace.
        if text[:found[0].start()].strip(_GAP) or text[closing.end():].strip(_GAP):
            return score, False
        if mode == "think":
            think = text[found[0].end():found[1].start()]
            between = text[found[1].end():opening.start()]
            return score, bool(think.strip()) and not between.strip(_GAP)
        return score, True

    def is_well_formed(self, text: str, mode: str, strict: bool = True) -> bool:
        """True when `text` is exactly one output of the given mode (see module docstring)."""
        return self.parse(text, mode, strict)[1]

    def is_single_answer(self, text: str) -> bool:
        """True when `text` is one answer block and nothing else but ASCII whitespace: no
        think tag anywhere (Stage-1's no-think format)."""
        found = self._tags(text)
        if [m.group() for m in found] != [self.answer_open, self.answer_close]:
            return False
        return not (text[:found[0].start()].strip(_GAP) or text[found[1].end():].strip(_GAP))


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
            if a == b:
                continue
            ta, tb = named[a], named[b]
            # The scan finds non-overlapping tags: a tag inside another, or one whose end
            # is another's start, could hide an occurrence and let a nested tag through.
            if ta in tb or any(ta.endswith(tb[:k]) for k in range(1, len(tb))):
                raise ValueError(f"prompts.tags.{a} ({ta!r}) overlaps prompts.tags.{b} "
                                 f"({tb!r}); the answer parsers need tags that neither "
                                 "contain nor overlap each other")
    tag_scan = re.compile("|".join(re.escape(named[k]) for k in blocks))
    score_body = re.compile(
        rf"\s*{re.escape(named['score_prefix'])}\s*(?P<num>{NUMBER})\s*", re.ASCII)
    return Grammar(**named, tag_scan=tag_scan, score_body=score_body)


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


def think_content(text: str, prompts: Any | None = None) -> str | None:
    """The text inside the single think block of `text`; None when there is not exactly
    one think_open and one think_close, in that order (the think-length metric reads it)."""
    return grammar(prompts).think_content(_check_text(text))


def think_span(text: str, prompts: Any | None = None) -> tuple[int, int] | None:
    """(start, end) character positions of the think block's text (think_content), or
    None; the think-length metric maps them to token positions."""
    return grammar(prompts).think_span(_check_text(text))


def score_prefix_end(text: str, prompts: Any | None = None) -> int | None:
    """The character position right after the score prefix ("Score:") inside the single
    answer block of `text`, or None (no single answer block, or no prefix in it). The PD
    reward and Eq. 8 teacher-force the ground-truth digits from there."""
    return grammar(prompts).score_prefix_end(_check_text(text))


def extract_score(text: str, prompts: Any | None = None) -> float | None:
    """The number inside `[answer]Score: x[/answer]`, or None.

    None when the output has no answer block or more than one, when the block holds
    anything but "Score:" and one ASCII number (whitespace aside), or when the number is not
    finite (hundreds of digits overflow to inf). The think part and text around the block
    are not looked at. Raises TypeError when `text` is not a str.
    """
    return grammar(prompts).score(_check_text(text))


def format_reward(text: str, mode: str, prompts: Any | None = None,
                  strict: bool = True) -> float:
    """1.0 when `text` is exactly the answer format of `mode`, else 0.0.

    mode "think": `[think]T[/think][answer]Score:x[/answer]` with T not blank;
    mode "no_think": `[answer]Score:x[/answer]`. Optional whitespace is accepted around
    "Score:" and the number, between the blocks and at the ends; anything else before,
    between or after, a nested or repeated tag, a missing part or a number that is not a
    finite ASCII decimal gives 0.0, and with `strict` (the default) so does a score other
    than one decimal in [0.0, 5.0] ("3.7" yes; "3", "3.45", "-0.5", "12.0" no). Raises
    ValueError for an unknown mode, TypeError when `text` is not a str.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return 1.0 if grammar(prompts).is_well_formed(_check_text(text), mode, strict) else 0.0
