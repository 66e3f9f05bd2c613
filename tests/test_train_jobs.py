"""The job runner with real trainer processes on the tiny model: the queue (one run at a time),
LoRA registration, cancel + resume, recovery after a server restart, settings refused before
anything starts, and the Hub token kept out of the command line, files and database."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.generate.loras import LoraLibrary
from training import jobs
from tests.training_helpers import make_imagefolder

FAST = dict(resolution=32, validation_inference_steps=1, validation_steps=0, checkpoint_steps=0)
TOKEN = "hf_" + "Zq9" * 10

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def wait_for(runner, predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.tick()
        running = runner.list_runs((jobs.RUNNING,))
        assert len(running) <= 1, "two runs trained at the same time"
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out; runs: " + repr(runner.list_runs()))


@pytest.fixture
def runner(studio):
    r = jobs.TrainingRunner(studio, poll_s=0.2)
    yield r
    for run in r.list_runs((jobs.RUNNING,)):
        r._signal(run, 9)


@pytest.fixture
def dataset(tmp_path):
    return make_imagefolder(tmp_path / "set", shots=("close", "long"), per_shot=2)


def test_bad_settings_are_refused_before_anything_is_queued(runner, dataset):
    for request, message in [
        (jobs.TrainRequest(["close"], "smoke", {"rank": 0}, dataset=str(dataset)), "--rank"),
        (jobs.TrainRequest(["closeup"], "smoke", dataset=str(dataset)), "Unknown shot type"),
        (jobs.TrainRequest(["close"], "smoke", {"bogus": 1}, dataset=str(dataset)), "Unknown training setting"),
        (jobs.TrainRequest([], "smoke", dataset=str(dataset)), "at least one shot"),
        (jobs.TrainRequest(["close"], "fast", dataset=str(dataset)), "Unknown preset"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            runner.submit(request)
    assert runner.list_runs() == []


def test_a_second_start_of_the_same_run_is_refused_and_queues_nothing(runner, dataset):
    (first,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    with pytest.raises(InvalidInput, match=f"Run #{first.id} .*already queued for the close shot"):
        runner.submit(jobs.TrainRequest(["close", "long"], "smoke", FAST, dataset=str(dataset)))
    assert [r.id for r in runner.list_runs()] == [first.id]      # not even the long run of that request
    (variant,) = runner.submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "rank": 8}, dataset=str(dataset)))
    runner.cancel(first.id)
    (again,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    assert [r.status for r in runner.list_runs()] == ["queued", "queued", "cancelled"]
    assert again.id > variant.id > first.id


def labeled_studio(studio, tmp_path, shots):
    """Frames imported into the studio's pool and labeled with ``shots`` (one frame each)."""
    from labeling import labels, pool
    from labeling.captions.service import save_machine_caption
    from PIL import Image

    folder = tmp_path / "pool"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(len(shots)):
        blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((320, 256), Image.NEAREST).save(folder / f"frame_{i}.png")
    pool.run_import(studio, pool.ImportOptions(str(folder), min_side=64))
    with studio.db.read() as conn:
        ids = [r.id for r in conn.execute(sa.select(schema.frames.c.id).where(schema.frames.c.status == "ok")
                                          .order_by(schema.frames.c.id))]
    assert len(ids) == len(shots)
    for fid, shot in zip(ids, shots):
        labels.record(studio, "ann", fid, shot)
        save_machine_caption(studio, fid, f"a person number {fid}", model="test")  # no run trains without one


def test_studio_set_is_exported_trained_and_registered_one_run_at_a_time(runner, studio, tmp_path):
    labeled_studio(studio, tmp_path, ["close", "close", "long"])
    runs = runner.submit(jobs.TrainRequest(["close", "medium"], "smoke", {**FAST, "max_steps": 3,
                                                                         "push_to_hub": "someone/dreamshot-test"},
                                           hub_token=TOKEN))
    assert [r.status for r in runs] == ["queued", "queued"]
    written = (runs[0].output_dir / "config.json").read_bytes()
    wait_for(runner, lambda: all(r.status not in ("queued", "running") for r in runner.list_runs()))
    done = {r.shot: r for r in runner.list_runs()}
    assert done["close"].status == "done", done["close"].error
    assert done["medium"].status == "failed" and "class is empty" in done["medium"].error
    # config.json, written when the run was created, is the one copy: launching rewrote nothing.
    assert (done["close"].output_dir / "config.json").read_bytes() == written
    assert done["close"].train_config.dataset == str(done["close"].output_dir / "data")
    exported = (done["close"].output_dir / "data" / "metadata.jsonl").read_text().splitlines()
    assert len(exported) == 2 and all(json.loads(l)["shot"] == "close" for l in exported)
    assert not list((studio.settings.data_dir / "exports").glob(".run-*"))
    library = {l.name: l for l in LoraLibrary(studio).list()}
    assert list(library) == [done["close"].name]
    close = library[done["close"].name]
    assert close.run_id == done["close"].id and close.origin == "trained" and close.path.is_file()
    assert (close.kind, close.method, close.format) == ("lora", "lora", "diffusers")
    assert done["close"].result["method"] == "lora" and done["close"].method == "lora"
    assert close.base_model == studio.models.status.source
    assert close.meta["kohya_file"].endswith(".safetensors")
    assert done["close"].result["files"]["kohya"] == close.meta["kohya_file"]
    assert done["close"].step == 3 == done["close"].total_steps

    # The token reached the process (the upload was tried, offline it fails) but no file or row holds it.
    out = done["close"].output_dir
    status = (out / "status.jsonl").read_text()
    assert "Upload to the Hub failed" in status and "HF_TOKEN is not set" not in status
    command = (out / "command.txt").read_text()
    assert command.split()[1:5] == ["-m", "training", "--config", str(out / "config.json")]
    for path in [out / "command.txt", out / "train.log", out / "config.json", out / "status.jsonl"]:
        assert TOKEN not in path.read_text()
    with studio.db.read() as conn:
        rows = conn.execute(sa.select(schema.training_runs)).all()
    assert TOKEN not in json.dumps([list(map(str, r)) for r in rows])

    progress = runner.progress(done["close"].id)
    assert [s for s, _ in progress.losses] == [1, 2, 3] and len(progress.images) == 2 and progress.phase == "finished"
    assert all(p.endswith(".png") for p in progress.images)


def test_cancel_keeps_a_checkpoint_and_resume_finishes_the_run(runner, studio, dataset):
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "max_steps": 30, "checkpoint_steps": 5},
                                             dataset=str(dataset)))
    wait_for(runner, lambda: runner.progress(run.id).phase in ("caching latents and text embeddings", "training"))
    runner.cancel(run.id)
    wait_for(runner, lambda: runner.get(run.id).status != "running")
    cancelled = runner.get(run.id)
    assert cancelled.status == "cancelled" and cancelled.resumable, cancelled.error
    assert 1 <= cancelled.step < 30 and "resume" in cancelled.error.lower()
    assert list((run.output_dir / "checkpoints").glob("checkpoint-*"))
    assert not (run.output_dir / "pytorch_lora_weights.safetensors").exists()
    assert LoraLibrary(studio).list() == []

    runner.resume(run.id)
    assert "--resume" in runner.command(runner.get(run.id))
    wait_for(runner, lambda: runner.get(run.id).status not in ("queued", "running"))
    finished = runner.get(run.id)
    assert finished.status == "done", finished.error
    steps = [s for s, _ in runner.progress(run.id).losses]
    assert steps == list(range(1, 31))
    assert any(json.loads(l)["event"] == "resume" for l in (run.output_dir / "status.jsonl").read_text().splitlines())
    assert [l.run_id for l in LoraLibrary(studio).list()] == [run.id]


def test_a_run_left_running_by_a_dead_server_is_interrupted_and_resumable(studio, dataset):
    runner = jobs.TrainingRunner(studio)
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runner.runs.update(run.id, status=jobs.RUNNING, pid=dead.pid, step=7)

    restarted = jobs.TrainingRunner(studio)  # a new server process
    restarted.recover()
    after = restarted.get(run.id)
    assert after.status == "interrupted" and after.resumable and "Resume" in after.error
    assert restarted.resume(run.id).status == "queued"
    with pytest.raises(InvalidInput):
        restarted.resume(run.id)


def test_queued_run_can_be_cancelled_before_it_starts(runner, dataset):
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    assert runner.cancel(run.id).status == "cancelled"
    runner.tick()
    assert runner.list_runs((jobs.RUNNING,)) == []


def test_ctrl_c_after_the_run_ended_stops_the_cli_quietly(runner, dataset, monkeypatch):
    """``python -m training`` follows a run in the foreground; a Ctrl-C that lands after the run
    finished (or was cancelled elsewhere) has nothing to cancel: the run is returned, no error."""
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    runner.runs.update(run.id, status=jobs.RUNNING)

    def ctrl_c_after_the_end(seconds):
        runner.runs.update(run.id, status=jobs.DONE)
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs.time, "sleep", ctrl_c_after_the_end)
    said = []
    assert runner.run_foreground(run.id, echo=said.append).status == jobs.DONE
    assert said == [f"run {run.id} is already done; nothing to stop"]
    assert runner.cancel(run.id).status == jobs.DONE      # cancelling again changes nothing


def test_command_is_an_argument_list_and_multi_gpu_goes_through_accelerate(runner, dataset, monkeypatch):
    (run,) = runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    cmd = runner.command(run)
    assert cmd[1:4] == ["-m", "training", "--config"] and cmd[-1].endswith("config.json")
    monkeypatch.setenv("DREAMSHOT_TRAIN_PROCESSES", "4")
    assert runner.command(run)[1:7] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4", "-m"]
    monkeypatch.setenv("DREAMSHOT_TRAIN_PROCESSES", "4; reboot")
    with pytest.raises(InvalidInput):
        runner.command(run)


def test_run_names_cannot_smuggle_shell_or_paths(runner, dataset):
    for name in ("x; rm -rf ~", "../../etc", "a b"):
        with pytest.raises(InvalidInput, match="--name"):
            runner.submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "name": name}, dataset=str(dataset)))


def test_studio_cli_needs_shot_types(studio, capsys):
    from training.__main__ import main

    assert main(["--data", str(studio.settings.data_dir), "--model", "demo"]) == 2
    assert "--shots close medium long" in capsys.readouterr().err


def test_studio_cli_refuses_while_a_run_trains_and_queues_nothing(runner, studio, dataset, capsys):
    """The app's runner trains whatever is queued: a refused command must leave nothing queued."""
    from training.__main__ import main

    training, stopped = (runner.submit(jobs.TrainRequest([shot], "smoke", FAST, dataset=str(dataset)))[0]
                         for shot in ("close", "long"))
    runner.cancel(stopped.id)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(training.config_path)])
    try:
        runner.runs.update(training.id, status=jobs.RUNNING, pid=stand_in.pid)
        flags = ["--data", str(studio.settings.data_dir), "--model", "demo"]
        assert main([*flags, "--shots", "medium", "--preset", "smoke"]) == 2
        assert main([*flags, "--resume-run", str(stopped.id)]) == 2
        assert f"Run {training.id} (close) is training" in capsys.readouterr().err
        assert [(r.id, r.status) for r in runner.list_runs()] == [(stopped.id, "cancelled"), (training.id, "running")]
    finally:
        stand_in.kill()
        stand_in.wait()


def test_settings_come_from_the_project_and_live_in_config_json_only(runner, studio, dataset):
    studio.project.set_taxonomy("framing")
    template = studio.project.set_template("a {shot} film still of {caption}")
    with pytest.raises(InvalidInput, match="Unknown shot type 'close'"):
        runner.submit(jobs.TrainRequest(["close"], "smoke", FAST, dataset=str(dataset)))
    (run,) = runner.submit(jobs.TrainRequest(["close_up"], "smoke", {**FAST, "rank": 8}, dataset=str(dataset)))
    cfg = run.train_config
    assert (cfg.shot_phrase, cfg.prompt_template, cfg.rank) == ("close-up shot", template, 8)
    assert cfg.dataset == str(dataset.resolve()) and cfg.output_dir == str(run.output_dir)
    assert cfg.prompts()[0] == studio.project.prompt("close_up", "a woman in a red coat standing in the rain")
    with studio.db.read() as conn:
        stored = conn.execute(sa.select(schema.training_runs.c.config)).scalar_one()
    assert stored == {"source": "folder", "method": "lora", "rank": 8, "alpha": 4.0, "learning_rate": 1e-4, "resolution": 32,
                      "batch_size": 1}  # a summary for the history; the settings are in config.json


def test_queued_runs_continue_after_a_restart_without_a_page_visit(make_studio, dataset, tmp_path):
    before = make_studio(data_dir=tmp_path / "data")
    (run,) = jobs.service(before).submit(jobs.TrainRequest(["close"], "smoke", {**FAST, "max_steps": 2},
                                                            dataset=str(dataset)))
    before.close()  # the server stops with the run still queued

    studio = make_studio(data_dir=tmp_path / "data")
    runner = jobs.service(studio)
    assert runner is jobs.service(studio)  # one runner per studio
    runner.poll_s = 0.2
    assert runner.start() is runner        # what app.py's warm-up calls; nothing else ticks below
    deadline = time.time() + 240
    while runner.get(run.id).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
    assert runner.get(run.id).status == "done", runner.get(run.id).error
    thread = runner._thread
    studio.close()
    assert not thread.is_alive()           # closing the studio stops the polling
