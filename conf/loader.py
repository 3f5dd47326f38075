"""Configuration: `conf=NAME|PATH key.sub=value ...` -> one resolved, validated OmegaConf tree.

Which file a reference names:
- a NAME (no .yaml/.yml suffix, no "/"): `conf/NAME.yaml`, the configs this package ships;
  inside a file that lives elsewhere, a sibling NAME.yaml of that file comes first (so a
  folder of experiments can share its own parent);
- a PATH (a .yaml/.yml suffix or a "/"): that file, relative to the working directory on
  the command line, relative to the referring file's folder inside a `defaults` list.

A file may list parents in `defaults: [...]` (merged left to right, the file itself
last). `conf/base.yaml` declares every key with its default; a key that base does not
declare is an error naming the file and the closest valid key, so a typo never silently
does nothing. Overrides are typed by the value they replace: `train.lr=abc` fails,
`train.lr=1` becomes 1.0. `load_config_with_sources` also returns the files merged, in
order, which the run directory's config.yaml records.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from conf.choices import CHOICES, LIST_CHOICES, RENAMED

CONF_DIR = Path(__file__).resolve().parent
BASE_NAME = "base"
# Keys whose value is one of a few of mixed types (the default's type alone cannot say).
UNIONS = {"run.resume": (True, False, "force")}


class ConfigError(ValueError):
    """A config that cannot be used; the message says what is wrong and what to do."""


def _one_line(exc: BaseException) -> str:
    # A YAML parser's message spans lines (a caret under the column): one line is read.
    return " ".join(str(exc).split())


def available_configs() -> list[str]:
    """Names of the configs a user can pick with `conf=NAME` (prompts is a fragment)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "prompts")


def _is_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref


def config_file(ref: str, referrer: Path | None = None) -> Path:
    """The file a config reference names (module docstring); `referrer` is the file whose
    `defaults` list holds it (None: the command line). ConfigError when there is none."""
    if _is_path(ref):
        base = referrer.parent if referrer is not None else Path.cwd()
        path = (base / Path(ref).expanduser()).resolve()
        if path.is_file():
            return path
        stem = Path(ref).stem
        hint = (f" To use the packaged config, write conf={stem}."
                if referrer is None and "/" not in ref and stem in available_configs() else "")
        where = f" (from {referrer})" if referrer is not None else ""
        raise ConfigError(f"no config file {path}{where}.{hint}")
    if referrer is not None and referrer.parent != CONF_DIR:
        sibling = referrer.parent / f"{ref}.yaml"
        if sibling.is_file():
            return sibling.resolve()
    packaged = CONF_DIR / f"{ref}.yaml"
    if packaged.is_file():
        return packaged
    close = difflib.get_close_matches(ref, available_configs(), n=1)
    hint = f" Did you mean conf={close[0]}?" if close else ""
    where = f" (named in {referrer})" if referrer is not None else ""
    raise ConfigError(f"no config named '{ref}' in {CONF_DIR}{where}.{hint} Available: "
                      f"{', '.join(available_configs())}; or give a file's path, "
                      "e.g. conf=experiments/mine.yaml.")


def _read_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them, drop the stack
        raise ConfigError(f"cannot parse {path}: {_one_line(exc)}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at its top level")
    return node


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node:
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node._get_node(k), full + "."))
    return keys


def _check_known(schema: DictConfig, update: DictConfig, source: str, prefix: str = "") -> None:
    """Raise ConfigError for a key of `update` that `schema` does not declare."""
    for key in update:
        full = f"{prefix}{key}"
        if key not in schema:
            if full in RENAMED:
                raise ConfigError(f"'{full}' in {source} is gone: write {RENAMED[full]}")
            valid = _all_keys(schema, prefix)
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{full}' in {source}.{hint}")
        sub_schema, sub_update = schema._get_node(key), update._get_node(key)
        if isinstance(sub_schema, DictConfig) and isinstance(sub_update, DictConfig):
            _check_known(sub_schema, sub_update, source, full + ".")
        elif (isinstance(sub_schema, DictConfig) != isinstance(sub_update, DictConfig)
              and not sub_schema._is_none() and not sub_update._is_none()):
            shape = "a mapping" if isinstance(sub_schema, DictConfig) else "a single value"
            raise ConfigError(f"'{full}' in {source} must be {shape}")


def _coerce(full: str, default: Any, value: Any, source: str) -> Any:
    """Give `value` the type of `default` (None in base means: any type)."""
    if default is None or value is None:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool) and isinstance(value, bool):
        return value
    if isinstance(default, float) and is_number:
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and is_number \
            and float(value).is_integer():
        return int(value)
    if isinstance(default, str) and (is_number or isinstance(value, str)):
        return str(value)
    if isinstance(default, (list, ListConfig)) and isinstance(value, (list, ListConfig)):
        return value
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), "a list")
    raise ConfigError(f"'{full}' in {source} must be {kind} (like {default!r}), got {value!r}")


def _typed(schema: DictConfig, update: DictConfig, source: str, prefix: str = "") -> None:
    for key in list(update):
        full = f"{prefix}{key}"
        sub_schema = schema._get_node(key)
        if isinstance(sub_schema, DictConfig):
            sub_update = update._get_node(key)
            if isinstance(sub_update, DictConfig):
                _typed(sub_schema, sub_update, source, full + ".")
            continue
        default = OmegaConf.to_container(sub_schema) if isinstance(sub_schema, ListConfig) else schema[key]
        raw = update[key]
        raw = OmegaConf.to_container(raw) if isinstance(raw, ListConfig) else raw
        if full in UNIONS:
            if not any(raw == v and type(raw) is type(v) for v in UNIONS[full]):
                raise ConfigError(f"'{full}' in {source} must be one of "
                                  f"{list(UNIONS[full])}, got {raw!r}")
            continue
        update[key] = _coerce(full, default, raw, source)


def _merge_checked(schema: DictConfig, update: DictConfig, source: str) -> DictConfig:
    _check_known(schema, update, source)
    _typed(schema, update, source)
    return OmegaConf.merge(schema, update)  # type: ignore[return-value]


def _load_tree(path: Path, sources: list[Path], chain: tuple[Path, ...] = ()) -> DictConfig:
    """The file at `path` merged over its parents, without validation against base; the
    files merged are appended to `sources`, parents first."""
    if path in chain:
        raise ConfigError("config inheritance loops: "
                          f"{' -> '.join(str(p) for p in chain + (path,))}")
    node = _read_yaml(path)
    parents = node.pop("defaults", [])
    if isinstance(parents, str):
        parents = [parents]
    merged = OmegaConf.create({})
    for parent in parents:
        parent_path = config_file(str(parent), referrer=path)
        merged = OmegaConf.merge(merged, _load_tree(parent_path, sources, chain + (path,)))
    sources.append(path)
    return OmegaConf.merge(merged, node)  # type: ignore[return-value]


def parse_overrides(items: list[str]) -> DictConfig:
    """`a.b=c` strings -> a config tree, values parsed as YAML (1e-5 is a float)."""
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"cannot read argument '{item}': overrides look like key.sub=value "
                "(see python launch.py --help)"
            )
        key, value = item.split("=", 1)
        if not value.strip():
            # YAML reads an empty value as null, so `data.train_manifest=$UNSET` would
            # silently mean "the default" (for that key: the embedded mini dataset).
            raise ConfigError(f"'{key}' is given no value ('{item}': an unset shell "
                              f"variable?); give one, or write {key}=null for the default")
    try:
        return OmegaConf.from_dotlist(items)
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides {items}: {_one_line(exc)}") from None


def load_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Load the config `name` (a NAME or a PATH, module docstring) with its parents, apply
    overrides, validate, resolve.

    Every key must be declared in base.yaml; values take the type of base's default.
    Raises ConfigError with a one-line explanation on any problem.
    """
    return load_config_with_sources(name, overrides)[0]


def load_config_with_sources(name: str, overrides: list[str] | None = None
                             ) -> tuple[DictConfig, list[Path]]:
    """`load_config`, and the files it merged, in merge order (base first, `name` last)."""
    base = CONF_DIR / f"{BASE_NAME}.yaml"
    sources: list[Path] = []
    schema = _load_tree(base, sources)
    path = config_file(name)
    if path != base:
        tree = _load_tree(path, sources)
        cfg = _merge_checked(schema, tree, f"{path} (or its parents)")
    else:
        cfg = schema
    if overrides:
        cfg = _merge_checked(cfg, parse_overrides(overrides), "the command line")
    if isinstance(cfg.run.name, int | float) and not isinstance(cfg.run.name, bool):
        cfg.run.name = str(cfg.run.name)   # run.name=123 means the folder "123"
    cfg.run.name = cfg.run.name or f"{path.stem}-stage{cfg.stage}"
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(f"cannot resolve an interpolation: {exc}") from None
    OmegaConf.set_struct(cfg, True)  # later code reading a missing key fails loudly
    _check_values(cfg)
    return cfg, list(dict.fromkeys(sources))


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _above(low: float) -> Callable[[Any], bool]:
    return lambda v: v > low


def _null_or_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: v is None or v >= low


def _null_or_count(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


# Numeric keys and the values they may take (every number must also be finite); checked
# before anything starts, so a bad value is one line, not a traceback mid-run.
RANGES: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("run.seed", ">= 0", _at_least(0)),
    ("model.min_pixels", ">= 784 (28 x 28)", _at_least(784)),
    ("model.max_pixels", ">= 784 (28 x 28)", _at_least(784)),
    ("rollout.num_engines", ">= 1", _at_least(1)),
    ("rollout.num_cpus_per_engine", ">= 0", _at_least(0)),
    ("rollout.num_gpus_per_engine", ">= 0", _at_least(0)),
    ("rollout.tensor_parallel_size", ">= 1", _at_least(1)),
    ("rollout.max_model_len", ">= 1", _at_least(1)),
    ("rollout.kv_cache_gib", ">= 1", _at_least(1)),
    ("rollout.gpu_memory_utilization", "in (0, 1]", lambda v: 0 < v <= 1),
    ("rollout.n", ">= 2 (GRPO's advantages compare the rollouts of one prompt)",
     _at_least(2)),
    ("rollout.temperature", ">= 0", _at_least(0)),
    ("rollout.top_p", "in (0, 1]", lambda v: 0 < v <= 1),
    ("rollout.max_new_tokens", ">= 1", _at_least(1)),
    ("scoring.num_cpus", ">= 0", _at_least(0)),
    ("scoring.num_gpus", ">= 0", _at_least(0)),
    ("reward.eps", "> 0", _above(0)),
    ("reward.lambdas", "three weights >= 0", lambda v: all(x >= 0 for x in v)),
    ("reward.pd_digits", "in 1..17", lambda v: 1 <= v <= 17),
    ("reward.adv_shift", ">= 0", _at_least(0)),
    ("reward.adv_eps", "> 0 (a group whose rewards all tie has std 0)", _above(0)),
    ("reward.max_tied_push", "> 0", _above(0)),
    ("reward.ranking_weight", ">= 0", _at_least(0)),
    ("train.epochs", ">= 1", _at_least(1)),
    ("train.max_steps", "null or >= 1", _null_or_at_least(1)),
    ("train.batch_size", ">= 1", _at_least(1)),
    ("train.lr", "> 0", _above(0)),
    ("train.warmup_ratio", "in [0, 1)", lambda v: 0 <= v < 1),
    ("train.weight_decay", ">= 0", _at_least(0)),
    ("train.grad_accum", ">= 1", _at_least(1)),
    ("train.grad_clip", "> 0", _above(0)),
    ("train.clip_eps", "> 0", _above(0)),
    ("train.kl_coef", ">= 0", _at_least(0)),
    ("train.micro_batch_size", ">= 1", _at_least(1)),
    ("learner.num_learners", ">= 1", _at_least(1)),
    ("learner.num_cpus", ">= 0", _at_least(0)),
    ("learner.num_gpus", ">= 0", _at_least(0)),
    ("lora.rank", "in 0..512 (0: full fine-tuning)", lambda v: 0 <= v <= 512),
    ("lora.alpha", "> 0", _above(0)),
    ("lora.dropout", "in [0, 1)", lambda v: 0 <= v < 1),
    ("weights.bucket_mb", "> 0", _above(0)),
    ("weights.timeout_s", "> 0", _above(0)),
    ("placement.learner_nodes", ">= 1", _at_least(1)),
    ("placement.rollout_nodes", ">= 1", _at_least(1)),
    ("checkpoint.every", ">= 0 (0: only after the last step)", _at_least(0)),
    ("checkpoint.keep_last", ">= 0 (0: keep all)", _at_least(0)),
    ("eval.every", ">= 0 (0: only before the first and after the last step)", _at_least(0)),
    ("eval.max_samples", "null or >= 1", _null_or_at_least(1)),
    ("eval.nothink_acc_every", ">= 0 (0: never)", _at_least(0)),
    ("logging.rollouts_per_step", ">= 0", _at_least(0)),
    ("data.val_fraction", "in [0, 1)", lambda v: 0 <= v < 1),
    ("data.mos_range", "null or [low, high] with low < high",
     lambda v: v is None or (len(v) == 2 and v[0] < v[1])),
    ("logging.think_collapse_fraction", "in [0, 1]", lambda v: 0 <= v <= 1),
    ("ray.num_cpus", "null (Ray's default) or a whole number >= 1", _null_or_count),
]


def _shown(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)


def _check_values(cfg: DictConfig) -> None:
    """The few constraints a type cannot express."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}' is {value!r}; choose one of {list(allowed)}")
    for key, allowed in LIST_CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, ListConfig):   # null, or one word where a list belongs
            raise ConfigError(f"'{key}' is {_shown(value)}; it must be a list of some of "
                              f"{list(allowed)}")
        values = list(value)
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) != len(values):
            raise ConfigError(f"'{key}' is {values!r}; list each of {list(allowed)} at most "
                              "once")
    if "tensorboard" in cfg.logging.backends and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logging.backends lists tensorboard, which is not installed: pip "
                          "install '.[tensorboard]', or drop it from the list")
    lambdas = cfg.reward.lambdas
    if not isinstance(lambdas, ListConfig) or len(lambdas) != 3:
        raise ConfigError(f"'reward.lambdas' is {_shown(lambdas)}; it needs three weights: "
                          "answer, format, PD (Eq. 5)")
    for key, allowed, ok in RANGES:
        value = OmegaConf.select(cfg, key)
        values = list(value) if isinstance(value, ListConfig) else [value]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        try:
            fits = all(math.isfinite(v) for v in numbers) and ok(value)
        except TypeError:   # null (or text) where a number must be: train.batch_size=null
            fits = False
        if not fits:
            raise ConfigError(f"'{key}' is {_shown(value)}; it must be {allowed}")
    if cfg.rollout.max_model_len <= cfg.rollout.max_new_tokens:
        raise ConfigError(
            f"'rollout.max_model_len' is {cfg.rollout.max_model_len}; it must hold the prompt "
            f"(its images and question) and rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens} answer tokens: raise it (every sample's prompt "
            "is measured against it before the run starts)")
    r = cfg.reward
    push = r.adv_shift / r.adv_eps
    if r.advantage == "clipped_positive" and push > r.max_tied_push * (1 + 1e-9):
        raise ConfigError(
            f"reward.adv_shift / reward.adv_eps = {r.adv_shift:g} / {r.adv_eps:g} gives every "
            f"rollout of a tied, all-wrong group the advantage {-push:g} (Eq. 6 divides the "
            "shift by std + eps, and std is 0 when all rewards tie), more than "
            f"reward.max_tied_push={r.max_tied_push:g} allows. The paper prints shift 0.02 "
            "without eps; the authors' code uses 2e-5 with eps 1e-4. To run it anyway, set "
            f"reward.max_tied_push={push:g}")
    if cfg.train.async_rollout and cfg.learner.recompute_old_logprobs:
        raise ConfigError(
            "train.async_rollout=true writes each step's rollouts with the weights of the "
            "step before, so the policy ratio must be taken against the sampling policy's "
            "logprobs (vLLM's); learner.recompute_old_logprobs=true would take it against "
            "the learner's current weights. Set one of them to false")
    if cfg.train.async_rollout and cfg.placement.colocate:
        raise ConfigError("train.async_rollout=true generates during the update, but "
                          "placement.colocate=true puts the engines to sleep then: set one "
                          "of them to false")
    shared = {k: v for k, v in weights_group_gpus(cfg).items() if v < 1}
    if cfg.weights.transport == "collective" and cfg.weights.backend == "nccl" and shared:
        raise ConfigError(
            f"weights.backend=nccl needs a whole GPU for every member of the weights group, "
            f"but {', '.join(f'{k}={v:g}' for k, v in shared.items())}: a fraction may share "
            "a GPU with another member, which NCCL refuses. Give each a GPU, or "
            "weights.backend=auto (gloo then)")
    if cfg.lora.rank > 0 and not all(isinstance(m, str) and m.isidentifier()
                                     for m in cfg.lora.target_modules):
        raise ConfigError(f"'lora.target_modules' is {list(cfg.lora.target_modules)!r}; it "
                          "must list module names such as q_proj, v_proj")
    name = cfg.run.name
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        raise ConfigError(f"'run.name' is {name!r}; it must be a folder name (text without "
                          "'/'), e.g. run.name=try1")


def weights_group_gpus(cfg: Any) -> dict[str, float]:
    """The GPUs each member of the collective weights group asks for, by conf key: learner
    rank 0, the engines and, in Stage-2, the scorer."""
    gpus = {"learner.num_gpus": cfg["learner"]["num_gpus"],
            "rollout.num_gpus_per_engine": cfg["rollout"]["num_gpus_per_engine"]}
    if cfg["stage"] == 2:
        gpus["scoring.num_gpus"] = cfg["scoring"]["num_gpus"]
    return gpus


def save_config(cfg: DictConfig, path: str | Path, sources: list[Path] | None = None,
                overrides: list[str] | None = None) -> Path:
    """Write the resolved config as YAML (the run directory keeps one beside checkpoints),
    headed by comments naming the files merged, in order, and the command-line overrides."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [f"# merged from: {p}" for p in sources or []]
    if overrides:
        head.append(f"# overrides: {' '.join(overrides)}")
    path.write_text("".join(line + "\n" for line in head) + OmegaConf.to_yaml(cfg))
    return path
