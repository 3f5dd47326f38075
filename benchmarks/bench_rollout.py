"""Rollout throughput and weight-push cost on the tiny model (conf=tiny).

Completion tokens per second for the same prompts, G rollouts each, of
  (a) vLLM used directly in one process,
  (b) a RolloutEngine actor through Ray (prompt building inside the timed call),
  (c) transformers `generate`,
each on one thread pinned to the same core. (a) and (b) are measured in alternating
rounds, so background load on a shared machine hits both alike; the median round counts.
Goal: (b) >= 0.9 x (a). Then the seconds to push a full set of weights (conf bucket size,
through the Ray object store) to 1 and to 2 engines, as seconds per GB.

    python benchmarks/bench_rollout.py [--rounds 5] [--out outputs/bench/rollout.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import Column, report  # noqa: E402

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")   # scikit-image, CC0


def make_samples(folder: Path, count: int) -> list[dict]:
    """`count` Stage-2 scoring samples over scikit-image's photos."""
    from PIL import Image
    from skimage import data

    samples = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        samples.append({"id": f"{name}-{i}", "task": "score", "question": None,
                        "images": [str(path)], "mos": 2.5})
    return samples


def direct_worker(conn, settings, samples, n, sampling) -> None:
    """(a): vLLM in this process, same settings and binding as engine slot 0."""
    from actors.rollout_engine import RolloutEngine

    engine = RolloutEngine(settings)   # the plain class: no Ray, no actor
    from vllm import SamplingParams

    prompts = [engine.builder.prepare(s, "think").engine_input() for s in samples]
    params = SamplingParams(n=n, temperature=sampling["temperature"], top_p=sampling["top_p"],
                            max_tokens=sampling["max_new_tokens"], logprobs=0, detokenize=False)
    while conn.recv() == "run":
        start = time.perf_counter()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        conn.send((sum(len(c.token_ids) for o in outs for c in o.outputs), seconds))


def engine_round(handle, samples, n, sampling) -> tuple[int, float]:
    import ray

    start = time.perf_counter()
    results = ray.get(handle.generate.remote(samples, "think", n, sampling))
    seconds = time.perf_counter() - start
    return sum(len(r.token_ids) + r.stripped_tokens for p in results for r in p.rollouts), seconds


def hf_round(model, builder, samples, n, sampling) -> tuple[int, float]:
    """(c): transformers generate, one prompt at a time (images differ in size)."""
    import torch

    eos = builder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens, start = 0, time.perf_counter()
    for sample in samples:
        prepared = builder.prepare(sample, "think")
        enc = builder.processor(text=[prepared.text], images=prepared.images,
                                return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=sampling["temperature"],
                                 top_p=sampling["top_p"], num_return_sequences=n,
                                 max_new_tokens=sampling["max_new_tokens"])
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens, time.perf_counter() - start


class StatePublisher:
    """Publishes a fixed state dict in conf-sized buckets, as learner rank 0 does."""

    def __init__(self, state, bucket_bytes):
        self.state, self.bucket_bytes = state, bucket_bytes

    def publish_weights(self):
        import ray

        from weight_sync.buckets import plan_buckets

        sizes = [(n, t.numel() * t.element_size()) for n, t in self.state.items()]
        names = plan_buckets(sizes, self.bucket_bytes)
        handles = [ray.put({n: self.state[n] for n in bucket}) for bucket in names]
        return handles, {"bytes": float(sum(size for _, size in sizes))}


def push_seconds(sync, publisher) -> tuple[float, dict]:
    """Wall time of one full push through WeightSync (the loop's path: publish the buckets,
    every engine loads them), and its report."""
    start = time.perf_counter()
    report = sync.publish(publisher)
    return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per round")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per setting")
    parser.add_argument("--pushes", type=int, default=5, help="timed pushes per engine count")
    parser.add_argument("--out", default="outputs/bench/rollout.json")
    args = parser.parse_args()

    import ray
    import torch
    from tqdm import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    from actors.engine_host import wait_ready
    from actors.engine_settings import settings_from_config
    from actors.rollout_engine import start_rollout_engine
    from conf.loader import load_config
    from learner.checkpoint import resolve_model_path
    from model_inputs.prompting import PromptBuilder
    from weight_sync.sync import WeightSync

    cfg = load_config("tiny")
    model_path = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    settings = settings_from_config(cfg, model_path)
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens}
    samples = make_samples(Path(tempfile.mkdtemp(prefix="bench-rollout-")), args.prompts)

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    engine = start_rollout_engine(settings, 0, num_cpus=1)
    parent, child = mp.get_context("spawn").Pipe()
    from dataclasses import replace

    direct = mp.get_context("spawn").Process(
        target=direct_worker, args=(child, replace(settings, cpu_slot=0), samples, args.n,
                                    sampling), daemon=True)
    direct.start()
    wait_ready([engine], 900)
    runs: dict[str, list[tuple[int, float]]] = {"vllm_direct": [], "rollout_engine": []}
    for r in tqdm(range(args.rounds + 1), desc="vLLM direct / RolloutEngine rounds"):
        parent.send("run")
        direct_result = parent.recv()
        engine_result = engine_round(engine, samples, args.n, sampling)
        if r:   # round 0 warms both up (the first generate after a start is slow)
            runs["vllm_direct"].append(direct_result)
            runs["rollout_engine"].append(engine_result)
    parent.send("stop")
    direct.join(timeout=60)

    os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[0]])
    torch.set_num_threads(1)
    builder = PromptBuilder(model_path, cfg.model.min_pixels, cfg.model.max_pixels)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path,
                                                               dtype=torch.float32).eval()
    hf_rounds = range(max(1, args.rounds // 2) + 1)   # round 0 warms up
    runs["transformers"] = [hf_round(model, builder, samples, args.n, sampling)
                            for _ in tqdm(hf_rounds, desc="transformers")][1:]

    throughput = {k: statistics.median(t / s for t, s in v) for k, v in runs.items()}
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    bucket_bytes = cfg.weights.bucket_mb * 2**20
    second = start_rollout_engine(settings, 1, num_cpus=1)
    wait_ready([second], 900)
    pushes = {}
    publisher = StatePublisher(state, bucket_bytes)
    for count, handles in ((1, [engine]), (2, [engine, second])):
        sync = WeightSync()
        for i, handle in enumerate(handles):
            sync.register(f"rollout-engine-{i}", handle)
        sync.restore(publisher, 100 * count)   # above any version the engines already hold
        times, reports = [], []
        for _ in tqdm(range(args.pushes), desc=f"weight push to {count} engine(s)"):
            seconds, pushed = push_seconds(sync, publisher)
            times.append(seconds)
            reports.append(pushed)
        nbytes = reports[0]["bytes"]
        pushes[count] = {"seconds": statistics.median(times), "bytes": nbytes,
                         "seconds_per_gb": statistics.median(times) / (nbytes / 1e9),
                         "gather_s": statistics.median(r["gather_s"] for r in reports),
                         "deliver_s": statistics.median(r["deliver_s"] for r in reports)}
    ray.shutdown()

    report_extra = {
        "setting": {"prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
                    "rounds": args.rounds, "model": "tiny", "threads": 1,
                    "bucket_mb": cfg.weights.bucket_mb},
        "completion_tokens_per_s": throughput,
        "ratio_engine_to_direct": throughput["rollout_engine"] / throughput["vllm_direct"],
        "ratio_transformers_to_direct": throughput["transformers"] / throughput["vllm_direct"],
        "goal_engine_to_direct": 0.9,
        "weight_push": {str(k): v for k, v in pushes.items()},
        "rounds": {k: [{"tokens": t, "seconds": s} for t, s in v] for k, v in runs.items()},
    }
    labels = {"vllm_direct": "(a) vLLM direct", "rollout_engine": "(b) RolloutEngine/Ray",
              "transformers": "(c) transformers"}
    rows = [{"setting": label, "tokens_per_s": throughput[key],
             "vs_direct": throughput[key] / throughput["vllm_direct"]}
            for key, label in labels.items()]
    rows += [{"setting": f"push to {count} engine(s)", "push_s": p["seconds"],
              "push_mb": p["bytes"] / 1e6, "s_per_gb": p["seconds_per_gb"],
              "deliver_s": p["deliver_s"]} for count, p in pushes.items()]
    report("rollout", rows, [
        Column("setting", "setting"), Column("tokens/s", "tokens_per_s", ".0f"),
        Column("vs (a)", "vs_direct", ".2f"), Column("push s", "push_s", ".3f"),
        Column("MB", "push_mb", ".2f"), Column("s/GB", "s_per_gb", ".2f"),
        Column("deliver s", "deliver_s", ".3f")], args.out,
        notes=["(a small model's push is mostly fixed per-push cost; s/GB falls with size)"],
        extra=report_extra)


if __name__ == "__main__":
    main()
