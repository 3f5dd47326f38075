"""What each role asks Ray for, declared once, and whether the cluster can give it.

A role is one group of actors placed together: the learner ranks, and the rollout engines
with the scoring actor beside them. `layout(cfg, ...)` turns conf `rollout`, `scoring`,
`learner` and `placement` into each role's per-node share (CPUs, GPUs, a node label) and
which share each actor takes; everything else is derived from it: the totals a run asks
for (`requested`), the check against the cluster (`check_resources`), and the placement
groups (cluster.placement.Placement).

conf `placement` says how many nodes each role spreads over, as OpenRLHF's
`--actor_num_nodes` / verl's `trainer.nnodes` do:

- the learner ranks over `learner_nodes` nodes, num_learners / learner_nodes on each;
- the rollout engines over `rollout_nodes` nodes, num_engines / rollout_nodes on each; the
  scoring actor joins the first of them (it teacher-forces what the engines generate);
- `learner_resource` / `rollout_resource` name a custom Ray resource that marks the
  nodes a role may use (`ray start --resources '{"learner_node": 1}'`); each node's
  share asks for LABEL_AMOUNT of it, so a label of 1 marks a node for many roles.

`placement.colocate` (training only) shares the GPUs instead, as OpenRLHF's
`--colocate_all_models` does: one bundle per learner rank (one GPU, or none on CPU),
packed onto as few nodes as hold them; rollout engine k and then the scoring actor join
bundles 0, 1, ... beside a rank, and every actor of a bundle asks for COLOCATED_GPU_SHARE
of its GPU. One bundle per GPU, not one per node, because Ray gives fractional requests
inside one multi-GPU bundle the fullest GPU that still has room: two learner ranks would
land on one GPU, which NCCL refuses. Who uses the GPU when is driver.gpu_sharing's part.

Ray schedules actors by logical resources and never fails a request it cannot meet: it
waits. `check_resources` fails at once instead, with one line naming the conf keys: first
against the cluster's totals, then node by node (a role's shares go to distinct nodes, two
roles may share a node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LABEL_AMOUNT = 0.001
COLOCATED_GPU_SHARE = 0.5   # of a colocated bundle's GPU: a learner rank and one vLLM actor
# vLLM's gpu_memory_utilization counts the whole GPU; a colocated learner rank needs the
# rest for its shard, gradients and activations: ~15-25 GB at the paper's scale on an 80 GB
# GPU (README "The paper's two-stage recipe"), so at least 0.3 of it is left.
COLOCATED_MAX_VLLM_MEMORY = 0.7
MIN_CPU = 0.001   # Ray refuses an empty bundle (a role configured with 0 CPUs and 0 GPUs)


class ResourceError(RuntimeError):
    """The configured actors do not fit the cluster."""


class PlacementError(ResourceError):
    """The layout does not fit the cluster's nodes."""


@dataclass
class Role:
    """One role: what each of its nodes gives it, and which node each of its actors takes."""

    name: str
    keys: str                       # the conf keys to change, for messages
    shares: list[dict[str, float]]  # per node: {"CPU": .., "GPU": .., label: LABEL_AMOUNT}
    slots: list[int] = field(default_factory=list)   # actor i -> share index
    scorer_slot: int = 0            # the scoring actor's share ("rollout" role)
    strategy: str = "STRICT_SPREAD"  # of its placement group; PACK: bundles may share a node
    group: str = ""                 # the role whose placement group it lives in ("": its own)
    gpu_share: float | None = None  # num_gpus each of its actors asks (None: its conf value)

    @property
    def bundles(self) -> list[dict[str, float]]:
        """The shares as Ray placement-group bundles (no zero entries, never empty)."""
        return [{k: v for k, v in share.items() if v > 0} or {"CPU": MIN_CPU}
                for share in self.shares]


def _share(cpu: float, gpu: float, label: str | None) -> dict[str, float]:
    share = {"CPU": max(float(cpu), 0.0), "GPU": float(gpu)}
    if label:
        share[str(label)] = LABEL_AMOUNT
    return share


def _split(count: int, nodes: int, what: str, key: str) -> int:
    if nodes < 1 or count % nodes:
        raise PlacementError(f"{what}={count} does not split evenly over {key}={nodes}: "
                             f"choose a {key} that divides it")
    return count // nodes


def with_scorer(cfg: Any, scorer: bool | None) -> bool:
    """Whether the scoring actor is asked for (None: as training, which starts it in
    Stage-2 only: Stage-1 has no PD reward)."""
    return cfg.stage == 2 if scorer is None else bool(scorer)


def layout(cfg: Any, engines: bool = True, scorer: bool | None = None,
           learners: bool = True) -> list[Role]:
    """The roles asked for, from conf rollout / scoring / learner / placement."""
    p, r, s, ln = cfg.placement, cfg.rollout, cfg.scoring, cfg.learner
    if p.colocate and learners:
        return _colocated(cfg, engines, with_scorer(cfg, scorer))
    out = []
    if learners:
        per = _split(ln.num_learners, p.learner_nodes, "learner.num_learners",
                     "placement.learner_nodes")
        out.append(Role("learners", "learner.num_learners x learner.num_cpus/num_gpus, "
                        "placement.learner_nodes, placement.learner_resource",
                        [_share(per * ln.num_cpus, per * ln.num_gpus, p.learner_resource)
                         for _ in range(p.learner_nodes)],
                        [rank // per for rank in range(ln.num_learners)]))
    scorer = with_scorer(cfg, scorer)
    if engines or scorer:
        nodes = p.rollout_nodes if engines else 1
        per = _split(r.num_engines, nodes, "rollout.num_engines",
                     "placement.rollout_nodes") if engines else 0
        shares = [_share(per * r.num_cpus_per_engine, per * r.num_gpus_per_engine,
                         p.rollout_resource) for _ in range(nodes)]
        if scorer:
            shares[0]["CPU"] += s.num_cpus
            shares[0]["GPU"] += s.num_gpus
        slots = [i // per for i in range(r.num_engines)] if engines else []
        out.append(Role("rollout", "rollout.num_engines x rollout.num_cpus/gpus_per_engine"
                        " + scoring.num_cpus/gpus, placement.rollout_nodes, "
                        "placement.rollout_resource", shares, slots))
    return out


def colocation_problems(cfg: Any, engines: bool, scorer: bool) -> list[str]:
    """What keeps conf from sharing the GPUs one bundle per learner rank (module docstring)."""
    p, r, s, ln = cfg.placement, cfg.rollout, cfg.scoring, cfg.learner
    out = []
    vllm = r.num_engines * engines + scorer
    if vllm > ln.num_learners:
        out.append(f"{vllm} vLLM actors (rollout.num_engines + the scoring actor) need as "
                   f"many learner ranks to sit beside, learner.num_learners is "
                   f"{ln.num_learners}")
    gpus = {"learner.num_gpus": ln.num_gpus}
    if engines:
        gpus["rollout.num_gpus_per_engine"] = r.num_gpus_per_engine
    if scorer:
        gpus["scoring.num_gpus"] = s.num_gpus
    if len(set(gpus.values())) > 1 or not set(gpus.values()) <= {0, 1}:
        out.append(f"every role takes 1 GPU or none ({', '.join(f'{k}={v:g}' for k, v in gpus.items())})")
    if ln.num_gpus and r.gpu_memory_utilization > COLOCATED_MAX_VLLM_MEMORY:
        out.append(f"rollout.gpu_memory_utilization={r.gpu_memory_utilization:g} leaves the "
                   f"learner rank beside too little of the GPU: at most "
                   f"{COLOCATED_MAX_VLLM_MEMORY:g} (0.5 is verl's default for this)")
    if ln.num_gpus and cfg.weights.transport == "collective":
        out.append("weights.transport must be object_store: learner rank 0 and engine 0 "
                   "share a GPU, and NCCL refuses two ranks of one group on one GPU")
    if r.tensor_parallel_size != 1:
        out.append("rollout.tensor_parallel_size must be 1 (an engine sits on one GPU)")
    if p.learner_nodes != 1 or p.rollout_nodes != 1:
        out.append("placement.learner_nodes and placement.rollout_nodes must stay 1 (the "
                   "bundles are packed onto as many nodes as they need)")
    if p.rollout_resource not in (None, p.learner_resource):
        out.append("placement.rollout_resource must be null or equal placement."
                   "learner_resource (the roles share nodes)")
    return out


def _colocated(cfg: Any, engines: bool, scorer: bool) -> list[Role]:
    p, r, s, ln = cfg.placement, cfg.rollout, cfg.scoring, cfg.learner
    problems = colocation_problems(cfg, engines, scorer)
    if problems:
        raise PlacementError("placement.colocate=true cannot share the GPUs: "
                             + "; ".join(problems))
    gpu = 1.0 if ln.num_gpus > 0 else 0.0
    shares = [_share(ln.num_cpus, gpu, p.learner_resource) for _ in range(ln.num_learners)]
    num_engines = r.num_engines if engines else 0
    for k in range(num_engines):
        shares[k]["CPU"] += r.num_cpus_per_engine
    if scorer:
        shares[num_engines]["CPU"] += s.num_cpus
    share = COLOCATED_GPU_SHARE if gpu else 0.0
    keys = ("placement.colocate, learner.num_learners x learner.num_cpus, "
            "rollout.num_cpus_per_engine, scoring.num_cpus")
    return [Role("learners", keys, shares, list(range(ln.num_learners)), strategy="PACK",
                 gpu_share=share),
            Role("rollout", keys, [], list(range(num_engines)), scorer_slot=num_engines,
                 group="learners", gpu_share=share)]


def requested(cfg: Any, engines: bool = True, scorer: bool | None = None,
              learners: bool = True) -> dict[str, float]:
    """CPU and GPU that the named roles ask Ray for in all (scorer None: as training)."""
    shares = [s for role in layout(cfg, engines, scorer, learners) for s in role.shares]
    return {kind: float(sum(s[kind] for s in shares)) for kind in ("CPU", "GPU")}


def check_resources(cfg: Any, available: dict, engines: bool = True,
                    scorer: bool | None = None, learners: bool = True,
                    nodes: list[dict[str, float]] | None = None) -> None:
    """Raise ResourceError, naming the conf keys to change, when the named roles cannot
    all be placed (Ray would wait for them forever): first against the cluster's totals
    `available`, then, given `nodes` (each alive node's resources), node by node."""
    need = requested(cfg, engines, scorer, learners)
    for kind, amount in need.items():
        have = float(available.get(kind, 0.0))
        if amount <= have + 1e-9:
            continue
        k = kind.lower()
        parts = [f"rollout.num_engines x rollout.num_{k}s_per_engine"] if engines else []
        parts += [f"learner.num_learners x learner.num_{k}s"] if learners else []
        parts += [f"scoring.num_{k}s"] if with_scorer(cfg, scorer) else []
        hint = (" (on a CPU-only machine use conf tiny, or set those num_gpus keys to 0)"
                if kind == "GPU" else "")
        raise ResourceError(
            f"the actors ask for {amount:g} {kind} ({' + '.join(parts)}) but the Ray cluster "
            f"has {have:g}: lower those values, or start the cluster with more (ray start "
            f"--num-{k}s N, or ray.num_cpus=N for a local one){hint}")
    if nodes is not None:
        check_fits(layout(cfg, engines, scorer, learners), nodes)


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _assign(items: list[tuple[int, dict]], free: list[dict[str, float]],
            used: dict[int, set[int]], packed: set[int]) -> bool:
    """Backtracking: every (role index, bundle) on a node with room, a role's bundles on
    distinct nodes unless the role is `packed` (clusters and layouts are small)."""
    if not items:
        return True
    (role, bundle), rest = items[0], items[1:]
    for node, room in enumerate(free):
        taken = node in used.setdefault(role, set())
        if (taken and role not in packed) or not _fits(bundle, room):
            continue
        for k, v in bundle.items():
            room[k] = room.get(k, 0.0) - v
        used[role].add(node)
        if _assign(rest, free, used, packed):
            return True
        if not taken:
            used[role].discard(node)
        for k, v in bundle.items():
            room[k] += v
    return False


def _shown(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(bundle.items()))


def check_fits(roles: list[Role], nodes: list[dict[str, float]]) -> None:
    """PlacementError, one line, unless every role's bundles fit the nodes' resources."""
    def fits(chosen: list[Role]) -> bool:
        items = [(i, b) for i, role in enumerate(chosen) for b in role.bundles]
        items.sort(key=lambda item: -item[1].get("GPU", 0.0) - item[1].get("CPU", 0.0))
        packed = {i for i, role in enumerate(chosen) if role.strategy == "PACK"}
        return _assign(items, [dict(n) for n in nodes], {}, packed)

    if fits(roles):
        return
    alone = [role for role in roles if not fits([role])]
    roles = alone or roles   # name the role that cannot fit even by itself
    wanted = "; ".join(f"{role.name}: {len(role.bundles)} node(s) with {_shown(role.bundles[0])}"
                       for role in roles)
    have = "; ".join(f"node {i}: {_shown(_offered(n))}" for i, n in enumerate(nodes))
    keys = " / ".join(role.keys for role in roles)
    raise PlacementError(f"the layout does not fit the cluster ({wanted}; the cluster has "
                         f"{have or 'no alive node'}): change {keys}, or add nodes")


def _offered(node: dict[str, float]) -> dict[str, float]:
    # Ray's bookkeeping resources (node:<ip>, memory, object store) say nothing here.
    skip = ("node:", "memory", "object_store_memory", "accelerator_type")
    return {k: v for k, v in node.items() if not k.startswith(skip)}
