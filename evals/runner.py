"""The one skeleton of the evaluation commands (evals.scoring_eval, evals.perception_eval,
evals.qbench, evals.score).

Each command declares only its own parts as an `EvalCommand` (its arguments, how to read
and check its input, which actors it needs, the evaluation, what it prints); `run` does
the rest, in this order:

1. parse the command line: the command's own arguments, then the engine arguments every
   command shares (`add_engine_args`);
2. read and check the input, load the config and resolve `--model`, before any engine
   starts: a missing file or a bad manifest is a usage error (exit status 2) that costs
   no Ray start-up;
3. start the actors (EvalEngines.start), run the evaluation, stop the actors whatever
   happens; a cluster too small for them (cluster.resources.ResourceError) is one line on
   stderr and exit status 1;
4. print what the command shows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.engines import EvalEngines


@dataclass(frozen=True)
class Actors:
    """The actors an evaluation needs: rollout engines (answers), the scoring actor (Eq. 8)."""

    engines: bool = True
    scorer: bool = False


@dataclass
class Prepared:
    """What `run` hands the evaluation: the arguments, the checked input (what
    `EvalCommand.read_input` returned), the loaded config and the resolved model."""

    args: argparse.Namespace
    data: Any
    cfg: Any
    model: str

    @property
    def meta(self) -> dict[str, Any]:
        """The settings every report records."""
        return {"model": self.model, "conf": self.args.conf}


def _engines_only(args: argparse.Namespace) -> Actors:
    return Actors()


def _logs_to_driver(args: argparse.Namespace) -> bool:
    return True


@dataclass(frozen=True)
class EvalCommand:
    """One evaluation command's own parts (see the module docstring for the order).

    doc: the module docstring; its first paragraph is the description, the rest the
    epilog of `--help`. read_input raises FileNotFoundError / ValueError for bad input.
    log_to_driver False keeps the actors' logs off stdout (for machine-read output).
    """

    prog: str
    doc: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    read_input: Callable[[argparse.Namespace], Any]
    evaluate: Callable[[EvalEngines, Prepared], Any]
    show: Callable[[argparse.Namespace, Any], None]
    actors: Callable[[argparse.Namespace], Actors] = _engines_only
    log_to_driver: Callable[[argparse.Namespace], bool] = _logs_to_driver


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


def build_parser(command: EvalCommand) -> argparse.ArgumentParser:
    """The command's parser: its own arguments, then the shared engine arguments."""
    head, _, rest = command.doc.partition("\n\n")
    parser = argparse.ArgumentParser(prog=command.prog, description=head, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    add_engine_args(parser)
    return parser


def prepare(command: EvalCommand, argv: list[str] | None = None) -> Prepared:
    """Steps 1 and 2: parse, check the input, load the config, resolve the model; bad
    input exits with a usage error (argparse's exit status 2)."""
    from learner.checkpoint import resolve_model_path

    parser = build_parser(command)
    args = parser.parse_intermixed_args(argv)
    try:
        data = command.read_input(args)
        cfg = config_from_args(args)
        model = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    return Prepared(args, data, cfg, model)


def run(command: EvalCommand, argv: list[str] | None = None) -> int:
    """Run one evaluation command (module docstring); returns the exit status."""
    from cluster.resources import ResourceError

    prepared = prepare(command, argv)
    args = prepared.args
    needs = command.actors(args)
    try:
        engines = EvalEngines.start(prepared.cfg, prepared.model, engines=needs.engines,
                                    scorer=needs.scorer, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size,
                                    log_to_driver=command.log_to_driver(args))
    except ResourceError as err:
        print(f"{command.prog}: error: {err}", file=sys.stderr)
        return 1
    try:
        result = command.evaluate(engines, prepared)
    finally:
        engines.shutdown()
    command.show(args, result)
    return 0


def print_reports(out_dir: str | Path, summary: str) -> None:
    """Print the report's results.md, then where the reports are and `summary`."""
    print(Path(out_dir, "results.md").read_text(encoding="utf-8"))
    print(f"reports written to {out_dir} ({summary})")
