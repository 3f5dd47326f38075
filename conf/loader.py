"""Configuration: `conf=NAME key.sub=value ...` -> one resolved, validated OmegaConf tree.

`conf/NAME.yaml` may list parents in `defaults: [...]` (merged left to right, the file
itself last). `conf/base.yaml` declares every key with its default; a key that base does
not declare is an error naming the closest valid key, so a typo never silently does
nothing. Overrides are typed by the value they replace: `train.lr=abc` fails, `train.lr=1`
becomes 1.0.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent
BASE_NAME = "base"
STAGES = (1, 2)   # 1 = Refine-Perception (no-think), 2 = scoring (think + PD)
# Keys whose value is one of a few of mixed types (the default's type alone cannot say).
UNIONS = {"run.resume": (True, False, "force")}


class ConfigError(ValueError):
    """A config that cannot be used; the message says what is wrong and what to do."""


def available_configs() -> list[str]:
    """Names of the configs a user can pick with `conf=NAME` (prompts is a fragment)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "prompts")


def _read_yaml(name: str, chain: tuple[str, ...] = ()) -> DictConfig:
    path = CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, available_configs(), n=1)
        hint = f" Did you mean conf={close[0]}?" if close else ""
        raise ConfigError(
            f"no config named '{name}' in {CONF_DIR}.{hint} "
            f"Available: {', '.join(available_configs())}."
        )
    if name in chain:
        raise ConfigError(f"config inheritance loops: {' -> '.join(chain + (name,))}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them, drop the stack
        raise ConfigError(f"cannot parse {path}: {exc}") from None
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


def _load_tree(name: str, chain: tuple[str, ...] = ()) -> DictConfig:
    """The file `name` merged over its parents, without validation against base."""
    node = _read_yaml(name, chain)
    parents = node.pop("defaults", [])
    if isinstance(parents, str):
        parents = [parents]
    merged = OmegaConf.create({})
    for parent in parents:
        merged = OmegaConf.merge(merged, _load_tree(str(parent), chain + (name,)))
    return OmegaConf.merge(merged, node)  # type: ignore[return-value]


def parse_overrides(items: list[str]) -> DictConfig:
    """`a.b=c` strings -> a config tree, values parsed as YAML (1e-5 is a float)."""
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"cannot read argument '{item}': overrides look like key.sub=value "
                "(see python launch.py --help)"
            )
    try:
        return OmegaConf.from_dotlist(items)
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides {items}: {exc}") from None


def load_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Load `conf/<name>.yaml` with its parents, apply overrides, validate, resolve.

    Every key must be declared in base.yaml; values take the type of base's default.
    Raises ConfigError with a one-line explanation on any problem.
    """
    schema = _load_tree(BASE_NAME)
    if name != BASE_NAME:
        tree = _load_tree(name)
        cfg = _merge_checked(schema, tree, f"conf/{name}.yaml (or its parents)")
    else:
        cfg = schema
    if overrides:
        cfg = _merge_checked(cfg, parse_overrides(overrides), "the command line")
    cfg.run.name = cfg.run.name or f"{name}-stage{cfg.stage}"
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(f"cannot resolve an interpolation: {exc}") from None
    OmegaConf.set_struct(cfg, True)  # later code reading a missing key fails loudly
    _check_values(cfg)
    return cfg


def _choices() -> dict[str, tuple]:
    """Each enumerated key and its allowed values, taken from the module that owns them
    (imported here, not at the top: conf sits below every other package)."""
    from learner.ds_config import LR_SCHEDULES, PRECISIONS, ZERO_STAGES
    from learner.loss import AGGREGATIONS
    from rewards import ADVANTAGE_MODES, CHOICE_MODES, PD_WEIGHT_SCHEMES, STD_KINDS
    from weight_sync.transport import TRANSPORTS

    return {
        "stage": STAGES,
        "reward.advantage": ADVANTAGE_MODES,
        "reward.adv_std": STD_KINDS,
        "reward.pd_weights": PD_WEIGHT_SCHEMES,
        "reward.choice_mode": CHOICE_MODES,
        "train.loss_agg": AGGREGATIONS,
        "train.precision": PRECISIONS,
        "train.lr_schedule": LR_SCHEDULES,
        "weights.transport": tuple(TRANSPORTS),
        "learner.zero_stage": ZERO_STAGES,
    }


def _check_values(cfg: DictConfig) -> None:
    """The few constraints a type cannot express."""
    for key, allowed in _choices().items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}' is {value!r}; choose one of {list(allowed)}")
    if len(cfg.reward.lambdas) != 3:
        raise ConfigError("'reward.lambdas' needs three weights: answer, format, PD (Eq. 5)")
    r = cfg.reward
    if r.adv_eps <= 0:
        raise ConfigError(f"'reward.adv_eps' is {r.adv_eps}; it must be > 0 (a group whose "
                          "rewards all tie has std 0)")
    push = r.adv_shift / r.adv_eps
    if r.advantage == "clipped_positive" and push > r.max_tied_push * (1 + 1e-9):
        raise ConfigError(
            f"reward.adv_shift / reward.adv_eps = {r.adv_shift:g} / {r.adv_eps:g} gives every "
            f"rollout of a tied, all-wrong group the advantage {-push:g} (Eq. 6 divides the "
            "shift by std + eps, and std is 0 when all rewards tie), more than "
            f"reward.max_tied_push={r.max_tied_push:g} allows. The paper prints shift 0.02 "
            "without eps; the authors' code uses 2e-5 with eps 1e-4. To run it anyway, set "
            f"reward.max_tied_push={push:g}")
    for key in ("rollout.n", "rollout.num_engines", "learner.num_learners", "train.batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"'{key}' must be at least 1")


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (the run directory keeps one beside checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg))
    return path
