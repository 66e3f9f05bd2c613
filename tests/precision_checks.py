"""How an image made in float16 or bfloat16 is compared with the float32 image of the same seed
(issue 23). Used by tests/test_precision*.py and by benchmarks/bench_sd15_paths.py --check (the GPU
smoke of benchmarks/gpu_check.sh), so this module needs numpy and Pillow only.

Tolerance. The two images differ by rounding alone: every weight and activation is rounded to a unit
roundoff u (float16: 2^-11 ≈ 4.9e-4, bfloat16: 2^-8 ≈ 3.9e-3) and the errors travel through the text
encoder, each sampler step and the VAE, then the pixels are rounded to 8 bits (1/255 = 8u in float16,
1u in bfloat16). Measured on the demo model (64 px, 2-4 steps, pixels in [0, 1]), over every path:
mean |Δ| ≤ 2.1u, largest pixel error ≤ 4/255 in float16 and ≤ 20u in bfloat16. Allowed: mean ≤ 3u
(the 8-bit rounding adds < 0.2u to a mean), max ≤ 40u + 2/255 (the 8-bit rounding of both images). Each test also checks that what it exercises (a LoRA, a blend, an
embedding, a ControlNet ...) moves the fp32 image by more than the bfloat16 tolerance, so a path that
silently lost it in reduced precision would fail.
"""

from __future__ import annotations

import os

import numpy as np

REDUCED = ["float16", "bfloat16"]
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24}
MEAN_U, MAX_U, MAX_LEVELS = 3, 40, 2


def tolerance(dtype: str) -> tuple[float, float]:
    """(largest mean |Δ|, largest |Δ|) allowed between a ``dtype`` image and the fp32 one."""
    u = UNIT_ROUNDOFF[dtype]
    return MEAN_U * u, MAX_U * u + MAX_LEVELS / 255


def as_array(images) -> np.ndarray:
    """Pixels in [0, 1] (float64) of a PIL image or a list of them."""
    if isinstance(images, (list, tuple)):
        return np.stack([as_array(im) for im in images])
    return np.asarray(images.convert("RGB"), dtype=np.float64) / 255.0


def difference(got, ref, dtype: str, what: str) -> str | None:
    """None when ``got`` (a ``dtype`` result) matches the fp32 ``ref``; else why not, in one line."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return f"{what}: shape {got.shape} != fp32's {ref.shape}"
    if not np.isfinite(got).all():
        return f"{what}: non-finite values in {dtype}"
    diff = np.abs(got - ref)
    mean_tol, max_tol = tolerance(dtype)
    if os.environ.get("PRECISION_STATS"):
        u = UNIT_ROUNDOFF[dtype]
        print(f"\nSTATS {what:30s} {dtype:9s} mean {diff.mean() / u:6.2f}u max {diff.max() / u:6.2f}u")
    if diff.mean() <= mean_tol and diff.max() <= max_tol:
        return None
    return (f"{what} in {dtype} is not the fp32 image: mean |Δ| {diff.mean():.2e} (allowed {mean_tol:.2e}), "
            f"max {diff.max():.2e} (allowed {max_tol:.2e})")


def assert_close(got, ref, dtype: str, what: str) -> None:
    why = difference(got, ref, dtype, what)
    assert why is None, why


def assert_moves(changed, unchanged, what: str) -> None:
    """``what`` changes the fp32 image by more than the bfloat16 tolerance (so losing it would show)."""
    diff = np.abs(np.asarray(changed, dtype=np.float64) - np.asarray(unchanged, dtype=np.float64))
    mean_tol, max_tol = tolerance("bfloat16")
    assert diff.mean() > mean_tol or diff.max() > max_tol, f"{what} barely changes the fp32 image: test is blind"
