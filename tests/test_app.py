"""The app shell as a user meets it: started as a process, served on 127.0.0.1, driven by
gradio_client and by Playwright in headless Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
TABS = ["Label", "Captions", "Train", "Generate", "Survey", "Evaluate", "Video"]


def _run_app(*args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _refused(*args) -> str:
    """Run app.py with a setup it must refuse; return its stderr after proving that it exited with
    status 1, without a traceback and before gradio was imported (a wrong path is refused at once,
    not after the seconds the UI's imports take). ``-X importtime`` lists every module imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "app.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    stderr = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.startswith("dreamshot: "), stderr[-2000:]
    assert "sqlalchemy" in imported, "the import log is empty: -X importtime did not work"
    assert "gradio" not in imported, "gradio was imported before the setup was checked"
    return stderr


def test_importing_app_loads_no_model():
    code = ("import sys, app; "
            "assert app.demo is not None; "
            "assert 'diffusers' not in sys.modules and 'torch' not in sys.modules, 'model code imported'; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_unwritable_data_folder_is_refused_before_the_ui(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    stderr = _refused("--data", str(blocker / "data"), "--model", "demo", "--port", str(free_port()))
    assert f"The data folder {str(blocker / 'data')!r} is not writable" in stderr and "--data" in stderr


def test_database_from_newer_schema_is_refused_before_the_ui(tmp_path, studio):
    from dreamshot import storage

    with studio.db.write() as conn:
        storage._write_version(conn, storage.SCHEMA_VERSION + 1)
    studio.close()
    stderr = _refused("--data", str(studio.settings.data_dir), "--model", "demo", "--port", str(free_port()))
    assert "Upgrade DreamShot" in stderr and "was not modified" in stderr


def test_unreachable_database_is_refused_before_the_ui(tmp_path):
    closed = free_port()  # nothing listens there
    stderr = _refused("--data", str(tmp_path / "data"), "--model", "demo", "--port", str(free_port()),
                      "--db", f"postgresql://dreamshot:s3cret-pw@127.0.0.1:{closed}/dreamshot")
    assert "Cannot open the database" in stderr and "s3cret-pw" not in stderr


def test_second_studio_on_a_busy_port_is_refused_before_the_ui(tmp_path):
    with socket.socket() as holder:  # stands for the first studio
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stderr = _refused("--data", str(tmp_path / "data"), "--model", "demo", "--port", str(port))
    assert f"Port {port} on 127.0.0.1 is already in use" in stderr and "--port" in stderr
    assert not (tmp_path / "data").exists(), "the refused studio touched its data folder"


def test_python_app_py_serves_and_names_its_flags(tmp_path):
    """The real entry point: ``python app.py`` says where it serves, in the studio's words (gradio's
    own line named `share=True` in `launch()`, which a user of the command line cannot set)."""
    import threading

    port = free_port()
    env = {**os.environ, "DREAMSHOT_SURVEY_ONLY": "1"}  # no warm-up, no job runner: the lightest studio
    proc = subprocess.Popen([sys.executable, "app.py", "--data", str(tmp_path / "data"), "--model", "demo",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killer = threading.Timer(180, proc.kill)  # a limit against hangs
    killer.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "DreamShot studio running on" in line or "Running on local URL" in line:  # ours, or gradio's
                break
        assert f"DreamShot studio running on http://127.0.0.1:{port}/" in "".join(seen), "".join(seen)[-2000:]
        assert "--share or DREAMSHOT_SHARE=1" in seen[-1] and "launch()" not in "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        killer.cancel()
        proc.terminate()
        proc.wait(timeout=30)


def test_status_endpoint_with_gradio_client(studio, serve):
    from gradio_client import Client

    url = serve(studio)
    result = Client(url, verbose=False).predict(api_name="/status")
    assert result["is_demo_model"] is True and result["role"] == "admin"
    assert result["schema_version"] >= 1


def test_data_folder_is_never_served(studio, serve):
    url = serve(studio)
    secret = studio.settings.data_dir.resolve() / "studio.db"
    for target in (secret, studio.settings.models_dir.resolve() / "demo-sd" / "model_index.json"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}gradio_api/file={target}", timeout=10)
        assert info.value.code in (403, 404)


def test_password_protects_the_studio(make_studio, serve):
    from gradio_client import Client

    studio = make_studio(admin_password="correct horse")
    url = serve(studio)
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False).predict(api_name="/status")
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("Ada", "wrong horse"), verbose=False)
    client = Client(url, auth=("Ada", "correct horse"), verbose=False)
    assert client.predict(api_name="/status")["role"] == "admin"


@pytest.mark.browser
def test_every_tab_in_the_browser_with_demo_banner(studio, serve, page, artifacts_dir):
    url = serve(studio)
    page.goto(url)
    banner = page.locator("#demo-banner")
    banner.wait_for(state="visible")
    assert "untrained" in banner.inner_text()
    for title in TABS:
        page.get_by_role("tab", name=title).click()
        page.wait_for_timeout(150)
        assert page.get_by_role("tab", name=title).get_attribute("aria-selected") == "true"
    page.get_by_role("tab", name="Label").click()
    page.screenshot(path=str(artifacts_dir / "studio-home.png"), full_page=True)
    assert (artifacts_dir / "studio-home.png").stat().st_size > 10_000


@pytest.mark.browser
def test_survey_only_serves_nothing_but_the_survey(make_studio, serve, page):
    studio = make_studio(survey_only=True, admin_password="correct horse")
    url = serve(studio)
    page.goto(url)  # no login for participants
    page.locator("#survey-only").wait_for()
    assert page.get_by_role("tab").count() == 0       # the survey alone, without a tab bar
    page.wait_for_timeout(1500)  # the page-load events have run
    # the survey's pictures were made when it was built: no model banner for participants
    assert not page.locator("#demo-banner").is_visible()
    assert "blind survey" in page.locator("body").inner_text()


@pytest.mark.browser
def test_demo_banner_is_in_the_first_paint_and_the_tabs_do_not_move(studio, serve, page, artifacts_dir):
    """The demo-model banner is decided before the page is built, so it is there at the first paint
    and the page-load events do not push the tabs down. The page-load events are held back until the
    first paint is measured, then let through."""
    calls = []
    choice = studio.model_choice
    studio.model_choice = lambda: calls.append(1) or choice()  # counts the banner's page-load event
    url = serve(studio)
    calls.clear()
    held, released = [], []

    def hold(route):
        route.continue_() if released else held.append(route)

    page.route("**/gradio_api/queue/join*", hold)
    page.goto(url)
    label_tab = page.get_by_role("tab", name="Label")
    label_tab.wait_for()
    banner = page.locator("#demo-banner")
    assert banner.is_visible() and "untrained" in banner.inner_text(), "no banner in the first paint"
    for _ in range(300):   # the page sends its load events just after it shows (later on a busy box)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "no page-load event was held: the test would prove nothing"
    first_y = label_tab.bounding_box()["y"]     # the page as it is before any load event has answered
    page.screenshot(path=str(artifacts_dir / "banner-first-paint.png"))
    released.append(True)
    for route in held:
        route.continue_()
    for _ in range(600):  # until the banner's load event has run (a busy box may take a while)
        if calls:
            break
        page.wait_for_timeout(100)
    assert calls, "the banner's page-load event never ran"
    page.wait_for_timeout(1000)  # its answer reaches the page
    assert label_tab.bounding_box()["y"] == first_y and banner.is_visible()
    page.screenshot(path=str(artifacts_dir / "banner-after-load-events.png"))


@pytest.mark.browser
def test_banner_appears_when_the_model_falls_back_after_the_page_was_built(make_studio, demo_model_dir, tmp_path,
                                                                         serve, page):
    import shutil

    from dreamshot.demo_model import MARKER
    from dreamshot.models import ModelStatus

    real = tmp_path / "my-sd"
    shutil.copytree(demo_model_dir, real)
    (real / MARKER).unlink()
    studio = make_studio(model=str(real))
    url = serve(studio)  # built without a banner: a real model folder
    # what ModelManager._load records when the model fails to load after the page was built
    studio.models.status = ModelStatus(str(real), "demo-sd", True, "Cannot load the base model: OSError")
    page.goto(url)
    banner = page.locator("#demo-banner")
    banner.wait_for(state="visible")
    assert "untrained" in banner.inner_text() and "Cannot load the base model" in banner.inner_text()


def _tiny_app():
    import gradio as gr

    with gr.Blocks() as blocks:
        gr.Markdown("tiny")
    return blocks


def test_a_page_slower_than_gradios_3_s_check_is_still_served(monkeypatch):
    """Gradio's launch() raises when its 3 s HEAD check gets no answer, though the server is up (a busy
    machine); serve() gives the page more time and serves it, the check's failure simulated here."""
    import httpx
    from gradio import networking

    import app as app_module

    monkeypatch.setattr(networking, "url_ok", lambda url: False)
    blocks = _tiny_app()
    try:
        app_module.serve(blocks, dict(server_name="127.0.0.1", server_port=free_port()), patience_s=20)
        assert httpx.get(blocks.local_url, timeout=10).status_code == 200
    finally:
        blocks.close()


def test_a_page_that_never_answers_is_a_clear_error(monkeypatch):
    import httpx
    from gradio import networking

    import app as app_module
    from dreamshot.errors import DreamShotError

    monkeypatch.setattr(networking, "url_ok", lambda url: False)

    def no_answer(*args, **kwargs):
        raise httpx.ConnectTimeout("no answer")

    monkeypatch.setattr(httpx, "head", no_answer)
    blocks = _tiny_app()
    port = free_port()
    with pytest.raises(DreamShotError, match=r"did not answer on http://127\.0\.0\.1:\d+/ within 1 s"):
        app_module.serve(blocks, dict(server_name="127.0.0.1", server_port=port), patience_s=1)
    with socket.socket() as sock:            # closed: the port is free again
        sock.bind(("127.0.0.1", port))
