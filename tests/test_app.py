"""The app shell as a user meets it: started as a process, served on 127.0.0.1, driven by
gradio_client and by Playwright in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABS = ["Label", "Captions", "Train", "Generate", "Survey", "Evaluate", "Video"]


def _run_app(*args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_importing_app_loads_no_model():
    code = ("import sys, app; "
            "assert app.demo is not None; "
            "assert 'diffusers' not in sys.modules and 'torch' not in sys.modules, 'model code imported'; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_unwritable_data_folder_stops_before_the_ui(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = _run_app("--data", str(blocker / "data"), "--port", "1")
    assert proc.returncode != 0
    assert "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_database_from_newer_schema_is_refused(tmp_path, studio):
    from dreamshot import storage

    with studio.db.write() as conn:
        storage._write_version(conn, storage.SCHEMA_VERSION + 1)
    studio.close()
    proc = _run_app("--data", str(studio.settings.data_dir), "--port", "1")
    assert proc.returncode != 0
    assert "Upgrade DreamShot" in proc.stderr and "Traceback" not in proc.stderr


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
    page.get_by_role("tab", name="Survey").wait_for()
    for title in TABS:
        if title != "Survey":
            assert page.get_by_role("tab", name=title).count() == 0
    page.wait_for_timeout(1500)  # the page-load events have run
    # the survey's pictures were made when it was built: no model banner for participants
    assert not page.locator("#demo-banner").is_visible()
    assert "blind survey" in page.locator("body").inner_text()
