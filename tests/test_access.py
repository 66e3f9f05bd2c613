"""Every admin endpoint checks its caller itself: generated from the served app's own endpoint list,
each one is called as a participant (nobody logged in) and must refuse."""

from __future__ import annotations

import pytest

REFUSAL = "Log in as a studio member"


def _argument(param: dict, upload):
    """A plausible value for one API parameter: its default, else gradio's own example. Files: a
    local PNG in a list parameter, an empty single-file parameter (gradio's examples point at the
    network, and a PNG would fail a component's type filter before the handler is reached)."""
    kind = str(param.get("python_type", {}).get("type", "")) + str(param.get("component", ""))
    if "filepath" in kind or "File" in kind or "Image" in kind or "Video" in kind:
        return [upload] if kind.lower().startswith("list") else None
    if param.get("parameter_has_default"):
        return param.get("parameter_default")
    return param.get("example_input")


@pytest.fixture(scope="module")
def participant_client(demo_model_dir, tmp_path_factory):
    """The full studio with an admin password, served WITHOUT gradio's login: every caller is a
    participant, as if the login were bypassed. Only the handlers' own checks stand. Served once
    for this module: its tests only read the endpoint list and are refused, so nothing changes."""
    import shutil

    import app as app_module
    from gradio_client import Client
    from PIL import Image

    from dreamshot.settings import Settings
    from dreamshot.studio import Studio
    from tests.conftest import free_port

    tmp_path = tmp_path_factory.mktemp("access")
    (tmp_path / "data" / "models").mkdir(parents=True)
    shutil.copytree(demo_model_dir, tmp_path / "data" / "models" / "demo-sd")
    studio = Studio.open(Settings(data_dir=tmp_path / "data", model="demo", admin_password="pw-for-admins"))
    demo = app_module.build_app(studio)
    kwargs = app_module.launch_kwargs(studio)
    kwargs.update(auth=None, server_name="127.0.0.1", server_port=free_port(), share=False,
                  prevent_thread_lock=True, quiet=True)
    demo.queue().launch(**kwargs)
    png = tmp_path / "probe.png"
    Image.new("RGB", (64, 64), (90, 40, 20)).save(png)
    try:
        yield Client(f"http://127.0.0.1:{kwargs['server_port']}/", verbose=False), png, app_module
    finally:
        demo.close()
        studio.close()


def test_every_admin_endpoint_refuses_a_participant(participant_client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, png, app_module = participant_client
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    public = {f"/{name}" for name in app_module.public_endpoints()}
    admin = sorted(set(endpoints) - public)
    assert len(admin) >= 40, f"expected the studio's ~40 admin endpoints, found {admin}"
    unchecked = []
    for name in admin:
        args = [_argument(p, handle_file(str(png))) for p in endpoints[name]["parameters"]]
        try:
            client.predict(*args, api_name=name)
        except AppError as exc:
            if REFUSAL in str(exc):
                continue
            unchecked.append(f"{name}: {str(exc)[:120]}")
        else:
            unchecked.append(f"{name}: answered a participant")
    assert not unchecked, "admin endpoints that do not check the caller:\n" + "\n".join(unchecked)


def test_public_endpoints_are_few_and_named(participant_client):
    client, _, app_module = participant_client
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    public = {f"/{name}" for name in app_module.public_endpoints()}
    assert "/status" in public and public <= endpoints | {"/status"}
