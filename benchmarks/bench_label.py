"""Label tab speed, measured in one run (a benchmark, not a timed test).

1. Import throughput: frames per second of ``labeling.pool.run_import`` on a folder of JPEG frames
   (1280x720 by default: decode, verify, grayscale check, pHash, near-duplicate search, copy, DB).
2. Keypress -> next frame displayed, in headless Chromium against the served app, on a pool of
   10,000 frames: the time from the browser's keydown to the first animation frame after the new
   image is in the page (median and p95). Target: p95 < 150 ms on this machine.

    .venv/bin/python benchmarks/bench_label.py [--pool 10000] [--import-frames 300] [--keys 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

MEASURE_JS = """
() => {
  window.__lat = []; window.__confirm = [];
  window.__t0 = null;
  document.addEventListener("keydown", () => { window.__t0 = performance.now(); window.__tc = window.__t0; }, true);
  const root = document.querySelector("#label-frame");
  let last = root.querySelector("[data-frame]")?.dataset.frame;
  new MutationObserver(() => {
    const el = root.querySelector("[data-frame]");
    if (!el) return;
    if (!el.dataset.pending && window.__tc !== null && el.dataset.frame !== window.__confirmed) {
      window.__confirmed = el.dataset.frame;   // the server's answer is on screen
      const tc = window.__tc; window.__tc = null;
      window.__confirm.push(performance.now() - tc);
    }
    if (el.dataset.frame === last || window.__t0 === null) return;
    last = el.dataset.frame;
    const t0 = window.__t0; window.__t0 = null;
    const img = el.querySelector("img.lf-crop");
    const done = () => requestAnimationFrame(() => window.__lat.push(performance.now() - t0));
    if (img && !img.complete) img.decode().then(done, done); else done();
  }).observe(root, {subtree: true, childList: true, attributes: true});
}
"""


def make_frames(folder: Path, n: int, size=(1280, 720)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        blocks = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
        img = Image.fromarray(blocks).resize(size, Image.BICUBIC)
        img.save(folder / f"f{i:05d}.jpg", quality=88)


def bench_import(studio, folder: Path, n: int) -> float:
    from labeling import pool

    make_frames(folder, n)
    t = time.perf_counter()
    report = pool.run_import(studio, pool.ImportOptions(str(folder), min_side=256))
    seconds = time.perf_counter() - t
    print(f"import: {report.seen} frames in {seconds:.1f} s = {report.seen / seconds:.1f} frames/s "
          f"({report.kept} kept)")
    return report.seen / seconds


def grow_pool(studio, total: int) -> None:
    """Bring the pool to ``total`` usable frames, reusing the imported image files (unique rows)."""
    import sqlalchemy as sa

    from dreamshot import schema
    from dreamshot.storage import now

    f = schema.frames
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(f.c.path, f.c.width, f.c.height).where(f.c.status == "ok")).all()
        have = len(rows)
    with studio.db.write() as conn:
        batch = []
        for i in range(total - have):
            r = rows[i % len(rows)]
            batch.append(dict(source=f"bench/{i}", path=r.path, content_hash=f"bench{i:059d}", width=r.width,
                              height=r.height, mode="RGB", meta={}, status="ok", split="train", created_at=now()))
        for j in range(0, len(batch), 1000):
            conn.execute(f.insert(), batch[j:j + 1000])
    print(f"pool: {total} frames")


def bench_keys(studio, keys: int) -> tuple[list[float], list[float]]:
    import app as app_module
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM, CHROMIUM_ARGS, free_port

    demo = app_module.build_app(studio)
    kwargs = app_module.launch_kwargs(studio)
    port = free_port()
    kwargs.update(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    demo.queue(default_concurrency_limit=2).launch(**kwargs)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#label-frame [data-frame]")
            page.get_by_label("Annotator name").fill("bench")
            page.get_by_role("button", name="Start / resume").click()
            page.wait_for_selector("#label-frame [data-frame] img.lf-crop")
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.evaluate(MEASURE_JS)
            seq = "1231231x23"
            for i in range(keys):
                before = page.evaluate("window.__confirm.length")
                page.keyboard.press(seq[i % len(seq)])
                # wait for the server's answer too, so each press is measured on its own
                page.wait_for_function(f"window.__confirm.length > {before} && window.__lat.length > {before}",
                                       timeout=10_000)
            lat = page.evaluate("[window.__lat, window.__confirm]")
            browser.close()
    finally:
        demo.close()
    return lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--import-frames", type=int, default=300)
    parser.add_argument("--keys", type=int, default=120)
    args = parser.parse_args()

    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    tmp = Path(tempfile.mkdtemp(prefix="bench-label-"))
    # importing app.py opens a studio from the environment: keep it in the temp folder too
    os.environ["DREAMSHOT_DATA"] = str(tmp / "app-import")
    os.environ["DREAMSHOT_MODEL"] = "demo"
    studio = Studio.open(Settings(data_dir=tmp / "data", model="demo"))
    try:
        fps = bench_import(studio, tmp / "frames", args.import_frames)
        grow_pool(studio, args.pool)
        shown, confirmed = bench_keys(studio, args.keys)
    finally:
        studio.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for name, values in (("keypress -> next frame displayed", shown),
                         ("keypress -> server answer displayed (label saved)", confirmed)):
        warm = values[5:]  # the first presses warm the page and the prefetch cache
        med = statistics.median(warm)
        p95 = sorted(warm)[int(0.95 * (len(warm) - 1))]
        print(f"{name} ({len(warm)} presses, pool {args.pool}): median {med:.0f} ms, p95 {p95:.0f} ms, "
              f"max {max(warm):.0f} ms; p95/150 ms target = {p95 / 150:.2f}")
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores")
    print(f"import throughput: {fps:.1f} frames/s (1280x720 JPEG)")


if __name__ == "__main__":
    main()
