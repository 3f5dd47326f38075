"""When something that runs every N steps is due: one rule for every such setting.

conf `eval.every` (validation), `checkpoint.every` and `eval.nothink_acc_every` all say
"every N steps"; each adds the steps it always runs at (validation the starting point and
the last step, checkpoints the last step, the no-think accuracy the first step).
"""

from __future__ import annotations

from collections.abc import Iterable


def due(step: int, every: int, always: Iterable[int] = ()) -> bool:
    """True at the steps in `always`, and, when `every` > 0, at every positive multiple
    of it (0 turns the periodic part off)."""
    return step in set(always) or (every > 0 and step > 0 and step % every == 0)
