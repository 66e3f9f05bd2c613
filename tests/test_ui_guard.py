"""Only our own error messages reach the browser; internal exception text stays in the (redacted)
server log."""

from __future__ import annotations

import logging

import gradio as gr
import pytest

from dreamshot.errors import InvalidInput
from dreamshot.safety import RedactSecrets
from dreamshot.ui import admin_name, guarded


def test_user_errors_pass_through_with_their_message():
    @guarded
    def handler():
        raise InvalidInput("Steps must be between 1 and 150.")

    with pytest.raises(gr.Error, match="Steps must be between 1 and 150"):
        handler()


def test_internal_errors_show_only_a_reference(caplog):
    @guarded
    def handler():
        raise RuntimeError("db password is hunter2 and token hf_abcdefghijklmnopqrstuvwxyz")

    with caplog.at_level(logging.ERROR, logger="dreamshot.ui"):
        with pytest.raises(gr.Error) as info:
            handler()
    shown = str(info.value.message)
    assert "hunter2" not in shown and "hf_" not in shown and "ref" in shown
    record = caplog.records[-1]
    RedactSecrets(["hunter2"]).filter(record)
    assert "hunter2" not in record.getMessage() and "hf_abcdefghij" not in record.getMessage()
    assert "RuntimeError" in record.getMessage()  # the operator still sees what happened


def test_generators_are_guarded_too():
    @guarded
    def handler():
        yield 1
        raise KeyError("internal")

    gen = handler()
    assert next(gen) == 1
    with pytest.raises(gr.Error, match="Internal error"):
        next(gen)


def test_admin_handlers_check_the_caller(make_studio):
    studio = make_studio(admin_password="pw-123456")

    class Req:
        username = None

    with pytest.raises(Exception, match="Log in"):
        admin_name(studio, Req())
    Req.username = "Ada"
    assert admin_name(studio, Req()) == "Ada"


def test_served_app_hides_unguarded_exception_text(studio):
    """Even a handler that forgot `guarded` cannot leak its exception text to the browser."""
    import app as app_module
    from gradio_client import Client

    kwargs = app_module.launch_kwargs(studio)
    assert kwargs["show_error"] is False

    def leaky(x):
        raise RuntimeError("SECRET internal detail")

    def polite(x):
        raise InvalidInput("Prompt must not be empty.")

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(leaky, box, box, api_name="leaky")
        box.change(guarded(polite), box, box, api_name="polite")
    from tests.conftest import free_port

    port = free_port()
    kwargs.update(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    demo.queue().launch(**kwargs)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError) as info:
            client.predict("x", api_name="/leaky")
        assert "SECRET" not in str(info.value)
        with pytest.raises(AppError, match="Prompt must not be empty"):
            client.predict("x", api_name="/polite")
    finally:
        demo.close()


def test_user_errors_log_one_line_without_traceback(caplog):
    @guarded
    def handler():
        raise InvalidInput("Width 70 is not a multiple of 8 (try 64).")

    with caplog.at_level(logging.DEBUG):
        with pytest.raises(gr.Error) as info:
            handler()
    assert info.value.print_exception is False  # gradio prints no 27-line traceback
    ours = [r for r in caplog.records if "multiple of 8" in r.getMessage()]
    assert len(ours) == 1 and ours[0].exc_info is None and "\n" not in ours[0].getMessage()


def test_secrets_typed_by_a_user_are_masked_in_messages_and_stderr(capfd):
    """An hf_ token in a model id and the admin password in a path never reach the log or stderr."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from dreamshot import safety
    from tests.conftest import free_port

    token, password = "hf_" + "Q" * 30, "pw-sesame-4711"
    safety.configure_logging([password])

    @guarded
    def load_model(model_id):
        raise InvalidInput(f"Cannot load the model {model_id!r} from /data/{password}/x.")

    def unguarded(model_id):  # gradio prints this one's traceback itself
        raise RuntimeError(f"boom {model_id}")

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(load_model, box, box, api_name="load")
        box.change(unguarded, box, box, api_name="raw")
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        show_error=False)
    saved = safety.sys.stderr
    safety.redact_stderr()
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(AppError) as info:
            client.predict(f"owner/{token}", api_name="/load")
        assert token not in str(info.value) and password not in str(info.value)
        with pytest.raises(AppError):
            client.predict(f"owner/{token}", api_name="/raw")
    finally:
        safety.sys.stderr.flush()
        safety.sys.stderr = saved
        demo.close()
    err = capfd.readouterr().err
    assert "boom" in err  # the unguarded traceback was printed, masked
    assert token not in err and password not in err
    assert "Cannot load the model" not in err or "Traceback" not in err.split("Cannot load the model")[0][-300:]


def test_handlers_wait_while_the_warm_up_imports(monkeypatch):
    """A request during the warm-up's imports waits for them instead of seeing half a module."""
    import threading
    import time

    from dreamshot import models

    monkeypatch.setattr(models, "_IMPORTED", threading.Event())
    monkeypatch.setattr(models, "_IMPORT_LOCK", threading.Lock())
    finished = threading.Event()

    def warm_up():
        with models._IMPORT_LOCK:
            time.sleep(0.4)
            finished.set()
            models._IMPORTED.set()

    seen = []

    @guarded
    def handler():
        seen.append(finished.is_set())

    t = threading.Thread(target=warm_up)
    t.start()
    time.sleep(0.05)
    handler()
    t.join()
    assert seen == [True]


def test_demo_model_is_built_once_by_concurrent_callers(tmp_path, monkeypatch):
    import threading
    import time

    from dreamshot import demo_model

    built = []

    def fake_build(path, seed=demo_model.SEED):
        built.append(path)
        time.sleep(0.3)
        path.mkdir(parents=True)
        (path / "model_index.json").write_text("{}")
        (path / demo_model.MARKER).write_text('{"version": %d}' % demo_model.DEMO_VERSION)
        return path

    monkeypatch.setattr(demo_model, "build_tiny_sd", fake_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(demo_model.ensure_demo_model(tmp_path)))
               for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(built) == 1 and len(results) == 4 and len(set(results)) == 1


def test_a_logged_in_persons_stop_reaches_their_run_from_any_window():
    """Generate and Video key running jobs by job_owner: a logged-in person keeps it across reloads and
    windows (a Stop after a reload used to reach nothing); without a login, each page session is its own."""
    from types import SimpleNamespace

    from dreamshot.ui import job_owner

    first = SimpleNamespace(username="Ada", session_hash="s1")
    after_reload = SimpleNamespace(username="Ada", session_hash="s2")
    assert job_owner(first) == job_owner(after_reload) != job_owner(SimpleNamespace(username="Bo", session_hash="s1"))
    anonymous = [SimpleNamespace(username=None, session_hash=h) for h in ("s1", "s2")]
    assert job_owner(anonymous[0]) != job_owner(anonymous[1]) and job_owner(None) == "api"


def test_known_library_noise_is_dropped_and_nothing_else():
    """transformers' "requires torchvision (not installed)" fallback warning (expected on this stack,
    README: Why no torchvision) is dropped from the logs; every other warning of that logger stays."""
    from dreamshot import safety

    safety.configure_logging()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("transformers.utils.import_utils")
    log.addHandler(handler)
    try:
        log.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                    "`CLIPImageProcessorPil` for backward compatibility.")
        log.warning("a warning worth reading")
    finally:
        log.removeHandler(handler)
    assert seen == ["a warning worth reading"]
