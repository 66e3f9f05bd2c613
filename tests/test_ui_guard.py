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
        with pytest.raises(Exception) as info:
            client.predict("x", api_name="/leaky")
        assert "SECRET" not in str(info.value)
        with pytest.raises(Exception, match="Prompt must not be empty"):
            client.predict("x", api_name="/polite")
    finally:
        demo.close()
