"""weight_sync.buckets and weight_sync.transport: the sending end's pure parts."""

from __future__ import annotations

import pytest
import torch

from weight_sync.buckets import iter_gathered_buckets, plan_buckets, state_tensors
from weight_sync.transport import TRANSPORTS, make_transport


def test_plan_buckets_never_splits_a_tensor():
    sizes = [("a", 4), ("b", 4), ("c", 10), ("d", 1), ("e", 2)]
    assert plan_buckets(sizes, 8) == [["a", "b"], ["c"], ["d", "e"]]
    with pytest.raises(ValueError, match="positive"):
        plan_buckets(sizes, 0)


def test_plan_buckets_keeps_a_lora_layer_together():
    from weight_sync.lora import module_of

    # q's base weight (6 bytes) and its two adapter tensors (1 each) make one unit of 8:
    # a bucket of 8 cannot take it after "n" (2), so the unit starts the next bucket whole.
    sizes = [("m.n.weight", 2), ("m.q.base_layer.weight", 6), ("m.q.lora_A.default.weight", 1),
             ("m.q.lora_B.default.weight", 1), ("m.k.weight", 3)]
    assert plan_buckets(sizes, 8, module_of) == [
        ["m.n.weight"], ["m.q.base_layer.weight", "m.q.lora_A.default.weight",
                         "m.q.lora_B.default.weight"], ["m.k.weight"]]
    assert plan_buckets(sizes, 8) == [["m.n.weight", "m.q.base_layer.weight"],
                                      ["m.q.lora_A.default.weight",
                                       "m.q.lora_B.default.weight", "m.k.weight"]]


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight  # tied, as some LMs tie lm_head
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("scale", torch.ones(3))


def test_buckets_cover_every_state_dict_key_including_tied_and_buffers():
    module = _Tied()
    names = [n for n, _ in state_tensors(module)]
    assert names == list(module.state_dict())
    buckets = list(iter_gathered_buckets(module, bucket_bytes=40, zero3=False, keep=True))
    merged = {k: v for b in buckets for k, v in b.items()}
    assert merged.keys() == module.state_dict().keys()
    assert len(buckets) > 1 and all(len(b) >= 1 for b in buckets)
    torch.testing.assert_close(merged["head.weight"], module.embed.weight.detach())
    others = list(iter_gathered_buckets(module, bucket_bytes=40, zero3=False, keep=False))
    assert len(others) == len(buckets) and all(b == {} for b in others)


def test_transport_choice_is_the_registry():
    assert type(make_transport("object_store")).__name__ == "ObjectStoreTransport"
    assert type(make_transport("collective")).__name__ == "CollectiveTransport"
    with pytest.raises(ValueError, match=r"choose one of \['collective', 'object_store'\]"):
        make_transport("carrier_pigeon")
    # The conf loader offers exactly the registry's names; the old `nccl` value is gone
    # (the collective transport with weights.backend=nccl replaces it).
    from conf import ConfigError, load_config

    assert list(TRANSPORTS) == ["object_store", "collective"]
    with pytest.raises(ConfigError, match="weights.transport"):
        load_config("tiny", ["weights.transport=nccl"])
    with pytest.raises(ConfigError, match="weights.backend"):
        load_config("tiny", ["weights.backend=mpi"])


def test_the_kept_group_is_named_again_only_when_reuse_allows():
    from weight_sync.group import KeptGroup

    ports = iter(range(5000, 5010))
    kept = KeptGroup(lambda: ("127.0.0.1", next(ports)), "gloo", 30.0)
    first = kept.push(2, reuse=False)
    assert (first["port"], first["world_size"], first["backend"]) == (5000, 3, "gloo")
    assert kept.push(2, reuse=True) == first                  # the same group, no new socket
    assert kept.push(2, reuse=False)["port"] == 5001          # members changed: a new one
    assert kept.push(1, reuse=True)["world_size"] == 2        # another size cannot reuse it
    again = KeptGroup(lambda: ("127.0.0.1", 5000), "gloo", 30.0).push(2, reuse=False)
    assert again["id"] != first["id"]   # a restarted learner group on the same port
    assert kept.opened == 3
