"""driver.data_stream: seeded per-epoch order, exact resume, unreadable images skipped."""

from __future__ import annotations

import json
import threading

import pytest
from PIL import Image

from driver.data_stream import DataError, DataStream


def _samples(tmp_path, n, broken=()):
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        if i in broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            Image.new("RGB", (8, 8), (i, i, i)).save(path)
        out.append({"id": f"s{i}", "images": [str(path)]})
    return out


def test_stream_is_seeded_per_epoch_and_resumes_exactly(tmp_path):
    samples = _samples(tmp_path, 10)
    a = DataStream(samples, batch_size=3, seed=7)
    first = [[s["id"] for s in a.next_batch()[1]] for _ in range(5)]  # crosses an epoch
    # 10 samples, batches of 3: 3 per epoch, the tail of 1 dropped; batch 4 is epoch 1.
    assert a.epoch == 1 and a.steps_per_epoch == 3
    assert len({i for batch in first[:3] for i in batch}) == 9
    b = DataStream(samples, batch_size=3, seed=7)
    b.next_batch(), b.next_batch()
    state = json.loads(json.dumps(b.state()))      # survives the checkpoint's JSON
    c = DataStream(samples, batch_size=3, seed=7)
    c.load_state(state)
    assert [[s["id"] for s in c.next_batch()[1]] for _ in range(3)] == first[2:]
    other = DataStream(samples, batch_size=3, seed=8)
    assert [[s["id"] for s in other.next_batch()[1]] for _ in range(3)] != first[:3]
    with pytest.raises(ValueError, match="run.seed"):
        other.load_state(state)


def test_stream_skips_and_counts_unreadable_images(tmp_path):
    samples = _samples(tmp_path, 6, broken={1, 4})
    stream = DataStream(samples, batch_size=2, seed=0, shuffle=False)
    ids = [s["id"] for _ in range(2) for s in stream.next_batch()[1]]
    assert ids == ["s0", "s2", "s3", "s5"]
    assert set(stream.skipped) == {"s1", "s4"}
    all_broken = DataStream(_samples(tmp_path, 2, broken={0, 1}), batch_size=1, seed=0)
    with pytest.raises(DataError, match="usable"):
        all_broken.next_batch()


def _next_batch_within(stream: DataStream, seconds: float):
    """stream.next_batch() on a thread: its result or error, or "hung" after `seconds`
    (the thread is a daemon: a regression fails the test instead of hanging the suite)."""
    out: dict = {}

    def draw():
        try:
            out["batch"] = stream.next_batch()
        except Exception as err:   # noqa: BLE001 - handed to the test
            out["error"] = err

    worker = threading.Thread(target=draw, daemon=True)
    worker.start()
    worker.join(seconds)
    return "hung" if worker.is_alive() else out


@pytest.mark.parametrize("n, broken, batch_size", [
    (10, (), 11),        # a batch larger than the whole set
    (6, (1, 4), 5),      # 4 usable of 6: enough samples, too few of them usable
])
def test_a_batch_that_no_epoch_can_fill_is_refused_not_awaited(tmp_path, n, broken, batch_size):
    """Before, the "drop the epoch's tail" branch moved on to the next epoch without
    drawing, so the guard counting draws never fired: 10 usable samples with batch_size 11
    spun at 100% CPU for ever."""
    stream = DataStream(_samples(tmp_path, n, broken=set(broken)), batch_size=batch_size,
                        seed=0)
    got = _next_batch_within(stream, 20)
    assert got != "hung"
    assert isinstance(got.get("error"), DataError), got
    assert f"fewer than {batch_size} samples" in str(got["error"])


def test_results_of_an_earlier_check_are_reused(tmp_path):
    samples = _samples(tmp_path, 4)
    calls = []
    stream = DataStream(samples, batch_size=2, seed=0, shuffle=False, check=calls.append,
                        checked=({"s0", "s1", "s3"}, {"s2": "image too small"}))
    ids = [s["id"] for _ in range(2) for s in stream.next_batch()[1]]
    # Epoch 0: s0 s1, then s3 alone (s2 skipped) is a tail: dropped, epoch 1 starts over.
    assert ids == ["s0", "s1", "s0", "s1"] and calls == []   # nothing checked again
    assert stream.skipped == {"s2": "image too small"}
