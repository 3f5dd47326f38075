"""`make gpu-smoke`: the GPU path end to end on the embedded tiny model, in minutes.

On a machine with CUDA GPUs and the project installed with `EXTRA=gpu`, it runs short
real training runs through `launch.py` (no download: the tiny model is built on the spot
the first time, then cached) and prints a PASS / FAIL / SKIP table, also written as JSON:

- environment   CUDA, GPU count and name, vLLM / DeepSpeed versions, the CPU Adam toolchain
- stage2        conf=tiny on one GPU shared by fractions: bf16 vLLM engine with CUDA graphs
                (the model runner vLLM picks), PD digits through the scoring actor, a
                DeepSpeed ZeRO-3 step with CPU offload (CPU Adam), object-store pushes, two
                steps, checkpoint and export
- logprob gap   actor/ppo_kl at step 2 of that run: the learner's bf16 logprobs against
                vLLM's after a push (PASS below GAP_LIMIT, a judgment: bf16 noise)
- export        the run's export loaded by a fresh vLLM, one greedy answer
- collective    weights.transport=collective over NCCL (needs 3 GPUs: NCCL refuses two ranks
                of one group on one GPU, so learner, engine and scorer each take one), the
                engine's vLLM worker a member itself: two pushes over one group
                (events/weight_groups 1); `--cpu` runs it over gloo
- colocate      conf=tiny_stage1 with placement.colocate=true on one GPU: vLLM sleep mode
                and the learner beside the engine

`--cpu` runs the same harness with the CPU settings (the CUDA-only rows skip): it checks
the script itself on a machine without a GPU.

Usage: python scripts/gpu_smoke.py [--cpu] [--out DIR] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run as a file: the project's packages sit beside scripts/

from driver import metrics as M  # noqa: E402 - after the path it needs
from driver.plots import read_metrics  # noqa: E402

GAP_LIMIT = 0.01   # the PPO KL between learner and vLLM in bf16 (fp32 agrees to ~1e-6)
ONE_GPU = ["rollout.num_gpus_per_engine=0.3", "scoring.num_gpus=0.2", "learner.num_gpus=0.5",
           "rollout.gpu_memory_utilization=0.25", "rollout.dtype=bfloat16",
           "train.precision=bf16", "rollout.enforce_eager=false",
           "rollout.multiprocessing=true", "learner.zero_stage=3", "learner.offload=true"]
SHORT = ["train.max_steps=2", "checkpoint.every=2", "eval.every=0", "eval.max_samples=8",
         "eval.final_test=false", "ray.dashboard=false"]


def launch(name: str, overrides: list[str], out: Path, timeout_s: float) -> tuple[bool, str]:
    """Run launch.py; (ok, the last lines of its output when it failed)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "launch.py", *overrides, *SHORT, f"run.output_dir={out}",
           f"run.name={name}"]
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"did not finish within {timeout_s:.0f} s"
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    return done.returncode == 0, "\n".join((done.stdout + done.stderr).splitlines()[-5:])


def metrics(run: Path) -> list[dict]:
    """The run's metrics.jsonl records; none when the run never wrote one."""
    path = run / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def environment(cpu: bool) -> tuple[str, str]:
    import torch

    parts = [f"torch {torch.__version__}"]
    for name in ("vllm", "deepspeed"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except Exception as err:   # noqa: BLE001 - reported in the row
            return "FAIL", f"{name} does not import: {err}"
    tools = subprocess.run([sys.executable, "scripts/build_cpu_adam.py", "--check"],
                           cwd=REPO, capture_output=True, text=True)
    parts.append("CPU Adam toolchain " + ("ok" if tools.returncode == 0 else "MISSING"))
    if cpu:
        return "PASS", ", ".join(parts)
    if not torch.cuda.is_available():
        return "FAIL", "no CUDA GPU visible (torch.cuda.is_available() is False)"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    parts.insert(0, f"{torch.cuda.device_count()} x {', '.join(sorted(names))}")
    return ("PASS" if tools.returncode == 0 else "FAIL"), ", ".join(parts)


def export_answers(export: Path, cpu: bool, timeout_s: float) -> tuple[str, str]:
    """A fresh vLLM loads the export and answers one text prompt greedily."""
    code = ("import sys\nfrom vllm import LLM, SamplingParams\n"
            f"llm = LLM(model={str(export)!r}, dtype={'float32' if cpu else 'bfloat16'!r}, "
            # on CPU the same flag is the share of host memory vLLM reserves (0.92 by default)
            "max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.3)\n"
            "out = llm.generate(['Rate the image quality:'], "
            "SamplingParams(max_tokens=8, temperature=0))\n"
            "print('ANSWER', len(out[0].outputs[0].token_ids))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "FAIL", f"did not answer within {timeout_s:.0f} s"
    answer = [line for line in done.stdout.splitlines() if line.startswith("ANSWER")]
    if done.returncode or not answer:
        return "FAIL", (done.stderr.splitlines() or ["no output"])[-1]
    return "PASS", f"{answer[0].split()[1]} tokens generated from {export.name}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true",
                        help="check the harness on CPU settings (CUDA-only rows skip)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_smoke",
                        help="run directories, logs and gpu_smoke.json (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed to each run (default %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, float]] = []

    def row(name: str, check) -> tuple[str, str]:
        start = time.monotonic()
        status, detail = check()
        rows.append((name, status, detail, time.monotonic() - start))
        print(f"{name:<14} {status:<5} {detail}", flush=True)
        return status, detail

    status, detail = row("environment", lambda: environment(args.cpu))
    if status == "FAIL":
        print(f"gpu-smoke stops here: {detail} (without a GPU, --cpu checks the harness)",
              file=sys.stderr)
        return 1
    gpus = 0 if args.cpu else _gpu_count()
    one_gpu = [] if args.cpu else ONE_GPU

    def stage2() -> tuple[str, str]:
        ok, tail = launch("stage2", ["conf=tiny", *one_gpu], args.out, args.timeout)
        steps = [m["step"] for m in metrics(args.out / "stage2")]
        pd = [m.get(M.PD_SCORED_FRAC) for m in metrics(args.out / "stage2")[1:]]
        if not ok or steps != [0, 1, 2]:
            return "FAIL", f"steps logged {steps}; {tail}"
        return "PASS", f"steps {steps}, {M.PD_SCORED_FRAC} {pd}"

    row("stage2", stage2)

    def gap() -> tuple[str, str]:
        logged = [m for m in metrics(args.out / "stage2") if m["step"] == 2]
        if not logged or M.PPO_KL not in logged[0]:
            return "FAIL", f"no step 2 with {M.PPO_KL} (see the stage2 row)"
        kl = float(logged[0][M.PPO_KL])
        clip = logged[0].get(M.PG_CLIPFRAC)
        return ("PASS" if abs(kl) < GAP_LIMIT else "FAIL"), \
            f"{M.PPO_KL} {kl:.2e} (limit {GAP_LIMIT:g}), {M.PG_CLIPFRAC} {clip}"

    row("logprob gap", gap)
    export = args.out / "stage2" / "export"
    row("export", lambda: export_answers(export, args.cpu, args.timeout)
        if (export / "config.json").is_file() else ("FAIL", "no export (see stage2)"))

    def collective() -> tuple[str, str]:
        if not args.cpu and gpus < 3:
            return "SKIP", (f"{gpus} GPU(s): NCCL needs learner, engine and scorer on "
                            "3 distinct GPUs")
        backend = "gloo" if args.cpu else "nccl"
        whole = [] if args.cpu else [*ONE_GPU, "rollout.num_gpus_per_engine=1",
                                     "scoring.num_gpus=1", "learner.num_gpus=1"]
        ok, tail = launch("collective", ["conf=tiny", *whole, "rollout.multiprocessing=true",
                                         "weights.transport=collective",
                                         f"weights.backend={backend}"],
                          args.out, args.timeout)
        groups = [m.get(M.WEIGHT_GROUPS) for m in metrics(args.out / "collective")[1:]]
        if not ok or groups != [1, 1]:
            return "FAIL", f"{M.WEIGHT_GROUPS} per step {groups}; {tail}"
        return "PASS", f"two {backend.upper()} pushes over one group ({M.WEIGHT_GROUPS} 1)"

    row("collective", collective)

    def colocate() -> tuple[str, str]:
        shared = [] if args.cpu else ["learner.num_gpus=1", "rollout.num_gpus_per_engine=1",
                                      "rollout.gpu_memory_utilization=0.4",
                                      "rollout.dtype=bfloat16", "train.precision=bf16"]
        ok, tail = launch("colocate", ["conf=tiny_stage1", "placement.colocate=true",
                                       *shared], args.out, args.timeout)
        steps = [m["step"] for m in metrics(args.out / "colocate")]
        return ("PASS", f"steps {steps}") if ok and steps == [0, 1, 2] else \
            ("FAIL", f"steps logged {steps}; {tail}")

    row("colocate", colocate)
    report = {"cpu": args.cpu, "rows": [{"check": n, "status": s, "detail": d,
                                         "seconds": round(t, 1)} for n, s, d, t in rows]}
    (args.out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print("\n| check | status | seconds | detail |\n|---|---|---|---|")
    for name, st, detail, seconds in rows:
        print(f"| {name} | {st} | {seconds:.0f} | {detail} |")
    print(f"\nwritten: {args.out / 'gpu_smoke.json'}")
    return 1 if any(st == "FAIL" for _, st, _, _ in rows) else 0


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


if __name__ == "__main__":
    sys.exit(main())
