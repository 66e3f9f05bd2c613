"""Settings, access rules, hardening and base-model resolution (the demo fallback)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dreamshot import models, settings as config
from dreamshot.access import Access
from dreamshot.demo_model import MARKER
from dreamshot.errors import AccessDenied, InvalidInput, ModelLoadError, SettingsError
from dreamshot.safety import RedactSecrets, harden_pillow
from dreamshot.shots import PRESETS, get_taxonomy, training_prompt


# ---- settings -------------------------------------------------------------------------------
def test_flags_win_over_environment_which_wins_over_defaults(monkeypatch):
    monkeypatch.setenv("DREAMSHOT_DATA", "/env/data")
    monkeypatch.setenv("DREAMSHOT_PORT", "9000")
    monkeypatch.setenv("DREAMSHOT_SURVEY_ONLY", "1")
    s = config.parse(["--data", "/flag/data"], server=True)
    assert s.data_dir == Path("/flag/data") and s.port == 9000 and s.survey_only
    monkeypatch.delenv("DREAMSHOT_DATA")
    monkeypatch.delenv("DREAMSHOT_MODEL", raising=False)
    s = config.parse([], server=True)
    assert s.data_dir == Path(config.DEFAULT_DATA) and s.model == config.DEFAULT_MODEL


def test_spaces_server_variables_are_honoured(monkeypatch):
    for key in ("DREAMSHOT_HOST", "DREAMSHOT_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    s = config.parse([], server=True)
    assert (s.host, s.port) == ("0.0.0.0", 7861)


def test_password_never_in_repr(monkeypatch):
    s = config.parse(["--admin-password", "hunter2-long"])
    assert "hunter2-long" not in repr(s) and s.login_required


def test_unwritable_data_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SettingsError, match="not writable"):
        config.Settings(data_dir=blocker / "data").prepare_data_dir()


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_out_of_range_is_refused(monkeypatch, port):
    monkeypatch.setenv("DREAMSHOT_PORT", port)
    with pytest.raises(SettingsError, match="between 1 and 65535"):
        config.parse([], server=True)


def test_a_busy_port_is_refused_before_serving():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SettingsError, match=f"Port {port} on 127.0.0.1 is already in use"):
            config.Settings(host="127.0.0.1", port=port).check_port()
    assert config.Settings(host="127.0.0.1", port=port).check_port()  # free again once closed
    with pytest.raises(SettingsError, match="does not resolve"):
        config.Settings(host="no-such-host.invalid", port=port).check_port()


def test_database_url_defaults_to_sqlite_in_data_folder(tmp_path):
    s = config.Settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{(tmp_path / 'studio.db').resolve()}"


# ---- access ---------------------------------------------------------------------------------
def test_no_password_means_local_admin():
    access = Access(None)
    assert not access.login_required and access.require_admin(None) == "local"
    assert access.check_login("anyone", "") is False


def test_password_login_and_roles():
    access = Access("s3cret-pass")
    assert access.check_login("Ada Lovelace", "s3cret-pass")
    assert not access.check_login("Ada", "wrong")
    assert not access.check_login("../etc", "s3cret-pass")
    assert access.require_admin("Ada") == "Ada"
    with pytest.raises(AccessDenied):
        access.require_admin(None)


def test_survey_only_has_no_admins():
    access = Access("s3cret-pass", survey_only=True)
    assert not access.check_login("Ada", "s3cret-pass")
    with pytest.raises(AccessDenied):
        access.require_admin("Ada")


# ---- hardening ------------------------------------------------------------------------------
def test_decompression_bomb_warning_is_an_error(tmp_path):
    harden_pillow()
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(path)  # 72 Mpx: over the limit, under 2x (a warning by default)
    with pytest.raises((Image.DecompressionBombWarning, Image.DecompressionBombError)):
        Image.open(path).load()


def test_log_redaction_masks_tokens_and_secrets():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s pw %s",
                               ("hf_abcdefghijklmnopqrstuvwxyz123", "hunter2-long"), None)
    RedactSecrets(["hunter2-long"]).filter(record)
    text = record.getMessage()
    assert "hf_abcdefghijklmnopqrstuvwxyz123" not in text and "hunter2-long" not in text


# ---- taxonomy -------------------------------------------------------------------------------
def test_taxonomy_presets_and_prompt():
    paper = get_taxonomy()
    assert paper.names == ["close", "medium", "long"]
    assert {"paper", "framing", "angle"} <= set(PRESETS)
    assert training_prompt(paper.get("close"), "a woman") == "a high-quality close shot picture of a woman"
    with pytest.raises(InvalidInput, match="Unknown shot type"):
        paper.get("closeup")
    assert paper.by_key("3").name == "long"


# ---- model resolution -----------------------------------------------------------------------
def _settings(tmp_path, model, demo_model_dir):
    s = config.Settings(data_dir=tmp_path / "data", model=model)
    (s.models_dir).mkdir(parents=True)
    shutil.copytree(demo_model_dir, s.models_dir / "demo-sd")
    return s


def test_demo_model_is_used_when_asked(tmp_path, demo_model_dir):
    status = models.resolve(_settings(tmp_path, "demo", demo_model_dir))
    assert status.is_demo and status.reason is None and "untrained" in status.banner_markdown()


def test_missing_folder_falls_back_to_demo_with_reason(tmp_path, demo_model_dir):
    status = models.resolve(_settings(tmp_path, str(tmp_path / "nope"), demo_model_dir))
    assert status.is_demo and "does not exist" in status.reason
    assert "--model" in status.banner_markdown()


def test_folder_without_model_index_falls_back(tmp_path, demo_model_dir):
    (tmp_path / "empty").mkdir()
    status = models.resolve(_settings(tmp_path, str(tmp_path / "empty"), demo_model_dir))
    assert status.is_demo and "model_index.json" in status.reason


def test_unreachable_hub_id_falls_back_fast(tmp_path, demo_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online, but the Hub does not answer
    status = models.resolve(_settings(tmp_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", demo_model_dir),
                            probe_hub=lambda: False)
    assert status.is_demo and "cannot be reached" in status.reason


def test_offline_hub_id_says_hf_hub_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = config.Settings(data_dir=tmp_path / "data", model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    status = models.choose(settings, probe_hub=lambda: pytest.fail("probed the Hub while offline"))
    assert status.is_demo and "HF_HUB_OFFLINE is set" in status.reason


def test_garbage_model_spec_falls_back(tmp_path, demo_model_dir):
    status = models.resolve(_settings(tmp_path, "not a model!", demo_model_dir))
    assert status.is_demo and "neither" in status.reason


def test_local_diffusers_folder_is_a_real_model(tmp_path, demo_model_dir):
    real = tmp_path / "my-sd"
    shutil.copytree(demo_model_dir, real)
    (real / MARKER).unlink()
    status = models.resolve(_settings(tmp_path, str(real), demo_model_dir))
    assert not status.is_demo and status.source == str(real.resolve()) and status.banner_markdown() is None


def test_choosing_the_model_builds_and_loads_nothing(tmp_path):
    """The banner is decided before the page is built: choosing the demo model must not build it
    (that imports torch and writes a model); resolve() builds it when a feature needs the model."""
    settings = config.Settings(data_dir=tmp_path / "data", model=str(tmp_path / "nope"))
    chosen = models.choose(settings)
    assert chosen.is_demo and "does not exist" in chosen.reason and "untrained" in chosen.banner_markdown()
    assert not (settings.models_dir / "demo-sd").exists()
    resolved = models.resolve(settings, chosen=chosen)
    assert resolved.source == str(settings.models_dir / "demo-sd") and (settings.models_dir / "demo-sd").is_dir()
    assert (resolved.is_demo, resolved.reason) == (chosen.is_demo, chosen.reason)


def test_studio_model_choice_follows_the_manager(studio):
    choice = studio.model_choice()
    assert choice.is_demo and studio.model_choice() is choice and studio._models is None  # nothing resolved
    manager = studio.models
    assert studio.model_choice() is manager.status  # once resolved, the manager's (it records fallbacks)


def test_pipeline_loads_once_and_is_shared(studio):
    manager = studio.models
    assert not manager.loaded
    first = manager.pipeline()
    assert manager.pipeline() is first and studio.models is manager
    assert first.unet.dtype.is_floating_point and str(first.device) == "cpu"


def test_check_sd1_folder(demo_model_dir, tmp_path):
    models.check_sd1_folder(demo_model_dir)  # the demo model is SD-1.x shaped
    other = tmp_path / "sd2"
    shutil.copytree(demo_model_dir, other)
    (other / MARKER).unlink()
    with pytest.raises(ModelLoadError, match="not SD 1.x"):
        models.check_sd1_folder(other)  # cross_attention_dim 32 != 768
    with pytest.raises(ModelLoadError, match="model_index.json"):
        models.check_sd1_folder(tmp_path)


def test_demo_model_uses_the_real_sd15_tokenizer(demo_model_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(demo_model_dir / "tokenizer"), local_files_only=True)
    ids = tok("a high-quality close_shot picture of a woman").input_ids
    assert ids[:8] == [49406, 320, 1400, 268, 3027, 2660, 318, 2000] and tok.model_max_length == 77
