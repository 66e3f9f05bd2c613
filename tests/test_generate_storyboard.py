"""α sweeps, storyboards (PNG + PDF) and the headless CLI (python -m dreamshot ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dreamshot.generate import pngmeta
from dreamshot.__main__ import main
from dreamshot.errors import InvalidInput
from dreamshot.generate.service import service
from dreamshot.generate.storyboard import alpha_sweep, parse_storyboard, save_storyboard, storyboard
from tests.generate_fixtures import fast, gen_studio, lora_files, one_torch_thread, pixels  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_alpha_sweep_grid_matches_single_generations(gen_studio):
    svc = service(gen_studio)
    result = alpha_sweep(svc, fast(seed=-1), ["close", "medium"], "0, 1")
    assert [[c.seed for c in row] for row in result.cells] == [[result.cells[0][0].seed] * 2] * 2
    assert result.grid.width > 2 * 64 and result.grid.height > 2 * 64
    seed = result.cells[0][0].seed
    single = svc.generate(fast(shot="medium", alpha=1, seed=seed))
    assert np.array_equal(pixels(result.cells[1][1].image), pixels(single))
    base_close = svc.generate(fast("a high-quality close shot picture of a woman reading a letter",
                                   use_template=False, seed=seed))
    assert np.array_equal(pixels(result.cells[0][0].image), pixels(base_close))   # α=0 column = base
    assert "Sweep:" in result.parameters
    every = alpha_sweep(svc, fast(seed=3, steps=2), [], "1")          # no shots: every shot type with a LoRA
    assert every.shots == ["close", "medium"]
    with pytest.raises(InvalidInput, match="α must be"):
        alpha_sweep(svc, fast(), ["close"], "0, 2")
    with pytest.raises(InvalidInput, match="numbers"):
        alpha_sweep(svc, fast(), ["close"], "0, x")


def test_storyboard_contact_sheet_png_and_pdf(gen_studio, tmp_path):
    svc = service(gen_studio)
    text = "# act one\nmedium | a lighthouse on a cliff\nclose | the keeper's face\n\na gull over the sea"
    result = storyboard(svc, text, fast(prompt="-"), columns=2, title="Act one")
    assert [(p.number, p.shot) for p in result.panels] == [(1, "medium"), (2, "close"), (3, None)]
    assert len({p.seed for p in result.panels}) == 1
    save_storyboard(result, tmp_path)
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.pdf_path.read_bytes()[:5] == b"%PDF-"
    sheet = Image.open(result.png_path)
    assert sheet.width >= 2 * 64 and sheet.height > 2 * 64
    assert "2. [close] the keeper's face" in pngmeta.read_parameters(result.png_path)


def test_sweep_without_any_lora_says_so(studio):
    with pytest.raises(InvalidInput, match="No shot LoRA yet"):
        alpha_sweep(service(studio), fast(), [], "0,1")


def test_storyboard_input_errors(gen_studio):
    with pytest.raises(InvalidInput, match="empty"):
        parse_storyboard("\n# only a comment\n")
    with pytest.raises(InvalidInput, match="line 2"):
        parse_storyboard("close | ok\nclose |   ")
    with pytest.raises(InvalidInput, match="No LoRA for the shot type 'long'"):
        storyboard(service(gen_studio), "long | a lighthouse", fast(prompt="-"))


def test_cli_generate_read_png_sweep_storyboard_loras(gen_studio, lora_files, tmp_path, capsys):
    common = ["--data", str(gen_studio.settings.data_dir), "--model", "demo"]
    size = ["--width", "64", "--height", "64", "--steps", "3"]
    assert main(["generate", *common, "-p", "a dog", "--shot", "close", "--alpha", "0.7", "--seed", "5",
                 "-n", "2", *size, "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [img["seed"] for img in summary["images"]] == [5, 6]
    assert main(["read-png", *common, "--json", summary["images"][0]["path"]]) == 0
    restored = json.loads(capsys.readouterr().out)["request"]
    assert (restored["prompt"], restored["shot"], restored["alpha"], restored["seed"]) == ("a dog", "close", 0.7, 5)
    assert main(["sweep", *common, "-p", "a dog", "--shots", "close", "--alphas", "0,1", *size,
                 "--out", str(tmp_path / "sweep.png")]) == 0
    assert Image.open(tmp_path / "sweep.png").width > 2 * 64
    (tmp_path / "board.txt").write_text("close | a dog\nmedium | a cat\n")
    assert main(["storyboard", *common, str(tmp_path / "board.txt"), *size, "--out", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "storyboard.pdf").is_file()
    assert main(["loras", "add", str(lora_files["close_kohya"]), "--name", "k", *common]) == 0
    assert main(["generate", *common, "-p", "a dog", "--shot", "nope", *size]) == 2
    capsys.readouterr()
    assert main(["loras", *common]) == 0
    listing = capsys.readouterr().out
    assert "close" in listing and "kohya" in listing and "uploaded" in listing


def test_cli_runs_as_a_module(gen_studio, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "dreamshot", "generate", "--data", str(gen_studio.settings.data_dir),
                          "--model", "demo", "-p", "a boat", "--shot", "medium", "--seed", "9", "--width", "64",
                          "--height", "64", "--steps", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    [png] = list(tmp_path.glob("*.png"))
    assert "<lora:medium:1>" in pngmeta.read_parameters(png) and "seed 9" in run.stdout
