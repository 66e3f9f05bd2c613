"""Safe settings without a server: the allowed roots of server paths (--allow-dir), exports that never
replace a folder the studio did not make (also from the CLI), and the warning of an open studio."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dreamshot.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]


def test_allowed_dirs_from_flags_or_environment(monkeypatch, tmp_path):
    from dreamshot import settings as config

    monkeypatch.setenv("DREAMSHOT_ALLOWED_DIRS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert config.parse([], server=True).allowed_dirs == (tmp_path / "a", tmp_path / "b")
    given = config.parse(["--data", str(tmp_path / "d"), "--allow-dir", str(tmp_path / "c")], server=True)
    assert given.allowed_roots == (tmp_path / "d", tmp_path / "c")              # the flag wins


def test_server_paths_from_the_page_stay_inside_the_roots(tmp_path):
    from dreamshot.server_paths import confine
    from labeling.tab_admin import confined_source

    roots = (tmp_path / "data", tmp_path / "shared")
    for root in roots:
        root.mkdir()
    (tmp_path / "data" / "escape").symlink_to(tmp_path.parent)
    assert confine(tmp_path / "shared" / "set", roots, "export folder") == tmp_path / "shared" / "set"
    for bad in (tmp_path / "elsewhere", tmp_path / "data" / ".." / "x", tmp_path / "data" / "escape" / "x", "/etc"):
        with pytest.raises(InvalidInput, match="outside the folders the page may use.*--allow-dir"):
            confine(bad, roots, "export folder")
    assert confined_source("hf:someone/frames", roots) == "hf:someone/frames"     # a Hub id is no server path
    for bad in ("/etc", "imagefolder:/etc", f"hf:{tmp_path / 'elsewhere'}", "hf:./x"):
        with pytest.raises(InvalidInput, match="outside the folders"):
            confined_source(bad, roots)


def test_an_export_never_replaces_a_folder_it_did_not_make(studio, tmp_path, capsys):
    from labeling import export
    from labeling.__main__ import main

    theirs = tmp_path / "their-dataset"
    theirs.mkdir()
    (theirs / "metadata.jsonl").write_text("{}\n")                      # looks like an export; is not ours
    with pytest.raises(InvalidInput, match="was not made by a studio export"):
        export.export_imagefolder(studio, theirs)
    assert main(["export", str(theirs), "--data", str(studio.settings.data_dir), "--model", "demo"]) == 2
    assert "was not made by a studio export" in capsys.readouterr().err
    assert sorted(p.name for p in theirs.iterdir()) == ["metadata.jsonl"]     # untouched, also by the CLI
    ours = tmp_path / "ours"
    export.export_imagefolder(studio, ours)
    assert (ours / export.MARKER).is_file()
    assert main(["export", str(ours), "--data", str(studio.settings.data_dir), "--model", "demo"]) == 0
    legacy = studio.settings.data_dir / "exports" / "shots"                  # an export from before the marker
    legacy.mkdir(parents=True)
    (legacy / "metadata.jsonl").write_text("{}\n")
    assert export.export_imagefolder(studio, legacy).count == 0 and (legacy / export.MARKER).is_file()


def test_the_clips_export_follows_the_same_rules(studio, tmp_path):
    from labeling.clips import export_clips

    theirs = tmp_path / "their-clips"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="was not made by a studio export"):
        export_clips(studio, theirs)
    with pytest.raises(InvalidInput, match="outside the folders the page may use"):
        export_clips(studio, tmp_path / "new", roots=studio.settings.allowed_roots)
    assert export_clips(studio, studio.settings.data_dir / "exports" / "clips", roots=studio.settings.allowed_roots)
    assert (theirs / "notes.txt").read_text() == "keep me"


def test_an_open_studio_is_warned_about(make_studio):
    import app as app_module

    from dreamshot.access import exposure_warning
    from dreamshot.settings import Settings

    assert exposure_warning(Settings()) is None                                # 127.0.0.1: this machine only
    assert exposure_warning(Settings(host="localhost")) is None
    assert exposure_warning(Settings(host="0.0.0.0", admin_password="pw")) is None
    assert exposure_warning(Settings(host="0.0.0.0", survey_only=True)) is None
    assert "gradio.live" in exposure_warning(Settings(share=True))
    assert "on ::" in exposure_warning(Settings(host="::"))
    banner = app_module.banner_markdown(make_studio(host="0.0.0.0"))
    assert banner.startswith("**Warning:** the studio is served on 0.0.0.0") and "DREAMSHOT_ADMIN_PASSWORD" in banner
    assert "Warning" not in (app_module.banner_markdown(make_studio()) or "")


def test_python_app_py_warns_on_stderr_at_once(tmp_path):
    with socket.socket() as holder:                 # a busy port: the studio stops right after the warning
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "app.py", "--share", "--data", str(tmp_path / "data"), "--model",
                               "demo", "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    first = proc.stderr.splitlines()[0]
    assert first.startswith("dreamshot: warning: the studio is served through a public gradio.live link"), proc.stderr
    assert "without a password" in first and proc.returncode == 1


def test_the_cli_names_image_bombs_and_non_images_in_one_line(studio, tmp_path, capsys):
    from dreamshot.__main__ import main
    from tests.test_security_web import _bomb

    bomb, notes = _bomb(tmp_path / "bomb.png"), tmp_path / "notes.png"
    notes.write_text("not a picture")
    assert main(["read-png", str(bomb), str(notes)]) == 2
    err = capsys.readouterr().err
    assert "bomb.png: The image is too large to open safely" in err and "notes.png is not an image" in err
    common = ["--data", str(studio.settings.data_dir), "--model", "demo", "--prompt", "x", "--control", "canny",
              "--out", str(tmp_path / "out")]
    for reference, message in ((bomb, "'bomb.png' is too large to open safely"), (notes, "'notes.png' is not an image")):
        assert main(["generate", *common, "--control-image", str(reference)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_train_and_evaluate_folders_from_the_page_stay_inside_the_roots(studio, tmp_path):
    """The other server folders the page takes: Train's imagefolder (read) and class-image folder
    (prior preservation writes into it), Evaluate's held-out frames folder."""
    from dreamshot.evaluate.tab import EvalForm, EvaluateHandlers
    from training import config as tconfig
    from training.tab import TrainHandlers
    from training.views import FORM_NAMES, TrainForm

    outside = tmp_path / "outside"
    outside.mkdir()
    train = TrainHandlers(studio)
    values = {name: getattr(tconfig.preset("smoke"), name) for name in FORM_NAMES}
    with pytest.raises(InvalidInput, match="imagefolder .* is outside the folders the page may use"):
        train.start(TrainForm.from_inputs(["close"], "smoke", str(outside), "", *[values[n] for n in FORM_NAMES]),
                    request=None)
    values.update(prior_preservation=True, class_dir=str(outside / "class"))
    with pytest.raises(InvalidInput, match="Class-image folder .* is outside the folders the page may use"):
        train.start(TrainForm.from_inputs(["close"], "smoke", "", "", *[values[n] for n in FORM_NAMES]), request=None)
    assert not (outside / "class").exists() and train.runner.list_runs() == []
    with pytest.raises(InvalidInput, match="held-out frames folder .* is outside the folders the page may use"):
        EvaluateHandlers(studio).options(EvalForm(name="x", frames=str(outside)))
    inside = studio.settings.data_dir / "held-out"
    assert EvaluateHandlers(studio).options(EvalForm(name="x", frames=str(inside))).frames == str(inside.resolve())
