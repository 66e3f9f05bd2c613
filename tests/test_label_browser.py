"""The Label tab served for real: keyboard labeling in Chromium with reload/resume, the gradio_client
endpoints, and `python app.py` killed with SIGKILL then restarted on the same data folder."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa

from dreamshot import schema
from labeling import labels, pool
from labeling.sampler import Sampler
from tests.conftest import free_port
from tests.label_helpers import ROOT, make_mixed_pool, synthetic_frames


def _actions(studio, who):
    with studio.db.read() as conn:
        L = schema.labels
        return [tuple(r) for r in conn.execute(sa.select(L.c.frame_id, L.c.action, L.c.shot, L.c.undone_at.is_not(None))
                                               .where(L.c.annotator == who).order_by(L.c.id))]


def _shown(page) -> str:
    return page.locator("#label-frame [data-frame]").first.get_attribute("data-frame")


def _wait_frame_change(page, old: str) -> str:
    """The next frame is on screen *and* the server has confirmed it (no optimistic display left)."""
    page.wait_for_function(
        "old => { const el = document.querySelector('#label-frame [data-frame]');"
        " return el && el.dataset.frame !== old && !el.dataset.pending; }", arg=old)
    return _shown(page)


@pytest.mark.browser
def test_keyboard_labeling_and_resume_after_reload(studio, tmp_path, serve, page, artifacts_dir):
    make_mixed_pool(tmp_path / "pool")
    synthetic_frames(tmp_path / "pool" / "synthetic", 6)
    report = pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=200))
    assert report.kept == 11
    url = serve(studio)
    page.goto(url)
    page.wait_for_selector("#label-frame [data-frame]")  # the page has loaded its state
    page.get_by_label("Annotator name").fill("alice")
    page.get_by_role("button", name="Start / resume").click()
    page.wait_for_selector("#label-frame [data-frame] img.lf-crop")
    f1 = _shown(page)
    assert f1 and int(f1) == Sampler(studio).current("alice")
    page.evaluate("document.activeElement && document.activeElement.blur()")

    page.keyboard.press("1")                       # close
    f2 = _wait_frame_change(page, f1)
    page.keyboard.press("x")                       # reject
    f3 = _wait_frame_change(page, f2)
    page.keyboard.press("s")                       # skip
    f4 = _wait_frame_change(page, f3)
    page.keyboard.press("u")                       # undo the skip: f3 again
    assert _wait_frame_change(page, f4) == f3
    page.keyboard.press("3")                       # long
    f5 = _wait_frame_change(page, f3)
    assert f5 == f4
    page.wait_for_function("() => document.querySelector('#label-progress').innerText.includes('1/200')")
    page.screenshot(path=str(artifacts_dir / "label-tab-keyboard.png"), full_page=True)

    acts = [(fid, action, shot) for fid, action, shot, undone in _actions(studio, "alice") if not undone]
    assert acts == [(int(f1), "label", "close"), (int(f2), "reject", None), (int(f3), "label", "long")]

    # typing in a text field must not label anything
    page.get_by_label("Annotator name").press("2")
    assert _shown(page) == f5 and len(_actions(studio, "alice")) == 4

    page.reload()                                  # the browser remembers the name; the DB the place
    page.wait_for_selector("#label-frame [data-frame] img.lf-crop")
    assert _shown(page) == f5
    assert page.get_by_label("Annotator name").input_value().startswith("alice")
    page.get_by_role("button", name="Medium shot  [2]").click()   # buttons do the same for mouse users
    f6 = _wait_frame_change(page, f5)
    assert _actions(studio, "alice")[-1][:3] == (int(f5), "label", "medium")

    # a fast typist: keys pressed while the server answers are kept, in order, none lost
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("3")
    page.keyboard.press("1")
    page.wait_for_function("() => document.querySelector('#label-progress').innerText.includes('2/200')")
    page.wait_for_function("() => !document.querySelector('#label-frame [data-frame]').dataset.pending")
    last_two = [a[:3] for a in _actions(studio, "alice")[-2:]]
    assert last_two[0] == (int(f6), "label", "long") and last_two[1][1:] == ("label", "close")
    assert last_two[1][0] != int(f6)


def test_label_endpoints_with_gradio_client(make_studio, tmp_path, serve):
    from gradio_client import Client

    studio = make_studio(allowed_dirs=(tmp_path,))   # server paths typed in the page: inside --allow-dir
    synthetic_frames(tmp_path / "pool", 4)
    url = serve(studio)
    client = Client(url, verbose=False)
    text = client.predict(str(tmp_path / "pool"), None, None, None, "", 100, 6, "train", api_name="/label_import")
    assert "kept: 4" in text
    view = client.predict("bob", api_name="/label_view")
    first = view["frame_id"]
    assert view["remaining"] == 4 and view["quotas"] == {"close": 200, "medium": 200, "long": 200}
    nudged = client.predict("bob", first, "center", api_name="/label_nudge")
    assert nudged["frame_id"] == first and nudged["box"] == [40, 0, 280, 240]
    after = client.predict("bob", first, "medium", api_name="/label_action")
    assert after["counts"] == {"medium": 1} and after["frame_id"] != first
    with pytest.raises(Exception, match="Unknown shot type"):
        client.predict("bob", after["frame_id"], "wide", api_name="/label_action")
    back = client.predict("bob", api_name="/label_undo")
    assert back["frame_id"] == first and back["counts"] == {}
    with pytest.raises(Exception, match="Names are"):
        client.predict("<script>", api_name="/label_view")
    client.predict("bob", first, "long", api_name="/label_action")
    out, archive = client.predict(str(tmp_path / "set"), False, "", api_name="/label_export")
    assert "Exported 1 frames" in out and (tmp_path / "set" / "metadata.jsonl").exists()
    import zipfile

    with zipfile.ZipFile(archive) as zf:  # the browser's download: the same imagefolder
        assert "metadata.jsonl" in zf.namelist() and any(n.startswith("images/") for n in zf.namelist())


def test_upload_settings_stats_resolve_endpoints(studio, tmp_path, serve):
    import zipfile

    from gradio_client import Client, handle_file

    frames = synthetic_frames(tmp_path / "pool", 3)
    escape = synthetic_frames(tmp_path / "other", 1, seed=9)[0].read_bytes()
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in frames:
            zf.write(p, f"shots/{p.name}")
        zf.writestr("../escape.png", escape)
    uploads_before = set(Path(tempfile.gettempdir()).glob("dreamshot-upload-*"))
    client = Client(serve(studio), verbose=False)
    text = client.predict("", [handle_file(str(archive))], None, None, "", 100, 6, "train", api_name="/label_import")
    assert "kept: 3" in text and "../escape.png: zip entry '../escape.png' points outside" in text
    assert text.startswith("Import #1 of frames.zip (uploaded zip): done")  # the upload's name, not a temp path
    assert not any(escape == p.read_bytes() for p in studio.settings.data_dir.rglob("*") if p.is_file())
    with studio.db.read() as conn:
        statuses = dict(conn.execute(sa.select(schema.frames.c.source, schema.frames.c.status)).all())
    assert statuses["frames.zip!../escape.png"] == "unsafe_path"
    more = synthetic_frames(tmp_path / "more", 2, seed=5)
    text = client.predict("", [handle_file(str(p)) for p in more], None, None, "", 100, 6, "train",
                          api_name="/label_import")
    assert "upload of 2 files: frame_0000.png, frame_0001.png" in text and "dreamshot-upload" not in text
    assert set(Path(tempfile.gettempdir()).glob("dreamshot-upload-*")) == uploads_before

    saved = client.predict("paper", "close=1, medium=1, long=1", "256", 1.0, 3, api_name="/label_settings")
    assert saved[1] == "close=1, medium=1, long=1" and saved[2] == "256" and saved[5] == "Saved."
    with pytest.raises(Exception, match="class=n"):
        client.predict("paper", "close:1", "256", 1.0, 3, api_name="/label_settings")

    v = client.predict("ann", api_name="/label_view")
    assert v["remaining"] == 5
    fid = v["frame_id"]
    client.predict("ann", fid, "close", api_name="/label_action")
    w = client.predict("ben", api_name="/label_view")
    assert w["remaining"] == 5                       # overlap 1.0: ann's frame stays in ben's queue
    client.predict("ben", fid, "long", api_name="/label_action")
    stats, table, _ = client.predict(api_name="/label_stats")
    assert "Cohen's kappa" in stats and "open disagreements: 1" in stats
    assert table["data"][0][0] == fid and "ann: close" in table["data"][0][1]
    client.predict(fid, "medium", api_name="/label_resolve")
    stats, table, _ = client.predict(api_name="/label_stats")
    assert "open disagreements: 0" in stats and "medium                 1 / 1" in stats
    with pytest.raises(Exception, match="wide"):  # refused (by the dropdown's choices or by the taxonomy)
        client.predict(fid, "wide", api_name="/label_resolve")
    assert labels.final_labels(studio) == {fid: "medium"}


@pytest.mark.browser
def test_tab_opens_on_labeling_and_a_disagreement_row_fills_the_frame_id(studio, tmp_path, serve, page,
                                                                          artifacts_dir):
    synthetic_frames(tmp_path / "pool", 4)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100))
    studio.db.set_setting("label_overlap", 1.0)
    disputed = Sampler(studio).current("ann")
    labels.record(studio, "ann", disputed, "close")
    labels.record(studio, "ben", disputed, "long")
    page.goto(serve(studio))
    page.wait_for_selector("#label-frame [data-frame]")
    assert not page.get_by_label("Source on the server").is_visible()   # the Import panel is folded away
    assert page.locator("#label-frame").bounding_box()["y"] < 700        # labeling is on the first screen
    page.get_by_text("3 · Stats, agreement and disagreements").click()
    page.get_by_role("button", name="Refresh stats").click()
    page.locator("#label-disagreements").get_by_text("ann: close, ben: long").locator("visible=true").first.click()
    page.wait_for_function(
        "fid => [...document.querySelectorAll('input[type=number]')].some(i => i.value === String(fid))",
        arg=disputed)
    page.get_by_label("Final class").click()
    page.get_by_role("option", name="medium").click()
    quota = page.locator("#label-progress")
    assert "0/200" in quota.inner_text()
    page.get_by_role("button", name="Resolve", exact=True).click()
    page.wait_for_function("() => document.querySelector('#label-progress').innerText.includes('1/200')")
    assert labels.final_labels(studio) == {disputed: "medium"}
    page.screenshot(path=str(artifacts_dir / "label-tab-resolved.png"), full_page=True)


def test_logged_in_name_is_the_annotator(make_studio, tmp_path, serve):
    from gradio_client import Client

    studio = make_studio(admin_password="correct horse")
    synthetic_frames(tmp_path / "pool", 2)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100))
    url = serve(studio)
    client = Client(url, auth=("Ada", "correct horse"), verbose=False)
    view = client.predict("someone else", api_name="/label_view")
    assert view["annotator"] == "Ada"
    client.predict("someone else", view["frame_id"], "close", api_name="/label_action")
    assert _actions(studio, "Ada")[0][:3] == (view["frame_id"], "label", "close")
    assert _actions(studio, "someone else") == []


def _wait_up(url: str, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("app did not start")


def test_kill_server_and_resume(tmp_path, make_studio):
    from gradio_client import Client

    data = tmp_path / "data"
    studio = make_studio(data_dir=data)          # demo model in place, pool imported
    synthetic_frames(tmp_path / "pool", 5)
    pool.run_import(studio, pool.ImportOptions(str(tmp_path / "pool"), min_side=100))
    studio.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "DREAMSHOT_DATA": str(data), "DREAMSHOT_MODEL": "demo", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "app.py", "--port", str(port)]

    def start():
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_up(url, proc)
        return proc

    proc = start()
    try:
        client = Client(url, verbose=False)
        v = client.predict("ann", api_name="/label_view")
        labeled = []
        for shot in ("close", "reject", "long"):
            labeled.append(v["frame_id"])
            v = client.predict("ann", v["frame_id"], shot, api_name="/label_action")
        current = v["frame_id"]
        os.kill(proc.pid, signal.SIGKILL)          # no shutdown hook runs
        proc.wait(timeout=30)
        proc = start()
        client = Client(url, verbose=False)
        v = client.predict("ann", api_name="/label_view")
        assert v["frame_id"] == current and v["counts"] == {"close": 1, "long": 1} and v["rejects"] == 1
        seen = []
        while v["frame_id"] is not None:            # the rest of the queue: the rejected frame never returns
            seen.append(v["frame_id"])
            v = client.predict("ann", v["frame_id"], "medium", api_name="/label_action")
        assert len(seen) == 2 and not set(seen) & set(labeled)
    finally:
        proc.kill()
        proc.wait(timeout=30)
