"""What a hostile client does to the served app (issue 20), kept as tests over real HTTP on 127.0.0.1.
Two servers for the whole module: a survey-only server (no login, as participants meet it) and the
full studio with a password. Each attack is bounded (a few dozen requests at most)."""

from __future__ import annotations

import logging
import shutil
import uuid

import httpx
import pytest

from tests.conftest import free_port
from tests.survey_helpers import ready_survey

PASSWORD = "pw-for-members"
SMALL_UPLOAD = 64 * 1024          # the full studio's per-request bound in this module (2 GB in production)


def _serve(studio, **guard):
    """The app as `python app.py` serves it; ``guard``: StudioGuard settings to override."""
    import app as app_module
    from starlette.middleware import Middleware

    from dreamshot.webguard import StudioGuard

    demo = app_module.build_app(studio)
    kwargs = app_module.launch_kwargs(studio)
    if guard:
        options = {**kwargs["app_kwargs"]["middleware"][0].kwargs, **guard}
        kwargs["app_kwargs"] = {"middleware": [Middleware(StudioGuard, **options)]}
    kwargs.update(server_name="127.0.0.1", server_port=free_port(), share=False)
    app_module.serve(demo, kwargs)
    return demo, f"http://127.0.0.1:{kwargs['server_port']}/"


def _studio(tmp_path_factory, demo_model_dir, name: str, **settings):
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    data = tmp_path_factory.mktemp(name) / "data"
    (data / "models").mkdir(parents=True)
    shutil.copytree(demo_model_dir, data / "models" / "demo-sd")
    return Studio.open(Settings(data_dir=data, model="demo", **settings))


@pytest.fixture(scope="module")
def survey_server(tmp_path_factory, demo_model_dir):
    studio = _studio(tmp_path_factory, demo_model_dir, "sec-survey", survey_only=True)
    ready_survey(studio, "db", pairs=4, per_participant=2)
    demo, url = _serve(studio)
    try:
        yield studio, demo, url
    finally:
        demo.close()
        studio.close()


@pytest.fixture(scope="module")
def members_server(tmp_path_factory, demo_model_dir):
    allowed = tmp_path_factory.mktemp("sec-allowed")
    studio = _studio(tmp_path_factory, demo_model_dir, "sec-studio", admin_password=PASSWORD,
                     allowed_dirs=(allowed,))
    demo, url = _serve(studio, max_request_bytes=SMALL_UPLOAD)
    try:
        yield studio, demo, url, allowed
    finally:
        demo.close()
        studio.close()


def _files(size: int, name: str = "x.bin"):
    return {"files": (name, b"A" * size, "application/octet-stream")}


def _stored_anywhere(name: str) -> bool:
    from gradio.utils import get_upload_folder
    from pathlib import Path

    return any(Path(get_upload_folder()).rglob(name))


# ---- 1. uploads ---------------------------------------------------------------------------------------
def test_the_survey_server_stores_no_uploads(survey_server):
    _, _, url = survey_server
    name = f"attack-{uuid.uuid4().hex}.bin"
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("gradio_api/upload", "gradio_api/upload?upload_id=x", "gradio_api/process_recording"):
            r = http.post(path, files=_files(200_000, name))
            assert r.status_code == 403 and "takes no uploads" in r.text, (path, r.status_code, r.text[:200])
        r = http.post("gradio_api/upload/", files=_files(1000, name), follow_redirects=True)
        assert r.status_code in (403, 404, 405), r.text[:200]
    assert not _stored_anywhere(name)


def test_a_file_handed_to_a_text_field_is_not_fetched(survey_server):
    """Gradio fetches a FileData URL of any input into its cache before the component sees it: the
    survey page's text inputs take no file, so nothing is fetched and the caller is told so."""
    _, _, url = survey_server
    stray = {"path": "https://example.invalid/big.bin", "url": "https://example.invalid/big.bin",
             "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(url + "gradio_api/run/survey_view", json={"data": [stray]}, timeout=30)
    assert "takes no file" in r.text, r.text[:300]


def test_uploads_need_a_login_and_are_bounded(members_server):
    studio, demo, url, _ = members_server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("gradio_api/upload", files=_files(1000)).status_code == 401    # gradio's login check
        assert http.post("login", data={"username": "Ada", "password": PASSWORD}).status_code == 200
        ok = http.post("gradio_api/upload", files=_files(1000, "small.bin"))
        assert ok.status_code == 200 and ok.json()[0].endswith("small.bin")
        big = f"big-{uuid.uuid4().hex}.bin"
        r = http.post("gradio_api/upload", files=_files(SMALL_UPLOAD + 1, big))              # Content-Length
        assert r.status_code == 413 and "at most" in r.text

        def chunks():                                                   # no Content-Length: counted as it streams
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="' + big.encode() + b'"\r\n\r\n'
            for _ in range(4):
                yield b"B" * (SMALL_UPLOAD // 2)
            yield b"\r\n" + boundary + b"--\r\n"
        r = http.post("gradio_api/upload", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 413 and "maximum allowed size" in r.text, (r.status_code, r.text[:200])
    assert not _stored_anywhere(big)                                    # the partial file was removed
    assert demo.delete_cache is not None and demo.delete_cache[1] <= 86400   # uploads do not stay for ever


# ---- 2. login throttle ----------------------------------------------------------------------------------
def _login(http, name: str, password: str, address: str) -> bool:
    r = http.post("login", data={"username": name, "password": password}, headers={"X-Forwarded-For": address})
    return r.status_code == 200


def test_a_stranger_cannot_lock_out_the_right_password(members_server, monkeypatch, caplog):
    _, _, url, _ = members_server
    monkeypatch.setenv("DREAMSHOT_TRUSTED_PROXIES", "127.0.0.1")        # as behind a proxy on this machine
    stranger, admin = "203.0.113.5", "198.51.100.7"
    with caplog.at_level(logging.WARNING, logger="dreamshot.access"), httpx.Client(base_url=url, timeout=30) as http:
        assert not any(_login(http, "admin", f"guess-{i}", stranger) for i in range(40))
        assert _login(http, "admin", PASSWORD, admin)                   # the real admin, elsewhere: let in
        assert not _login(http, "admin", PASSWORD, stranger)            # the guesser's address: locked
        assert not any(_login(http, f"name{i}", f"guess-{i}", "203.0.113.6") for i in range(25))
        assert not _login(http, "someone", PASSWORD, "203.0.113.6")     # many names: the address is locked
        assert _login(http, "someone", PASSWORD, "198.51.100.8")
    locks = [r.getMessage() for r in caplog.records if "locked" in r.getMessage()]
    assert any("'admin' locked" in m and stranger in m for m in locks), locks
    assert any("address 203.0.113.6 locked" in m for m in locks), locks


# ---- 4. X-Forwarded-For lines ---------------------------------------------------------------------------
def test_every_forwarded_for_line_is_read(survey_server, monkeypatch):
    """A client sends its own X-Forwarded-For line, the proxy appends the real one as a second line:
    the lines are one list, so the right-most untrusted hop is the proxy's, not the forged one."""
    from dreamshot.survey.service import service

    studio, _, url = survey_server
    monkeypatch.setenv("DREAMSHOT_TRUSTED_PROXIES", "127.0.0.1")
    monkeypatch.setattr(service(studio), "max_new_per_hour", 2)
    joined = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(5):
            headers = [("X-Forwarded-For", f"6.6.{i}.{i}"), ("X-Forwarded-For", "203.0.113.77")]
            r = http.post("gradio_api/run/survey_join", json={"data": ["db", ""]}, headers=headers)
            joined.append("token" in r.text)
    assert joined == [True, True, False, False, False], joined


# ---- 7. one line where a message belongs ----------------------------------------------------------------
def test_survey_values_of_the_wrong_type_get_a_message(survey_server):
    _, _, url = survey_server
    with httpx.Client(base_url=url, timeout=30) as http:
        view = http.post("gradio_api/run/survey_join", json={"data": ["db", ""]}).json()["data"][0]
        token, slot, pair = view["token"], view["slot"], view["pair_id"]
        for question, answer, expected in ((5, "A", "The question must be text (got a number)"),
                                           ("like", True, "The answer must be text (got true/false)"),
                                           (["like"], "A", "The question must be text (got a list)"),
                                           ("like", {"a": 1}, "The answer must be text (got an object)")):
            r = http.post("gradio_api/run/survey_answer", json={"data": [token, slot, pair, question, answer]})
            assert expected in r.text, r.text[:300]
        r = http.post("gradio_api/run/survey_view", json={"data": [12345]})
        assert "The token must be text" in r.text, r.text[:300]
        r = http.post("gradio_api/run/survey_answer", json={"data": [token, "nan", pair, "like", "A"]})
        assert "slot must be a whole number" in r.text, r.text[:300]


def test_an_empty_api_call_writes_one_log_line(survey_server, capfd, caplog):
    _, _, url = survey_server
    capfd.readouterr()
    with caplog.at_level(logging.INFO), httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(5):
            r = http.post("gradio_api/call/v2/survey_view", json={})
            assert r.status_code == 500 and "Internal error (ref" in r.text
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err[-3000:]
    failed = [r for r in caplog.records if "request failed" in r.getMessage()]
    assert len(failed) == 5 and all("\n" not in r.getMessage() and not r.exc_info for r in failed)


@pytest.fixture(scope="module")
def member(members_server):
    from gradio_client import Client

    _, _, url, _ = members_server
    return Client(url, auth=("Ada", PASSWORD), verbose=False)


def _bomb(path, side: int = 100_000):
    """A PNG that claims side×side pixels: a few dozen bytes, a ~10-gigapixel decode."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _form(**fields):
    from dreamshot.generate.handlers import GenerateForm

    form = GenerateForm(prompt="a lighthouse", steps=2, width=64, height=64)
    for key, value in fields.items():
        setattr(form, key, value)
    return form.values()


def test_image_bombs_and_non_images_get_one_line(member, tmp_path, capfd):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    bomb, text = _bomb(tmp_path / "bomb.png"), tmp_path / "notes.png"
    text.write_text("these are my notes, not a picture")
    with pytest.raises(AppError, match="too large to open safely"):
        member.predict(handle_file(str(bomb)), api_name="/read_png")
    for reference, message in ((bomb, "too large to open safely"), (text, "not an image that can be read")):
        with pytest.raises(AppError, match=message):
            member.predict(*_form(control="canny", control_image=handle_file(str(reference))),
                           api_name="/control_preview")
    with pytest.raises(AppError, match=r"CFG scale must be a number \(got 'nan'\)"):
        member.predict(*_form(cfg="nan"), api_name="/generate")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Internal error" not in err, err[-3000:]


def test_nan_and_infinity_as_json_numbers_get_one_line(members_server, capfd):
    """JSON carries NaN and Infinity (gradio_client cannot send them; any HTTP client can)."""
    _, _, url, _ = members_server
    capfd.readouterr()
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("login", data={"username": "Ada", "password": PASSWORD}).status_code == 200
        for seed, shown in (("NaN", "nan"), ("Infinity", "inf")):
            body = '{"data": ["paper", "close=10", "512", 0.2, %s]}' % seed
            event = http.post("gradio_api/call/label_settings", content=body,
                              headers={"content-type": "application/json"}).json()["event_id"]
            stream = http.get(f"gradio_api/call/label_settings/{event}").text
            assert "event: error" in stream and "Sampling seed must be a" in stream, stream[:300]
    assert "Traceback" not in capfd.readouterr().err


# ---- 3. server paths from the page ----------------------------------------------------------------------
def test_export_and_import_stay_inside_the_allowed_folders(member, members_server, tmp_path):
    from gradio_client.exceptions import AppError

    _, _, _, allowed = members_server
    outside = tmp_path / "someones-dataset"
    outside.mkdir()
    (outside / "metadata.jsonl").write_text("{}\n")
    (outside / "secret-notes.txt").write_text("private")
    with pytest.raises(AppError, match="outside the folders the page may use"):
        member.predict(str(outside), False, "", api_name="/label_export")
    with pytest.raises(AppError, match="outside the folders the page may use"):
        member.predict(str(outside), [], None, None, "", 256, 6, "train", api_name="/label_import")
    assert sorted(p.name for p in outside.iterdir()) == ["metadata.jsonl", "secret-notes.txt"]   # untouched
    theirs = allowed / "theirs"
    theirs.mkdir()
    (theirs / "metadata.jsonl").write_text("{}\n")
    with pytest.raises(AppError, match="was not made by a studio export"):
        member.predict(str(theirs), False, "", api_name="/label_export")
    assert (theirs / "metadata.jsonl").read_text() == "{}\n"
    report, _ = member.predict(str(allowed / "ours"), False, "", api_name="/label_export")
    assert "Exported 0 frames" in report and (allowed / "ours" / ".dreamshot-export").is_file()
    report, _ = member.predict(str(allowed / "ours"), False, "", api_name="/label_export")   # ours: replaced
    assert "Exported 0 frames" in report


# ---- issue 21 item 2: a ControlNet reference that is not an image -----------------------------------------
@pytest.mark.browser
def test_a_reference_that_is_not_an_image_says_so_in_the_page(members_server, browser, tmp_path, caplog,
                                                            artifacts_dir):
    _, _, url, _ = members_server
    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not a picture")
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    try:
        assert context.request.post(url + "login", form={"username": "Ada", "password": PASSWORD}).ok
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Generate").click()
        page.fill("#gen-prompt textarea", "a lighthouse")
        page.click("#gen-control")
        page.locator("#gen-control-kind label", has_text="canny").click()
        with caplog.at_level(logging.INFO):
            page.locator("#gen-control-image input[type=file]").set_input_files(str(notes))
            page.get_by_text("The reference image 'notes.png' is not an image that can be read.").wait_for()
            assert page.locator("#gen-control-image img").count() == 0      # the file was dropped
            badges = "span.error:not(.toast-title):visible"                   # a status tracker's "Error" mark
            assert page.locator(badges).count() == 0                          # no field marked as failed
            page.click("#gen-go")
            page.get_by_text("ControlNet needs a reference image").first.wait_for()
            page.screenshot(path=str(artifacts_dir / "security-reference-not-an-image.png"))
            assert page.locator(badges).count() == page.locator(f"#gen-gallery {badges}").count() <= 1   # not every output
        refusals = [r for r in caplog.records if "notes.png" in r.getMessage()]
        assert len(refusals) == 1 and not refusals[0].exc_info
    finally:
        context.close()
