"""Fixtures for tests/test_survey*.py: a studio with 'close' and 'medium' LoRAs and a small,
fast survey built on the demo model (64 px, 2 steps)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.storage import now
from dreamshot.survey.build import SurveySpec
from dreamshot.survey.service import service
from tests.generate_fixtures import gen_studio, lora_files  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a woman reading a letter", "a man crossing a bridge", "two children on a beach"]


def small_spec(name="pilot", pairs=4, per_participant=2, **kw) -> SurveySpec:
    kw = {"prompts": list(PROMPTS), "seed": 3, "steps": 2, "width": 64, "height": 64, **kw}
    return SurveySpec(name=name, shots=["close", "medium"], pairs=pairs, per_participant=per_participant, **kw)


@pytest.fixture
def open_survey(gen_studio, one_torch_thread):
    """A built and opened survey 'pilot' (4 pairs, 2 per participant + 1 repeat)."""
    svc = service(gen_studio)
    svc.build(small_spec())
    svc.set_state("pilot", "open")
    return gen_studio


def add_frames(studio, specs: list[tuple[str, str | None, str | None]]) -> list[int]:
    """Insert frames (split, label shot or None, caption or None) without images; returns ids."""
    f, c, labels = schema.frames, schema.captions, schema.labels
    ids = []
    with studio.db.write() as conn:
        for i, (split, shot, caption) in enumerate(specs):
            fid = conn.execute(f.insert().values(source=f"f{i}.png", path=f"f{i}.png", content_hash=f"h{i}-{now()}",
                                                 meta={}, status="ok", split=split, created_at=now())).inserted_primary_key[0]
            if shot:
                conn.execute(labels.insert().values(frame_id=fid, annotator="ann", taxonomy="paper", action="label",
                                                    shot=shot, is_extra=False, created_at=now()))
            if caption:
                conn.execute(c.insert().values(frame_id=fid, caption=caption, caption_original=caption,
                                               reviewed=False, version=1, created_at=now(), updated_at=now()))
            ids.append(fid)
    return ids


def answers(studio) -> list[tuple]:
    A = schema.survey_answers
    with studio.db.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(A.c.participant_id, A.c.pair_id, A.c.round, A.c.question,
                                                         A.c.answer).order_by(A.c.id))]


def ready_survey(studio, name: str = "db", pairs: int = 4, per_participant: int = 2) -> None:
    """An open survey whose pairs are written straight to the database (placeholder pictures):
    for tests of participants and answers that need no generation."""
    from PIL import Image

    from dreamshot.survey.images import survey_dir

    with studio.db.write() as conn:
        sid = conn.execute(schema.surveys.insert().values(
            name=name, state="open", per_participant=per_participant, intro="hello", settings={},
            created_at=now(), opened_at=now())).inserted_primary_key[0]
        folder = survey_dir(studio, sid)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(pairs):
            paths = []
            for kind, colour in (("base", (90, 90, 90)), ("lora", (200, 120, 40))):
                path = folder / f"{i:04d}-{kind}.png"
                Image.new("RGB", (64, 64), colour).save(path)
                paths.append(path.relative_to(studio.settings.data_dir).as_posix())
            conn.execute(schema.survey_pairs.insert().values(
                survey_id=sid, position=i, shot=("close", "medium")[i % 2], caption=f"prompt {i}",
                prompt=f"a photo of prompt {i}", seed=i, alpha=1.0, lora_name="x", status="ready",
                base_image=paths[0], lora_image=paths[1], meta={}, created_at=now()))


@contextlib.contextmanager
def survey_server(data_dir, **env):
    """``python app.py --survey-only`` on ``data_dir`` in its own process (as participants meet it);
    yields its URL, stops it afterwards."""
    from tests.conftest import free_port

    port = free_port()
    full_env = dict(os.environ, DREAMSHOT_DATA=str(data_dir), DREAMSHOT_MODEL="demo", OMP_NUM_THREADS="1", **env)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--survey-only", "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the survey server did not start: " + proc.stderr.read().decode()[-2000:])
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
