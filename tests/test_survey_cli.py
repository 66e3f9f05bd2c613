"""``python -m dreamshot survey ...``: build (a real subprocess), open, list, results (Table 5, CSV,
JSON), participants, exclude/include, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dreamshot.__main__ import main
from dreamshot.survey.service import QUESTIONS, service
from tests.survey_helpers import gen_studio, lora_files  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def test_survey_cli_end_to_end(gen_studio, tmp_path, capsys):
    data = str(gen_studio.settings.data_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# survey prompts\na cat on a roof\nmedium | a dog in the rain\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "dreamshot", "survey", "build", "--data", data, "--model", "demo",
                          "--name", "cli", "--shots", "close,medium", "--pairs", "2", "--per-participant", "1",
                          "--prompts", str(prompts), "--steps", "2", "--size", "64", "--seed", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "cli: draft, 2/2 pairs ready" in run.stdout

    common = ["--data", data, "--model", "demo"]
    assert main(["survey", "open", "cli", *common]) == 0
    assert main(["survey", "list", *common]) == 0
    assert "cli: open, 2/2 pairs ready" in capsys.readouterr().out
    svc = service(gen_studio)
    token = svc.join("cli", "", "198.51.100.2")
    while not (view := svc.view(token))["finished"]:
        for q in QUESTIONS:
            svc.answer(token, view["slot"], view["pair_id"], q, "B", "198.51.100.2")
    out_csv = tmp_path / "out" / "answers.csv"
    assert main(["survey", "results", "cli", "--csv", str(out_csv), *common]) == 0
    text = capsys.readouterr().out
    assert "| like |" in text and "Wilson" in text and "6 answers written" in text
    assert out_csv.read_text().count("\n") == 1 + 2 * len(QUESTIONS)
    assert main(["survey", "results", "cli", "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"]["answers"] == 3 and len(doc["answers"]) == 6
    assert main(["survey", "exclude", "cli", token[:8], "--reason", "test", *common]) == 0
    assert main(["survey", "participants", "cli", *common]) == 0
    assert "EXCLUDED (test)" in capsys.readouterr().out
    assert main(["survey", "close", "cli", *common]) == 0
    assert main(["survey", "open", "nope", *common]) == 2
    assert "No survey called 'nope'" in capsys.readouterr().err
