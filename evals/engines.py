"""The model side of every evaluation: the project's rollout engines and scoring actor.

Evaluations run the model exactly as training does: `actors.EngineGroup` (vLLM rollout
engines, prompts built by actors.prompting) for the answers, and `actors.ScoringActor`
for the digit distribution of Eq. 8. Decoding is greedy (temperature 0, one answer per
sample), as the paper evaluates ("model.generate() with greedy search").

`EvalEngines.start(cfg, model)` starts them from a loaded config (conf/*.yaml: engine
sizes, pixel limits, prompts) in the Ray cluster of `ray.address` or a local one;
`EvalEngines(group, scorer)` wraps engines someone already started (tests start them
once per module and run several evaluations on them).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

GREEDY = {"temperature": 0.0, "top_p": 1.0}
MODE_CHOICES = {"think": ("think",), "no_think": ("no_think",), "both": ("no_think", "think")}


RUN_EXPORT = "export"   # launch.py writes a finished run's model to <run dir>/export


def resolve_eval_model(cfg: Any) -> str:
    """The model to evaluate, from `cfg.model.path`:

    - "tiny": the embedded model exactly as training uses it (synth.cold_start: built on
      the spot and warmed up on the answer format);
    - a model directory (config.json), a checkpoint (step_*/ with hf/), or a run directory
      (its export/ when the run finished, else its newest complete checkpoint);
    - a Hugging Face hub id such as Qwen/Qwen2.5-VL-7B-Instruct.
    """
    from learner.checkpoint import CHECKPOINTS, HF_DIR, newest_complete

    path = str(cfg.model.path)
    if path == "tiny":
        from synth.cold_start import embedded_model

        return str(embedded_model(cfg.model.cache_dir))
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"model {path!r} does not exist (give a model directory, "
                                    "a checkpoint, a run directory, 'tiny' or a hub id)")
        return path
    for candidate in (p, p / HF_DIR, p / RUN_EXPORT):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if (p / CHECKPOINTS).is_dir():
        newest = newest_complete(p / CHECKPOINTS)
        if newest is None:
            raise FileNotFoundError(f"run directory {p} has no complete checkpoint yet")
        return str(newest / HF_DIR)
    raise FileNotFoundError(f"{p} is neither a model directory (config.json), a checkpoint "
                            f"({HF_DIR}/config.json) nor a run directory ({RUN_EXPORT}/ or "
                            f"{CHECKPOINTS}/)")


def load_samples(manifest: str | Path, tasks: tuple[str, ...]) -> list[dict]:
    """The manifest's samples of the given tasks, image paths made absolute.

    Raises ValueError when the manifest holds samples of other tasks (a Stage-1 manifest
    given to the scoring evaluation, say) or none of the wanted ones.
    """
    from synth.manifest import read_manifest, resolve_images

    samples = read_manifest(manifest)
    others = sorted({s["task"] for s in samples} - set(tasks))
    if others:
        raise ValueError(f"{manifest}: holds {others} samples; this evaluation reads only "
                         f"{list(tasks)} (pick the matching manifest)")
    if not samples:
        raise ValueError(f"{manifest}: no samples")
    for s in samples:
        s["images"] = [str(p) for p in resolve_images(s, manifest)]
    return samples


def dataset_name(manifest: str | Path, samples: list[dict]) -> str:
    """The samples' common `source` (e.g. "koniq10k"), else the manifest's file name."""
    sources = {s.get("source") for s in samples}
    return sources.pop() if len(sources) == 1 and None not in sources else Path(manifest).stem


@dataclass
class Generation:
    """The greedy answer to one sample."""

    text: str
    finish_reason: str
    num_tokens: int


def ensure_ray(cfg: Any, log_to_driver: bool = True) -> None:
    """Join Ray as training does (actors.cluster.connect): `ray.address`, else the cluster
    this job was submitted to (RAY_ADDRESS), else a new local cluster."""
    from actors.cluster import connect

    connect(cfg, log_to_driver=log_to_driver)


def check_resources(cfg: Any, need_scorer: bool, need_group: bool = True) -> None:
    """Fail at once, with what to change, when the cluster cannot place the actors
    (Ray would otherwise wait for the resources forever)."""
    import ray

    have = ray.cluster_resources()
    r = cfg.rollout
    engines = r.num_engines if need_group else 0
    cpus = engines * r.num_cpus_per_engine + (cfg.scoring.num_cpus if need_scorer else 0)
    gpus = engines * r.num_gpus_per_engine + (cfg.scoring.num_gpus if need_scorer else 0)
    if gpus > have.get("GPU", 0):
        raise RuntimeError(
            f"the config asks for {gpus:g} GPU(s) (rollout.num_gpus_per_engine, scoring.num_gpus)"
            f" but the Ray cluster has {have.get('GPU', 0):g}; on a CPU machine use "
            "--conf tiny or set rollout.num_gpus_per_engine=0 scoring.num_gpus=0")
    if cpus > have.get("CPU", 0):
        raise RuntimeError(
            f"the config asks for {cpus:g} CPU(s) but the Ray cluster has "
            f"{have.get('CPU', 0):g}; lower rollout.num_cpus_per_engine / scoring.num_cpus or "
            "start Ray with more logical CPUs (ray.num_cpus=...)")


class EvalEngines:
    """Greedy answers (EngineGroup) and Eq. 8 digit distributions (ScoringActor)."""

    def __init__(self, group: Any, scorer: Any = None, max_new_tokens: int = 1024,
                 batch_size: int = 16, owned: bool = False):
        self.group = group
        self.scorer = scorer
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.owned = owned

    @classmethod
    def start(cls, cfg: Any, model_path: str, need_scorer: bool,
              max_new_tokens: int | None = None, batch_size: int = 16,
              need_group: bool = True, log_to_driver: bool = True) -> EvalEngines:
        """Start the rollout engines (unless `need_group` is False: only Eq. 8 in the
        no-think mode, which reads a fixed prefix) and the scoring actor (`need_scorer`)."""
        import ray

        from actors import EngineGroup, settings_from_config, start_scoring_actor

        if not (need_group or need_scorer):
            raise ValueError("nothing to start: need_group and need_scorer are both False")
        ensure_ray(cfg, log_to_driver)
        check_resources(cfg, need_scorer, need_group)
        group = None
        if need_group:
            group = EngineGroup.from_config(cfg, settings_from_config(cfg, model_path,
                                                                      "rollout"))
        scorer = None
        if need_scorer:
            scorer = start_scoring_actor(settings_from_config(cfg, model_path, "scoring"),
                                         cfg.scoring.num_cpus, cfg.scoring.num_gpus,
                                         pd_digits=cfg.reward.pd_digits,
                                         cpu_slot=cfg.rollout.num_engines)
            ray.get(scorer.ready.remote(), timeout=900)
        return cls(group, scorer, max_new_tokens or cfg.rollout.max_new_tokens, batch_size,
                   owned=True)

    def _batches(self, n: int, desc: str):
        bar = tqdm(total=n, desc=desc, unit="img", leave=False)
        for start in range(0, n, self.batch_size):
            end = min(n, start + self.batch_size)
            yield start, end
            bar.update(end - start)
        bar.close()

    def generate(self, samples: list[dict], mode: str, desc: str = "generate") -> list[Generation]:
        """One greedy answer per sample, in order."""
        if self.group is None:
            raise RuntimeError("answers need the rollout engines; start EvalEngines with "
                               "need_group=True")
        sampling = {**GREEDY, "max_new_tokens": self.max_new_tokens}
        out: list[Generation] = []
        for start, end in self._batches(len(samples), desc):
            for pr in self.group.generate(samples[start:end], mode, 1, sampling):
                r = pr.rollouts[0]
                out.append(Generation(r.text, r.finish_reason, len(r.token_ids)))
        return out

    def digit_probs(self, samples: list[dict], mode: str, texts: list[str] | None = None,
                    desc: str = "digits") -> list[list[float] | None]:
        """p("0") .. p("9") at the integer position of each answer (None: no score prefix
        in the think answer). no_think: after the fixed prefix "[answer]Score:"; think:
        after the model's own text up to its score prefix."""
        import ray

        if self.scorer is None:
            raise RuntimeError("probability-based inference needs the scoring actor; start "
                               "EvalEngines with need_scorer=True")
        out: list[list[float] | None] = []
        for start, end in self._batches(len(samples), desc):
            chunk_texts = None if texts is None else texts[start:end]
            out += ray.get(self.scorer.digit_distribution.remote(samples[start:end], mode,
                                                                 chunk_texts))
        return out

    def shutdown(self) -> None:
        """Stop the actors this object started (not ones it was handed)."""
        if not self.owned:
            return
        import ray

        if self.group is not None:
            self.group.shutdown()
        if self.scorer is not None:
            ray.kill(self.scorer, no_restart=True)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every model-running evaluation shares."""
    parser.add_argument("--model", required=True,
                        help="model directory, checkpoint (step_*/), run directory (newest "
                             "checkpoint), a hub id, or 'tiny' (the embedded model)")
    parser.add_argument("--conf", default="base",
                        help="config whose engine / pixel / prompt settings to use "
                             "(default base; 'tiny' on a CPU-only machine)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length limit (default: the config's "
                             "rollout.max_new_tokens)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="samples per engine call (progress is reported per call)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. rollout.num_engines=2 model.max_pixels=401408")


def config_from_args(args: argparse.Namespace) -> Any:
    """The loaded config of `--conf` with the overrides, `model.path` set to `--model`."""
    from conf import load_config

    return load_config(args.conf, list(args.overrides) + [f"model.path={args.model}"])
