"""Where the actor groups run: one Ray placement group per role, spread over nodes.

conf `placement` says how many nodes each role spreads over, as OpenRLHF's
`--actor_num_nodes` / verl's `trainer.nnodes` do:

- the learner ranks over `learner_nodes` nodes, num_learners / learner_nodes on each;
- the rollout engines over `rollout_nodes` nodes, num_engines / rollout_nodes on each; the
  scoring actor joins the first of them (it teacher-forces what the engines generate);
- `learner_resource` / `rollout_resource` name a custom Ray resource that marks the
  nodes a role may use (`ray start --resources '{"learner_node": 1}'`); each node's
  bundle asks for LABEL_AMOUNT of it, so a label of 1 marks a node for many roles.

A role is one placement group of one bundle per node (its ranks' CPUs and GPUs added up),
strategy STRICT_SPREAD: its nodes are distinct. Two roles may share a node. `check_fits`
tries the layout against the alive nodes' totals before anything is created, so a layout
that cannot fit is one line naming the keys, not a job that waits forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driver.cluster import ResourceError

LABEL_AMOUNT = 0.001
MIN_CPU = 0.001   # Ray refuses an empty bundle (a role configured with 0 CPUs and 0 GPUs)


class PlacementError(ResourceError):
    """The layout does not fit the cluster's nodes."""


@dataclass
class Role:
    """One role's bundles (one per node) and which bundle each of its actors takes."""

    name: str
    keys: str                       # the conf keys to change, for messages
    bundles: list[dict[str, float]]
    slots: list[int] = field(default_factory=list)   # actor i -> bundle index


def _bundle(cpu: float, gpu: float, label: str | None) -> dict[str, float]:
    bundle = {"CPU": max(float(cpu), 0.0), "GPU": float(gpu)}
    if label:
        bundle[str(label)] = LABEL_AMOUNT
    bundle = {k: v for k, v in bundle.items() if v > 0}
    return bundle or {"CPU": MIN_CPU}


def _split(count: int, nodes: int, what: str, key: str) -> int:
    if nodes < 1 or count % nodes:
        raise PlacementError(f"{what}={count} does not split evenly over {key}={nodes}: "
                             f"choose a {key} that divides it")
    return count // nodes


def roles(cfg: Any, engines: bool = True, scorer: bool = False,
          learners: bool = True) -> list[Role]:
    """The bundles each asked-for role needs, from conf rollout / scoring / learner /
    placement."""
    p, r, s, ln = cfg.placement, cfg.rollout, cfg.scoring, cfg.learner
    out = []
    if learners:
        per = _split(int(ln.num_learners), int(p.learner_nodes), "learner.num_learners",
                     "placement.learner_nodes")
        out.append(Role("learners", "learner.num_learners x learner.num_cpus/num_gpus, "
                        "placement.learner_nodes, placement.learner_resource",
                        [_bundle(per * ln.num_cpus, per * ln.num_gpus, p.learner_resource)
                         for _ in range(int(p.learner_nodes))],
                        [rank // per for rank in range(int(ln.num_learners))]))
    if engines or scorer:
        nodes = int(p.rollout_nodes)
        per = _split(int(r.num_engines), nodes, "rollout.num_engines",
                     "placement.rollout_nodes") if engines else 0
        bundles = [[per * r.num_cpus_per_engine, per * r.num_gpus_per_engine]
                   for _ in range(nodes if engines else 1)]
        if scorer:
            bundles[0][0] += s.num_cpus
            bundles[0][1] += s.num_gpus
        slots = [i // per for i in range(int(r.num_engines))] if engines else []
        out.append(Role("rollout", "rollout.num_engines x rollout.num_cpus/gpus_per_engine"
                        " + scoring.num_cpus/gpus, placement.rollout_nodes, "
                        "placement.rollout_resource",
                        [_bundle(c, g, p.rollout_resource) for c, g in bundles], slots))
    return out


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _assign(items: list[tuple[int, dict]], free: list[dict[str, float]],
            used: dict[int, set[int]]) -> bool:
    """Backtracking: every (role index, bundle) on a node with room, a role's bundles on
    distinct nodes (clusters and layouts are small)."""
    if not items:
        return True
    (role, bundle), rest = items[0], items[1:]
    for node, room in enumerate(free):
        if node in used.setdefault(role, set()) or not _fits(bundle, room):
            continue
        for k, v in bundle.items():
            room[k] = room.get(k, 0.0) - v
        used[role].add(node)
        if _assign(rest, free, used):
            return True
        used[role].discard(node)
        for k, v in bundle.items():
            room[k] += v
    return False


def _shown(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(bundle.items()))


def check_fits(layout: list[Role], nodes: list[dict[str, float]]) -> None:
    """PlacementError, one line, unless every role's bundles fit the nodes' resources."""
    def fits(chosen: list[Role]) -> bool:
        items = [(i, b) for i, role in enumerate(chosen) for b in role.bundles]
        items.sort(key=lambda item: -item[1].get("GPU", 0.0) - item[1].get("CPU", 0.0))
        return _assign(items, [dict(n) for n in nodes], {})

    if fits(layout):
        return
    alone = [role for role in layout if not fits([role])]
    layout = alone or layout   # name the role that cannot fit even by itself
    wanted = "; ".join(f"{role.name}: {len(role.bundles)} node(s) with {_shown(role.bundles[0])}"
                       for role in layout)
    have = "; ".join(f"node {i}: {_shown(_offered(n))}" for i, n in enumerate(nodes))
    keys = " / ".join(role.keys for role in layout)
    raise PlacementError(f"the layout does not fit the cluster ({wanted}; the cluster has "
                         f"{have or 'no alive node'}): change {keys}, or add nodes")


def _offered(node: dict[str, float]) -> dict[str, float]:
    # Ray's bookkeeping resources (node:<ip>, memory, object store) say nothing here.
    skip = ("node:", "memory", "object_store_memory", "accelerator_type")
    return {k: v for k, v in node.items() if not k.startswith(skip)}


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


class Placement:
    """The placement groups of a run, created once (restarted actors reuse their bundle);
    `options(role, i)` is what actor i of a role passes to `.options(...)`."""

    def __init__(self, layout: list[Role], timeout_s: float = 300.0, prefix: str = ""):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        self.layout = {role.name: role for role in layout}
        self.groups: dict[str, Any] = {}
        for role in layout:
            self.groups[role.name] = placement_group(role.bundles, strategy="STRICT_SPREAD",
                                                     name=f"{prefix}{role.name}")
        try:
            ready = [g.ready() for g in self.groups.values()]
            _, pending = ray.wait(ready, num_returns=len(ready), timeout=timeout_s)
            if pending:
                raise PlacementError(f"placement groups not placed within {timeout_s:.0f} s "
                                     f"(is another job holding the resources? `ray status`)")
        except BaseException:
            for group in self.groups.values():
                remove_placement_group(group)
            raise

    def options(self, role: str, index: int) -> dict[str, Any]:
        """Ray actor options that put actor `index` of `role` ("learners": rank index;
        "rollout": engine index, or -1 for the scoring actor, on the first rollout node)
        into its node's bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = 0 if index < 0 else self.layout[role].slots[index]
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.groups[role], placement_group_bundle_index=bundle)}

    def remove(self) -> None:
        """Give the bundles' resources back."""
        from ray.util.placement_group import remove_placement_group

        for group in self.groups.values():
            remove_placement_group(group)
        self.groups = {}
