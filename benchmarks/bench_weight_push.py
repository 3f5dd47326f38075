"""Weight push at a realistic size: both transports to 1 and 2 receivers, against memcpy.

A synthetic model of plain float32 tensors (default 512 MB: 32 tensors of 16 MB) lives in
a sender actor (learner rank 0's role). Each push goes through the real pieces: WeightSync
versions and delivers it, the real transport moves it (object store: `ray.put` per bucket,
then every receiver streams the refs; collective: a gloo group of the sender and the
receivers on 127.0.0.1, buckets broadcast as they are cut), and each receiver takes it in
through the real WeightReceiver (every bucket checked: names, shapes, finite values),
loading each bucket by copying it into its own preallocated model, as an engine does.

Reported per transport and receiver count: seconds per push (best and median of
--repeats), seconds per GB of model, the ratio to a plain memory copy of the same bytes in
this process (goal: within 3x), and each receiver's peak extra resident memory during a
push (its private resident memory, RSS minus shared pages, sampled every millisecond,
minus the same before the push; goal: about one bucket, not the model). After the last push every receiver's checksum must equal the
sender's, computed on the sender from its own tensors.

    python benchmarks/bench_weight_push.py [--model-mb 512] [--bucket-mb 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# Before `import ray` (benchmark-local cluster on loopback, cluster/connect.py says why).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.report import Column, report  # noqa: E402

TENSOR_MB = 16


class Sender:
    """Learner rank 0's role: holds the model, cuts buckets, sends through a transport."""

    def __init__(self, model_mb: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        count = max(1, model_mb // TENSOR_MB)
        numel = TENSOR_MB * 2**20 // 4
        self.tensors = {f"layers.{i}.weight": torch.rand(numel, generator=gen)
                        for i in range(count)}
        self.listener = None
        self.group_end = None   # the collective group, kept between pushes as rank 0 does

    def shapes(self) -> dict:
        return {name: tuple(t.shape) for name, t in self.tensors.items()}

    def checksum(self) -> float:
        return float(sum(t.double().sum() for t in self.tensors.values()))

    def _buckets(self, bucket_mb: float):
        from weight_sync.buckets import plan_buckets

        sizes = [(n, t.numel() * t.element_size()) for n, t in self.tensors.items()]
        for names in plan_buckets(sizes, int(bucket_mb * 2**20)):
            yield {n: self.tensors[n] for n in names}

    def publish(self, bucket_mb: float) -> tuple[list, dict]:
        from weight_sync.transport import ObjectStoreTransport

        return ObjectStoreTransport().publish(self._buckets(bucket_mb)), {}

    def open(self) -> int:
        from weight_sync.group import listen_on

        self.listener = listen_on("127.0.0.1")
        return int(self.listener.getsockname()[1])

    def send(self, push: dict, bucket_mb: float) -> tuple[list, dict]:
        from weight_sync.transport import CollectiveTransport

        self.group_end = self.group_end or CollectiveTransport()
        listener, self.listener = self.listener, None
        self.group_end.send(self._buckets(bucket_mb), push, listener)
        return [], {}


class Receiver:
    """An engine's role: a preallocated model, loaded bucket by bucket (WeightReceiver)."""

    def __init__(self, shapes: dict, transport: str):
        from weight_sync.receiver import WeightReceiver, WeightSpec
        from weight_sync.transport import make_transport

        # filled, not just allocated: the model's pages are resident before any push
        self.model = {n: torch.empty(s).fill_(0.0) for n, s in shapes.items()}
        self.receiver = WeightReceiver(WeightSpec(shapes=shapes), self,
                                       make_transport(transport))

    # the engine end (weight_sync.receiver.EngineLoader)
    def begin(self) -> None:
        pass

    def load_part(self, tensors) -> None:
        for name, tensor in tensors:
            self.model[name].copy_(tensor)

    def finish(self) -> None:
        pass

    def load_initial(self) -> None:
        for t in self.model.values():
            t.zero_()

    def update_weights(self, version: int, push) -> dict:
        import threading

        import psutil

        proc, done = psutil.Process(), threading.Event()

        def private() -> int:
            # Resident minus shared pages: the object store's memory, which a zero-copy
            # ray.get maps into this process, belongs to the store, not to the receiver.
            info = proc.memory_info()
            return info.rss - info.shared

        base = private()
        peak = [base]

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], private())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            info = self.receiver.update(version, push)
        finally:
            done.set()
            thread.join()
        return {**info, "peak_extra_bytes": max(0, peak[0] - base)}

    def ready(self) -> dict:
        return {"version": self.receiver.version, "pid": os.getpid()}

    def checksum(self) -> float:
        return float(sum(t.double().sum() for t in self.model.values()))

    def last(self) -> dict:
        return getattr(self, "_last", {})


class Learners:
    """LearnerGroup's push interface (publish_weights / live + start_push) over Sender."""

    def __init__(self, sender, transport: str, bucket_mb: float, keep_group: bool = True):
        import ray

        self.ray, self.sender, self.bucket_mb = ray, sender, bucket_mb
        self.live = transport == "collective"
        self.keep_group = keep_group   # False: a new group every push (the old behaviour)
        from weight_sync.group import KeptGroup

        self.kept = KeptGroup(lambda: ("127.0.0.1", ray.get(sender.open.remote())), "gloo",
                              300.0)

    def publish_weights(self):
        return self.ray.get(self.sender.publish.remote(self.bucket_mb))

    def start_push(self, num_receivers: int, reuse: bool = False):
        push = self.kept.push(num_receivers, reuse and self.keep_group)
        return push, [self.sender.send.remote(push, self.bucket_mb)]


class Recording(Receiver):
    """Keeps the stats of its last update for the driver (WeightSync drops them)."""

    def update_weights(self, version: int, push) -> dict:
        self._last = super().update_weights(version, push)
        return self._last


def memcpy_s_per_gb(nbytes: int, repeats: int) -> float:
    """Best seconds per GB of `torch.Tensor.copy_` of nbytes in this process."""
    src = torch.rand(nbytes // 4)
    dst = torch.empty_like(src).fill_(0.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return best / (nbytes / 1e9)


def run_case(ray, sender, shapes, transport, receivers, bucket_mb, repeats, expected,
             keep_group=True):
    """Push `repeats` versions; returns the case's row."""
    from weight_sync.sync import WeightSync

    remote = ray.remote(Recording).options(num_cpus=0.5)
    handles = [remote.remote(shapes, transport) for _ in range(receivers)]
    ray.get([h.ready.remote() for h in handles])
    sync = WeightSync()
    for i, handle in enumerate(handles):
        sync.register(f"receiver-{i}", handle)
    learners = Learners(sender, transport, bucket_mb, keep_group)
    seconds, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        sync.publish(learners)
        seconds.append(time.perf_counter() - start)
        peaks.append(max(ray.get(h.last.remote())["peak_extra_bytes"] for h in handles))
    sums = ray.get([h.checksum.remote() for h in handles])
    for handle in handles:
        ray.kill(handle)
    if any(abs(s - expected) > 1e-6 * abs(expected) for s in sums):
        raise RuntimeError(f"{transport}: receivers hold {sums}, the sender {expected}")
    # first_s: the first push, which forms the collective group; groups: groups formed
    # over all pushes (one per run: the later pushes reuse it).
    name = transport if keep_group or transport != "collective" else "collective, group/push"
    return {"transport": name, "receivers": receivers, "best_s": min(seconds),
            "median_s": statistics.median(seconds), "first_s": seconds[0],
            "groups": learners.kept.opened if learners.live else 0,
            "peak_extra_mb": max(peaks) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-mb", type=int, default=512, help="synthetic model size")
    parser.add_argument("--bucket-mb", type=float, default=64.0, help="conf weights.bucket_mb")
    parser.add_argument("--repeats", type=int, default=5, help="pushes per case")
    parser.add_argument("--out", default="outputs/bench/weight_push.json", help="JSON path")
    args = parser.parse_args(argv)
    if args.model_mb < TENSOR_MB or args.bucket_mb <= 0 or args.repeats < 1:
        parser.error(f"--model-mb must be >= {TENSOR_MB}, --bucket-mb > 0, --repeats >= 1")

    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        sender = ray.remote(Sender).options(num_cpus=0.5).remote(args.model_mb, 0)
        shapes = ray.get(sender.shapes.remote())
        expected = ray.get(sender.checksum.remote())
        nbytes = sum(TENSOR_MB * 2**20 for _ in shapes)
        copy = memcpy_s_per_gb(nbytes, args.repeats)
        # The last two rows form a new group every push, as the collective transport did
        # before it kept one for the run: side by side, what keeping it saves.
        rows = [run_case(ray, sender, shapes, transport, receivers, args.bucket_mb,
                         args.repeats, expected, keep)
                for transport, keep in (("object_store", True), ("collective", True),
                                        ("collective", False))
                for receivers in (1, 2)]
    finally:
        ray.shutdown()
    gb = nbytes / 1e9
    for row in rows:
        row["s_per_gb"] = row["best_s"] / gb
        row["ratio_to_memcpy"] = row["s_per_gb"] / copy
    report("weight_push", rows, [
        Column("transport", "transport"), Column("recv", "receivers", "d"),
        Column("best s", "best_s", ".3f"), Column("median s", "median_s", ".3f"),
        Column("first s", "first_s", ".3f"), Column("groups", "groups", "d"),
        Column("s/GB", "s_per_gb", ".3f"), Column("x memcpy", "ratio_to_memcpy", ".1f"),
        Column("peak extra MB", "peak_extra_mb", ".0f")], args.out,
        title=f"model {nbytes / 2**20:.0f} MB in {len(shapes)} tensors, buckets of "
              f"{args.bucket_mb:g} MB; memcpy {copy:.3f} s/GB; best of {args.repeats} pushes",
        extra={"model_bytes": nbytes, "bucket_mb": args.bucket_mb,
               "memcpy_s_per_gb": copy, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
