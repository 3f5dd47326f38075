"""Build DeepSpeed's CPU Adam op once, ahead of time, instead of on first use.

Why: with ZeRO offload on a GPU machine (`learner.offload: true`), `learner/model_setup.py`
uses `deepspeed.ops.adam.DeepSpeedCPUAdam`, which DeepSpeed compiles the first time it is
used, on every learner node, inside the training run: minutes of g++ per node, a missing
toolchain found only then, and ranks that share one torch_extensions lock (a lock left by
a killed build hangs them). Built here at install time (`make setup EXTRA=gpu`), a later
load finds the build up to date and only checks it (ninja must still be on PATH for that).

What it does:
1. Checks the toolchain: a C++ compiler ($CXX, else `c++` or `g++`), `ninja` (on PATH or
   the pip package in this environment's bin folder) and the Python headers (Python.h).
   If any is missing it prints one line per missing thing and what to install, exit 1.
2. Unless --check: `CPUAdamBuilder().load()`, DeepSpeed's own JIT build, which writes to
   torch's extensions folder ($TORCH_EXTENSIONS_DIR, default
   ~/.cache/torch_extensions/py<ver>_<cuda|cpu>/cpu_adam), the folder a training run on
   this machine, as this user, with this environment, loads from.

Usage: python scripts/build_cpu_adam.py [--check]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path


def venv_bin() -> Path:
    """This environment's scripts folder, where pip's `ninja` package puts its binary."""
    return Path(sysconfig.get_path("scripts"))


def python_header() -> Path:
    return Path(sysconfig.get_paths()["include"]) / "Python.h"


def find_ninja() -> str | None:
    found = shutil.which("ninja")
    if found:
        return found
    local = venv_bin() / "ninja"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def missing_tools() -> list[str]:
    """One line per missing build requirement, naming what to install; empty when all are there."""
    missing = []
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++"]
    if not any(shutil.which(c) for c in compilers):
        missing.append(f"no C++ compiler ({' or '.join(compilers)} not found): "
                       "apt-get install g++ (or your OS's g++ package)")
    if find_ninja() is None:
        missing.append(f"no ninja (not on PATH nor in {venv_bin()}): pip install ninja "
                       "(or apt-get install ninja-build)")
    header = python_header()
    if not header.is_file():
        missing.append(f"no Python headers ({header} not found): apt-get install python3-dev "
                       f"(the python{sys.version_info.major}.{sys.version_info.minor}-dev "
                       "package matching this interpreter)")
    return missing


def build() -> Path:
    """Build (or find up to date) the op; returns the path of the loaded extension module."""
    ninja = find_ninja()
    if ninja is not None and shutil.which("ninja") is None:
        # torch runs `ninja` by name: put the environment's own on PATH for this build.
        os.environ["PATH"] = f"{Path(ninja).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from deepspeed.ops.op_builder import CPUAdamBuilder

    builder = CPUAdamBuilder()
    if not builder.is_compatible(verbose=True):
        raise RuntimeError(f"DeepSpeed says cpu_adam cannot be built here: {builder.error_log}")
    module = builder.load(verbose=False)
    return Path(module.__file__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build DeepSpeed's CPU Adam (ZeRO offload's optimizer) ahead of time, "
                    "after checking that g++, ninja and the Python headers are there.")
    parser.add_argument("--check", action="store_true",
                        help="only check the toolchain (exit 1 and name what is missing)")
    args = parser.parse_args(argv)

    missing = missing_tools()
    if missing:
        print("cannot build DeepSpeed's CPU Adam (needed by ZeRO offload on GPUs):",
              file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    if args.check:
        print("toolchain OK: C++ compiler, ninja and Python headers found")
        return 0

    print("building DeepSpeed's CPU Adam op (a few minutes the first time) ...", flush=True)
    start = time.monotonic()
    try:
        path = build()
    except Exception as err:  # no traceback: torch's message carries the compiler's output
        print(f"cpu_adam build failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"built cpu_adam in {time.monotonic() - start:.0f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
