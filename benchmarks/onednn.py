"""TensorFlow's oneDNN kernels on and off: one training step of the U-Net, and its first convolution.

Run: ``.venv/bin/python benchmarks/onednn.py [--smoke]`` (about 4 minutes on 2 cores
without AVX-512; ``--smoke`` times only the first convolution at batch 1, about a minute).

TensorFlow turns oneDNN on by itself only on x86 CPUs with AVX-512 VNNI, BF16 or AMX.
Elsewhere the gradient of the U-Net's first convolution (7x7x7, stride 2, one input
channel) runs a naive kernel. Each setting is measured in a fresh process, since the
variable ``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow is imported; the
ratio is against the oneDNN run of the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
smoke = sys.argv[1] == "1"
batch = 1 if smoke else 4
x = tf.random.normal((batch, 38, 38, 38, 1))
w = tf.Variable(tf.random.normal((7, 7, 7, 1, 64)))
def conv_grad():
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(tf.nn.conv3d(x, w, [1, 2, 2, 2, 1], "VALID"))
    return [g.numpy() for g in tape.gradient(y, [x, w])]
conv_grad()
t = time.perf_counter(); conv_grad(); out = {"conv0_gradient_s": time.perf_counter() - t}
if not smoke:
    from helpers.model import build_unet
    model = build_unet(4, patch_size=32)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    xb = np.random.default_rng(0).random((batch, 32, 32, 32, 1), dtype=np.float32)
    yb = np.eye(4, dtype=np.float32)[np.zeros((batch, 32, 32, 32), int)]
    model.train_on_batch(xb, yb)
    t = time.perf_counter(); model.train_on_batch(xb, yb); out["train_step_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def measure(onednn: bool, smoke: bool) -> dict[str, float]:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "1" if smoke else "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="first convolution only, batch 1")
    args = parser.parse_args()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    wide = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU flags of note: {wide or 'none'}")
    on, off = measure(True, args.smoke), measure(False, args.smoke)
    print(f"| batch {1 if args.smoke else 4}, 32³ | oneDNN on | oneDNN off | off / on |")
    print("|---|---|---|---|")
    for key in on:
        print(f"| {key} | {on[key]:.2f} s | {off[key]:.2f} s | {off[key] / on[key]:.1f} × |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
