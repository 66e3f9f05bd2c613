"""``python -m dreamshot read-png`` as a user runs it: no studio needed, nothing created, one line and
exit status 2 for a file that is not an image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dreamshot.generate import pngmeta

ROOT = Path(__file__).resolve().parents[1]


def read_png(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMSHOT_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "dreamshot", "read-png", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_read_png_of_a_text_file_is_one_line_and_status_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    done = read_png(tmp_path, "notes.txt")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: notes.txt is not an image that can be read (PNG, JPEG or WebP)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]        # no ./studio-data


def test_read_png_prints_settings_without_a_studio(tmp_path):
    text = ("a man <lora:close:0.8>\nSteps: 16, Sampler: DPM++ SDE Karras, CFG scale: 6, Seed: 42, Size: 512x512")
    pngmeta.save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", text)
    plain = read_png(tmp_path, "a.png")
    assert plain.returncode == 0 and "Seed: 42" in plain.stdout
    as_json = read_png(tmp_path, "a.png", "--json")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and data["request"]["seed"] == 42
    assert data["notes"] == ["LoRA 'close' is not in this studio's library; it was left out."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_controlnet_without_an_image_names_the_flag_that_gives_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMSHOT_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "dreamshot", "generate", "--data", str(tmp_path / "data"), "--model",
                           "demo", "--prompt", "a man on a bridge", "--control", "canny"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ControlNet needs a reference image:")
    assert "(on the command line: --control-image FILE)" in done.stderr
