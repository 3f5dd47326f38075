"""The placement groups of a run: one Ray placement group per role, spread over nodes.

Each role of cluster.resources.layout becomes one placement group of one bundle per node,
strategy STRICT_SPREAD: its nodes are distinct; two roles may share a node. Colocated
(placement.colocate), the learner role's group holds one bundle per rank, strategy PACK,
and the rollout role lives in it too. The groups are created once and held for the run,
so an actor Ray restarts, or a learner group started again from a checkpoint, takes the
same bundle.
"""

from __future__ import annotations

from typing import Any

from cluster.resources import PlacementError, Role


class Placement:
    """The placement groups of a run, created once (restarted actors reuse their bundle);
    `options(role, i)` is what actor i of a role passes to `.options(...)`."""

    def __init__(self, layout: list[Role], timeout_s: float = 300.0, prefix: str = ""):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        self.layout = {role.name: role for role in layout}
        self.groups: dict[str, Any] = {}
        for role in layout:
            if not role.group:   # a role living in another's group adds none
                self.groups[role.name] = placement_group(role.bundles, strategy=role.strategy,
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
        into its bundle; colocated, also the GPU share each asks for."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.layout[role]
        bundle = spec.scorer_slot if index < 0 else spec.slots[index]
        options: dict[str, Any] = {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.groups[spec.group or role],
            placement_group_bundle_index=bundle)}
        if spec.gpu_share is not None:
            options["num_gpus"] = spec.gpu_share
        return options

    def remove(self) -> None:
        """Give the bundles' resources back."""
        from ray.util.placement_group import remove_placement_group

        for group in self.groups.values():
            remove_placement_group(group)
        self.groups = {}
