"""The README's screenshots, taken from the running studio on the offline demo model.

    python docs/make_screenshots.py            # about 3 minutes on 2 CPU cores; needs Chromium + Playwright

Seeds a fresh data folder with the CLIs alone (a small pool of the photos shipped in the gradio wheel,
labeled; demo captions; a smoke LoRA; an open survey), serves ``python app.py`` on the demo model,
opens each tab in headless Chromium, does what a new user would do first there (press Generate, show
the stats, …) and writes ``docs/img/<tab>.png`` (and the participant's page at phone width). The
pictures are the demo model's: random weights, so generated images are noise, as the banner says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gradio
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
PHOTOS = Path(gradio.__file__).parent / "media_assets" / "images"
VIDEOS = Path(gradio.__file__).parent / "media_assets" / "videos"
CHROMIUM = os.environ.get("DREAMSHOT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
LABELS = {"tower.jpg": "long", "groot.jpeg": "close", "cheetah.jpg": "medium", "lion.jpg": "close",
          "cheetah1.jpg": "long"}


def run(env: dict, *args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def seed(data: Path, env: dict) -> None:
    """A studio a new user has walked through once: frames labeled and captioned, a LoRA, a survey."""
    pool = data / "pool"
    pool.mkdir(parents=True)
    for name in LABELS:
        shutil.copyfile(PHOTOS / name, pool / name)
    labels = data / "labels.csv"
    labels.write_text("file,shot\n" + "".join(f"{n},{s}\n" for n, s in LABELS.items()))
    run(env, "-m", "labeling", "import", str(pool), "--labels", str(labels), "--min-side", "64")
    held = data / "held"
    held.mkdir()
    for name in ("lion.jpg", "groot.jpeg"):   # held-out close-ups for the evaluation (a different crop)
        Image.open(PHOTOS / name).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(held / f"held_{name}")
    (held / "labels.csv").write_text("file,shot\nheld_lion.jpg,close\nheld_groot.jpeg,close\n")
    run(env, "-m", "labeling", "import", str(held), "--labels", str(held / "labels.csv"), "--min-side", "64",
        "--split", "test")
    run(env, "-m", "labeling", "import", str(VIDEOS / "b.mp4"), "--min-side", "64")
    run(env, "-m", "labeling", "caption", "--model", "demo")
    run(env, "-m", "labeling", "caption", "--model", "demo", "--split", "test")
    run(env, "-m", "training", "--shots", "close", "--preset", "smoke", "--resolution", "64",
        "--max-steps", "4", "--validation-steps", "0", "--checkpoint-steps", "0")
    run(env, "-m", "dreamshot", "survey", "build", "--name", "tour", "--shots", "close", "--pairs", "2",
        "--per-participant", "2", "--prompts", str(_prompts(data)), "--steps", "2", "--size", "64", "--seed", "1")
    run(env, "-m", "dreamshot", "survey", "open", "tour")
    run(env, "-m", "dreamshot", "evaluate", "--out", str(data / "studio" / "evaluations" / "eval"), "--shots", "close",
        "--pairs", "2", "--width", "64", "--height", "64", "--steps", "2", "--alpha-values", "0,0.5,1", "--seed", "1")


def _prompts(data: Path) -> Path:
    path = data / "prompts.txt"
    path.write_text("a woman reading a letter by a window\na man crossing a bridge at dusk\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(env: dict, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "running on" in line:
            return proc, f"http://127.0.0.1:{port}/"
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the studio did not start: " + (proc.stdout.read() if proc.stdout else ""))


def shoot(page, name: str, top=None) -> None:
    """The page from its top (title, banner, tab bar), or from the element ``top`` when the tab's result
    is further down."""
    OUT.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(600)   # let Gradio's transitions settle
    if top is None:
        page.evaluate("window.scrollTo(0, 0)")
    else:
        top.evaluate("el => el.scrollIntoView({block: 'start'})")
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    # 256 colours: the UI stays crisp, the demo model's noise pictures stop weighing a megabyte each
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print("wrote", path.relative_to(ROOT), flush=True)


def tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()
    page.wait_for_timeout(500)


def studio_pages(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Label").wait_for()
    page.get_by_label("Annotator name").first.fill("ana")
    page.get_by_role("button", name="Start / resume").first.click()
    page.locator("#label-frame img").first.wait_for(timeout=60_000)
    shoot(page, "label")
    tab(page, "Captions")
    page.get_by_text("Training prompt").first.wait_for()
    shoot(page, "captions")
    tab(page, "Train")
    shoot(page, "train")
    tab(page, "Generate")
    page.locator("#gen-prompt textarea").fill("a woman reading a letter by a window")
    page.locator("#gen-go").click()
    page.locator("#gen-gallery img").first.wait_for(timeout=120_000)
    shoot(page, "generate")
    tab(page, "Survey")
    page.get_by_text("Survey admin (build, open / close, results)").click()
    admin = page.locator("#survey-admin")
    admin.get_by_role("tab", name="Manage and results").click()
    admin.get_by_label("Survey", exact=True).fill("tour")
    admin.get_by_role("button", name="Show results").click()
    admin.get_by_text("answers counted").first.wait_for(timeout=60_000)
    shoot(page, "survey-admin", top=admin)
    tab(page, "Evaluate")
    results = page.locator("#eval-show")
    results.click()
    page.get_by_text("Table 3").first.wait_for(timeout=60_000)
    shoot(page, "evaluate", top=results)
    tab(page, "Video")
    page.locator("#vid-prompt textarea").fill("a lighthouse at dusk")
    page.get_by_text("Advanced settings").filter(visible=True).first.click()
    for field, value in (("#vid-frames", "8"), ("#vid-width", "128"), ("#vid-height", "128"), ("#vid-steps", "8")):
        number = page.locator(f"{field} input[type=number]")
        number.fill(value)
        number.press("Enter")
    page.get_by_text("Advanced settings").filter(visible=True).first.click()
    page.locator("#vid-go").click()
    page.locator("#vid-gif img").wait_for(timeout=300_000)
    shoot(page, "video")


def participant_page(page, url: str) -> None:
    """A participant on a phone: the first pair, then every pair answered with the keys (A, B, N), so
    the admin's Table 5 has votes to show."""
    page.goto(url + "?survey=tour")
    page.locator("#survey-start").click()
    page.locator("#survey-img-b img").wait_for(timeout=60_000)
    shoot(page, "survey-phone")
    for pair in range(3):
        for key in "ABN"[pair:] + "ABN"[:pair]:
            page.keyboard.press(key.lower())
            page.wait_for_timeout(500)
        page.wait_for_timeout(1500)   # the next pair's pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the seeded studio in this folder and reuse it next time")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    data = args.work or Path(tempfile.mkdtemp(prefix="dreamshot-shots-"))
    env = {**os.environ, "DREAMSHOT_DATA": str(data / "studio"), "DREAMSHOT_MODEL": "demo", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        if not (data / "studio").exists():
            seed(data, env)
        studio, url = serve(env)
        procs.append(studio)
        survey, survey_url = serve(env, "--survey-only")
        procs.append(survey)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1).new_page()
            phone.set_default_timeout(60_000)
            participant_page(phone, survey_url)
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.set_default_timeout(60_000)
            studio_pages(page, url)
            browser.close()
    finally:
        for proc in procs:
            proc.terminate()
        if not args.work:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
