"""Rewards of your own, added to Eq. 5's sum: `reward.plugins` and `reward.plugin_weights`.

A plug-in is a plain function named as `package.module:function` (importable from the
driver, e.g. a module in the directory you launch from or an installed package) or
`path/to/file.py:function` (a file, relative to the working directory):

    def brevity(sample: dict, completion: str, answer: float | str | None) -> float:
        '''Reward short thinks: 1 - think tokens / 64 (a made-up example).'''
        return max(0.0, 1.0 - len(completion.split()) / 64)

- `sample`: the manifest sample the rollout answers (id, images, task, mos / answer, ...);
- `completion`: the rollout's decoded text;
- `answer`: what the project's parser read from it: the score (a float) for Stage-2
  samples, the answer block's text for Stage-1 ones, None when there is none.

It returns a number; each rollout's final reward becomes Eq. 5 (or Stage-1's format + task
reward) plus `weight x value` for every plug-in. Values that are not finite numbers, or
lie beyond +-REWARD_LIMIT, are refused as the built-in rewards' are, naming the plug-in
and the sample. Each plug-in's mean over the step's rollouts is logged as
`reward/<function>/mean`. Plug-ins run in the driver, once per rollout; a slow one slows
every step.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewards.scoring import REWARD_LIMIT, finite_float

_SPEC = re.compile(r"^(?P<module>[^:\s]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class RewardPlugin:
    """A loaded plug-in: its name (the function's), its weight and the function."""

    name: str
    weight: float
    function: Callable[[dict, str, Any], float]


def _import(module: str, spec: str) -> Any:
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward.plugins: {spec!r}: no file {path}")
        name = f"refine_iqa_reward_plugin_{path.stem}"
        loader = importlib.util.spec_from_file_location(name, path)
        if loader is None or loader.loader is None:
            raise ValueError(f"reward.plugins: {spec!r}: {path} is not a Python module")
        mod = importlib.util.module_from_spec(loader)
        sys.modules[name] = mod
        loader.loader.exec_module(mod)
        return mod
    if not _DOTTED.match(module):
        raise ValueError(f"reward.plugins: {spec!r}: {module!r} is neither a dotted module "
                         "name nor a .py file")
    return importlib.import_module(module)


def load_plugin(spec: str, weight: float = 1.0) -> RewardPlugin:
    """The plug-in `spec` names ("package.module:function" or "file.py:function");
    ValueError, naming the spec, when it cannot be loaded or does not take
    (sample, completion, answer)."""
    if not isinstance(spec, str):
        raise ValueError(f"reward.plugins: each entry must be a string like "
                         f"'package.module:function', got {spec!r}")
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"reward.plugins: {spec!r} must look like 'package.module:function' "
                         "or 'path/to/file.py:function'")
    module_name, function = match["module"], match["function"]
    try:
        module = _import(module_name, spec)
    except ImportError as err:
        raise ValueError(f"reward.plugins: {spec!r}: cannot import {module_name} ({err}); "
                         "launch from the folder that holds it, or install it") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"reward.plugins: {spec!r}: {module_name} has no function {function}")
    try:
        inspect.signature(fn).bind(None, "", None)
    except TypeError:
        raise ValueError(f"reward.plugins: {spec!r}: {function} must take (sample, "
                         "completion, answer)") from None
    except ValueError:   # a builtin without a signature: checked at the first call
        pass
    return RewardPlugin(function, finite_float(weight, f"reward.plugin_weights[{spec}]"), fn)


def load_plugins(specs: Sequence[str], weights: Sequence[float] | None) -> list[RewardPlugin]:
    """Every configured plug-in, its weight from `weights` (None or empty: 1.0 each)."""
    specs = list(specs or [])
    weights = list(weights or [1.0] * len(specs))
    if len(weights) != len(specs):
        raise ValueError(f"reward.plugin_weights has {len(weights)} weights for "
                         f"{len(specs)} reward.plugins: give one per plug-in (or none)")
    plugins = [load_plugin(spec, w) for spec, w in zip(specs, weights)]
    names = [p.name for p in plugins]
    if len(set(names)) != len(names):
        raise ValueError(f"reward.plugins: two plug-ins share a function name ({names}); "
                         "their metrics reward/<function>/mean would collide")
    return plugins


def plugin_rewards(plugins: Sequence[RewardPlugin], samples: Sequence[dict],
                   texts: Sequence[Sequence[str]], answers: Sequence[Sequence[Any]]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sum of weight x value over the plug-ins [B, G], each plug-in's values [B, G]) for
    B samples of G rollouts; ValueError on a value that is not a finite number within
    +-REWARD_LIMIT, naming the plug-in, the sample and the rollout."""
    b, g = len(texts), len(texts[0]) if texts else 0
    total = np.zeros((b, g))
    each: dict[str, np.ndarray] = {}
    for plugin in plugins:
        values = np.zeros((b, g))
        for i, (sample, group) in enumerate(zip(samples, texts)):
            for j, text in enumerate(group):
                where = f"reward plug-in {plugin.name} on sample {sample.get('id')!r}, " \
                        f"rollout {j}"
                try:
                    value = finite_float(plugin.function(sample, text, answers[i][j]), where)
                except TypeError as err:
                    raise ValueError(f"{where}: must return a number ({err})") from None
                if abs(value) > REWARD_LIMIT:
                    raise ValueError(f"{where}: {value:g} lies beyond +-{REWARD_LIMIT:g}")
                values[i, j] = value
        each[plugin.name] = values
        total += plugin.weight * values
    return total, each
