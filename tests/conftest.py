"""Shared fixtures. Tests run offline on the tiny demo model (built once per session).

- ``studio``: a Studio on a fresh SQLite file in a temp data folder, model = demo.
- ``make_studio(**settings)``: the same with other settings (admin password, survey-only, db url).
- ``pg_url``: a PostgreSQL URL on loopback (DREAMSHOT_TEST_PG_URL); skipped when unset, except in
  CI (CI=true), where a missing server is a failure.
- ``serve(studio)``: the real app on 127.0.0.1 (a free port); returns its URL.
- ``page``: a Playwright page in Debian's headless Chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

# Before anything imports app.py: its module-level `demo` must not touch ./studio-data or the Hub.
_SESSION_DATA = tempfile.mkdtemp(prefix="dreamshot-test-")
os.environ["DREAMSHOT_DATA"] = _SESSION_DATA
os.environ["DREAMSHOT_MODEL"] = "demo"
os.environ.pop("DREAMSHOT_ADMIN_PASSWORD", None)
os.environ.pop("DREAMSHOT_SURVEY_ONLY", None)
os.environ.pop("DREAMSHOT_DB", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Two test workers share two cores (pytest.ini: -n 2), each with its app server and Chromium: a torch
# that spins a thread per core in each worker starves the other's browser. One thread per worker
# (read by torch at import, inherited by the trainer processes the tests start).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from dreamshot.settings import Settings  # noqa: E402

# Debian's Chromium by default; DREAMSHOT_CHROMIUM points the browser tests at another build.
CHROMIUM = os.environ.get("DREAMSHOT_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    from dreamshot.demo_model import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "demo-sd")


@pytest.fixture(scope="session")
def demo_clip_dir(tmp_path_factory) -> Path:
    """The ``demo`` CLIP (Evaluate, the Label tab's suggestions), built once per session."""
    from dreamshot.evaluate.demo_models import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("clip-models"), "CLIP")


@pytest.fixture
def make_studio(tmp_path, demo_model_dir, demo_clip_dir):
    from dreamshot.studio import Studio

    opened = []

    def make(**overrides) -> "Studio":
        data = Path(overrides.pop("data_dir", tmp_path / f"data-{len(opened)}"))
        (data / "models").mkdir(parents=True, exist_ok=True)
        if not (data / "models" / "demo-sd").exists():
            shutil.copytree(demo_model_dir, data / "models" / "demo-sd")
        if not (data / "models" / demo_clip_dir.name).exists():   # read only: a link is enough
            (data / "models" / demo_clip_dir.name).symlink_to(demo_clip_dir, target_is_directory=True)
        settings = Settings(**{"data_dir": data, "model": "demo", **overrides})
        studio = Studio.open(settings)
        opened.append(studio)
        return studio

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def studio(make_studio):
    return make_studio()


@pytest.fixture
def one_torch_thread(monkeypatch):
    """The tiny models train fastest on one thread, and multi-threaded torch spins on a busy 2-core
    machine; processes started by the code under test (trainer runs) inherit this too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pg_server_url():
    url = os.environ.get("DREAMSHOT_TEST_PG_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must provide PostgreSQL: DREAMSHOT_TEST_PG_URL is not set")
        pytest.skip("PostgreSQL not configured (set DREAMSHOT_TEST_PG_URL)")
    return url


@pytest.fixture
def pg_url(pg_server_url):
    """A fresh, empty PostgreSQL database for one test (created and dropped around it)."""
    import sqlalchemy as sa

    from dreamshot.storage import normalize_url

    base = sa.engine.make_url(normalize_url(pg_server_url))
    name = f"dreamshot_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database URL, once a SQLite file and once a fresh PostgreSQL database (schema upgrade tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("pg_url")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve():
    """serve(studio) -> base URL of the real app (same launch settings as `python app.py`)."""
    import app as app_module

    launched = []

    def start(studio) -> str:
        demo = app_module.build_app(studio)
        kwargs = app_module.launch_kwargs(studio)
        kwargs.update(server_name="127.0.0.1", server_port=free_port(), share=False)
        app_module.serve(demo, kwargs)   # as `python app.py` does, patient with a busy machine
        launched.append(demo)
        return f"http://127.0.0.1:{kwargs['server_port']}/"

    yield start
    for demo in launched:
        demo.close()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (see .ci/run) or set DREAMSHOT_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    # A limit against hangs, not a speed target: the full page (~640 components) takes ~4 s to show its
    # first frame on a quiet 2-core box, and several times that while the other worker trains.
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots (kept after the run for people to look at)."""
    out = Path(os.environ.get("DREAMSHOT_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "dreamshot-test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out
