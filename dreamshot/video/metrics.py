"""Temporal metrics of a frame sequence, so flicker is measured, not guessed (Stanford's restyle study).

- ``psnr``: PSNR (dB) between consecutive output frames; higher = steadier.
- ``t_ssim``: SSIM between consecutive output frames (temporal SSIM); 1 = identical frames.
- ``warp_error``: optical flow between consecutive *input* frames (OpenCV Farnebäck) warps output
  frame t-1 onto frame t; the mean squared difference (RGB in [0, 1]) is the error. Motion that the
  input has is not punished; flicker the input does not have is.

Each is reported per frame pair (list of length frames-1) and as a clip mean. SSIM is the standard
Gaussian-window form (Wang et al. 2004: 11-tap σ=1.5 window, K1=0.01, K2=0.03) on luma, with scipy.
"""

from __future__ import annotations

import math

import numpy as np

KEYS = ("psnr", "t_ssim", "warp_error")
PSNR_CAP = 100.0  # identical frames: report a finite number (JSON has no infinity)


def _array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP if mse <= 1e-12 else min(PSNR_CAP, 10 * math.log10(1.0 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two grey images in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: gaussian_filter(x, sigma=1.5, truncate=3.5)  # noqa: E731 - 11-tap window
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def flow(prev_grey: np.ndarray, next_grey: np.ndarray) -> np.ndarray:
    """Backward flow: for each pixel of ``next``, its displacement to ``prev`` (H×W×2)."""
    import cv2

    to8 = lambda g: np.clip(g * 255, 0, 255).astype(np.uint8)  # noqa: E731
    return cv2.calcOpticalFlowFarneback(to8(next_grey), to8(prev_grey), None, 0.5, 3, 15, 3, 5, 1.2, 0)


def warp(image: np.ndarray, backward_flow: np.ndarray) -> np.ndarray:
    import cv2

    h, w = backward_flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = grid_x + backward_flow[..., 0].astype(np.float32)
    map_y = grid_y + backward_flow[..., 1].astype(np.float32)
    return cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).astype(np.float64)


def temporal_metrics(outputs, inputs=None) -> dict:
    """{key: {"mean": float, "per_frame": [...]}} for the three keys. ``outputs`` and ``inputs`` are
    iterables of PIL images (streamed: two frames in memory); ``inputs`` give the flow for the warping
    error (resized to the outputs' size) - without them the outputs' own flow is used."""
    rows = {k: [] for k in KEYS}
    inputs = iter(inputs) if inputs is not None else None
    prev_out = prev_src = None
    for image in outputs:
        out = _array(image)
        src_image = next(inputs) if inputs is not None else image
        src = _array(src_image.resize(image.size) if src_image.size != image.size else src_image)
        if prev_out is not None:
            rows["psnr"].append(psnr(prev_out, out))
            rows["t_ssim"].append(ssim(_luma(prev_out), _luma(out)))
            back = flow(_luma(prev_src), _luma(src))
            rows["warp_error"].append(float(np.mean((warp(prev_out, back) - out) ** 2)))
        prev_out, prev_src = out, src
    if not rows["psnr"]:
        raise ValueError("temporal metrics need at least two frames")
    return {k: {"mean": float(np.mean(v)), "per_frame": [round(x, 6) for x in v]} for k, v in rows.items()}


def plot(metrics: dict, *, size=(720, 360), title: str = ""):
    """A PIL line chart of per-frame T-SSIM and (scaled) warping error: the flicker, frame by frame."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 48, w - 12, 44, h - 30
    draw.rectangle([left, top, right, bottom], outline="#999")
    text = title or "per-frame temporal metrics"   # right-aligned: UIs put their label top left
    draw.text((right - draw.textlength(text), 20), text, fill="black")
    for frac, label in ((0, "1.0"), (0.5, "0.5"), (1, "0.0")):
        y = top + frac * (bottom - top)
        draw.line([left, y, right, y], fill="#eee")
        draw.text((6, y - 6), label, fill="#555")
    series = [("T-SSIM", metrics["t_ssim"]["per_frame"], "#1f77b4", 1.0)]
    warp_values = metrics["warp_error"]["per_frame"]
    top_warp = max(warp_values) if warp_values and max(warp_values) > 0 else 1.0
    series.append((f"warp error (scaled, max {top_warp:.3g})", warp_values, "#d62728", 1.0 / top_warp))
    n = len(series[0][1])
    for k, (label, values, colour, scale) in enumerate(series):
        points = [(left + (i / max(n - 1, 1)) * (right - left),
                   bottom - max(0.0, min(1.0, v * scale)) * (bottom - top)) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line([left + 8 + k * 260, bottom + 15, left + 26 + k * 260, bottom + 15], fill=colour, width=3)
        draw.text((left + 32 + k * 260, bottom + 8), label, fill=colour)
    draw.text((right - 90, bottom + 8), f"frame pairs: {n}", fill="#555")
    return img
