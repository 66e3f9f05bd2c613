"""The Train tab on the served app: a new user trains three shot LoRAs with live progress, cancels
and resumes one (gradio_client, every action a named endpoint), and the resulting LoRAs load with
``pipe.load_lora_weights`` in both formats giving the same image. Plus the same flow in Chromium."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dreamshot.errors import InvalidInput
from dreamshot.generate.loras import LoraLibrary
from tests.training_helpers import make_imagefolder
from training import config as tconfig
from training import jobs
from training.tab import HISTORY_HEADERS, PARAM_NAMES, TrainHandlers

SHOTS = ["close", "medium", "long"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def form(client, **changes):
    values = dict(zip(PARAM_NAMES, client.predict("smoke", api_name="/train_preset")))
    values.update(changes)
    return [values[name] for name in PARAM_NAMES]


def history(client):
    return {row[0]: row for row in client.predict(api_name="/train_history")["data"]}


def wait(client, predicate, timeout=400, seen=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        bar = client.predict(None, {}, api_name="/train_progress")[0]
        if seen is not None:
            seen.append(bar)
        rows = history(client)
        assert sum(r[3] == "running" for r in rows.values()) <= 1, "two runs trained at the same time"
        if predicate(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"timed out: {history(client)}")


def test_train_start_over_the_api_needs_only_what_differs_from_the_form(studio, serve, monkeypatch):
    """README: one named parameter per form field; the dataset and the Hub token may be left out."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(jobs.TrainingRunner, "start", lambda self: self)  # nothing trains here
    client = Client(serve(studio), verbose=False)
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/train_start"]["parameters"]
    assert [p["parameter_name"] for p in params if not p["parameter_has_default"]] == []
    with pytest.raises(AppError, match=r"LoRA rank \(rank\) must be between 1 and 256"):   # the parameter's name too
        client.predict(shots=["close"], preset="smoke", rank=0, api_name="/train_start")
    message = client.predict(shots=["close"], preset="smoke", api_name="/train_start")[0]
    assert "#1 close" in message
    run = history(client)[1]                  # the studio's labeled set (empty here), not a folder
    assert run[3] == "failed" and run[-1].startswith("The class is empty: no labeled close image")

    # A script that connects later acts on runs by number (the Run menu's choices are the page's).
    (queued,) = jobs.service(studio).submit(jobs.TrainRequest(["long"], "smoke"))
    later = Client(client.src, verbose=False)
    assert later.predict(queued.id, api_name="/train_status")["status"] == "queued"
    assert later.predict(queued.id, api_name="/train_cancel")[0] == f"Run #{queued.id}: Cancelled."
    again = later.predict(queued.id, api_name="/train_cancel")[0]          # information, not an AppError
    assert again.startswith(f"Run #{queued.id}: already cancelled; there is nothing to cancel.")
    with pytest.raises(AppError, match="No training run 99"):
        later.predict(99, api_name="/train_status")

    # A parameter left out takes the chosen preset's (and method's) value, not the form's paper values.
    message, rows = client.predict(shots=["long"], preset="smoke", method="ti", rank=8, api_name="/train_start")
    (created,) = [r for r in jobs.service(studio).list_runs() if f"#{r.id} long" in message]
    cfg, expected = created.train_config, tconfig.preset("smoke", method="ti")
    assert (cfg.method, cfg.rank) == ("ti", 8) and rows[0][0] == created.id
    assert (cfg.max_steps, cfg.learning_rate, cfg.resolution) == (expected.max_steps, expected.learning_rate,
                                                                   expected.resolution)
    assert (cfg.max_steps, cfg.learning_rate) != (tconfig.preset("paper").max_steps, tconfig.preset("paper").learning_rate)
    default_shots = client.predict(preset="smoke", api_name="/train_start")[0]
    assert all(f" {shot}" in default_shots for shot in ("close", "medium", "long"))   # no shots: every one


def test_three_shot_loras_with_live_progress_cancel_and_resume(studio, serve, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(serve(studio), verbose=False)
    dataset = str(make_imagefolder(studio.settings.data_dir / "set", shots=SHOTS, per_shot=2))

    with pytest.raises(AppError, match=r"LoRA rank \(rank\) must be between 1 and 256"):
        client.predict(SHOTS, "smoke", dataset, "", *form(client, rank=0), api_name="/train_start")
    assert history(client) == {}

    message = client.predict(SHOTS, "smoke", dataset, "",
                             *form(client, resolution=32, max_steps=8, validation_steps=4, checkpoint_steps=4),
                             api_name="/train_start")[0]
    assert "#1 close, #2 medium, #3 long" in message

    bars = []
    wait(client, lambda rows: rows[1][3] == "running", seen=bars)
    client.predict(1, api_name="/train_cancel")  # as early as a hasty user can: still loading, or training
    rows = wait(client, lambda rows: rows[1][3] == "cancelled", seen=bars)
    assert rows[1][-1].startswith("Cancelled")
    live = client.predict(1, api_name="/train_status")
    assert live["status"] == "cancelled" and live["step"] < 8

    client.predict(1, api_name="/train_resume")
    rows = wait(client, lambda rows: all(r[3] in ("done", "failed") for r in rows.values()), seen=bars)
    assert {r[2]: r[3] for r in rows.values()} == {"close": "done", "medium": "done", "long": "done"}, rows
    assert any("it/s · ETA" in b and "step " in b for b in bars)  # live progress was shown
    assert rows[1][4] == "8/8"
    status = client.predict(1, api_name="/train_status")
    assert [s for s, _ in status["losses"]] == list(range(1, 9)) and status["validation_step"] == 8
    progress = client.predict(1, {}, api_name="/train_progress")
    assert len(progress[2]) == 2  # the latest validation images, as pixels

    # The Generate tab's registry has the three LoRAs; both formats give the same image.
    loras = {l.shot: l for l in LoraLibrary(studio).list()}
    assert sorted(loras) == sorted(SHOTS) and all(l.origin == "trained" for l in loras.values())
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(studio.models.status.source, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for name, path in [("d", loras["close"].path), ("k", loras["close"].meta["kohya_file"])]:
        pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters([name], adapter_weights=[1.0])
        import torch

        images.append(pipe("a high-quality close shot picture of a man", num_inference_steps=2, height=64,
                           width=64, generator=torch.Generator().manual_seed(1), output_type="np").images[0])
        pipe.delete_adapters([name])
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


@pytest.mark.browser
def test_train_tab_in_the_browser(studio, serve, page, tmp_path, artifacts_dir):
    dataset = make_imagefolder(studio.settings.data_dir / "set", shots=SHOTS, per_shot=2)
    page.goto(serve(studio))
    page.locator("#demo-banner").first.wait_for()  # the page has been drawn
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-preset").get_by_text("smoke", exact=True).click()
    page.locator("#train-shots").get_by_text("Long shot", exact=True).click()  # close and medium: two runs
    page.locator("#train-dataset textarea, #train-dataset input").first.fill(str(dataset))
    page.get_by_text("Parameters").click()
    resolution = page.locator("#train-resolution input")
    resolution.wait_for(state="visible")
    page.wait_for_timeout(500)  # the preset's values land first
    resolution.fill("32")
    page.locator("#train-max_steps input").fill("6")
    page.locator("#train-start").click()
    page.locator("#train-message").get_by_text("Queued by").wait_for()
    # The view follows the queue: it ends on the last run (#2), not on the first one to finish.
    page.locator("#train-bar").get_by_text("#2 medium").wait_for(timeout=300_000)
    page.locator("#train-bar").get_by_text("done", exact=False).wait_for(timeout=180_000)
    assert "step 6 / 6" in page.locator("#train-bar").inner_text()
    page.locator("#train-samples img").first.wait_for(timeout=20_000)
    page.wait_for_timeout(2500)  # a few more ticks
    history = page.locator("#train-history").inner_text()
    assert "close-run1" in history and history.count("done") >= 2  # the history followed every run
    # The log box shows its newest line.
    log = page.locator("#train-log textarea")
    top, height, client = log.evaluate("e => [e.scrollTop, e.scrollHeight, e.clientHeight]")
    assert height > client and top + client >= height - 10, (top, height, client)
    # History headers are whole words on one line (no "ru n", "al ph a"); a wide table scrolls inside its box.
    lines = page.locator("#train-history th").evaluate_all("""ths => ths.flatMap(th => {
        const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT), out = [];
        for (let n = walk.nextNode(); n; n = walk.nextNode()) {
            if (!n.textContent.trim()) continue;
            const r = document.createRange(); r.selectNodeContents(n);
            out.push([n.textContent.trim(), new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]);
        }
        return out; })""")
    assert {t for t, _ in lines} >= set(HISTORY_HEADERS) and all(n <= 1 for _, n in lines), lines
    page.screenshot(path=str(artifacts_dir / "train-tab.png"), full_page=True)

    # The studio's own labeled set has no image yet: a clear message, no process started.
    page.locator("#train-dataset textarea, #train-dataset input").first.fill("")
    page.locator("#train-start").click()
    page.locator("#train-run-message").get_by_text("The class is empty", exact=False).wait_for(timeout=60_000)
    assert "failed" in page.locator("#train-bar").inner_text()
    page.locator("#train-rank input").fill("0")
    page.locator("#train-start").click()
    page.get_by_text("LoRA rank must be between 1 and 256", exact=False).first.wait_for()   # the field's label
    page.screenshot(path=str(artifacts_dir / "train-tab-errors.png"), full_page=True)


# ---- the live view, without a server ------------------------------------------------------------------
@pytest.fixture
def handlers(studio, monkeypatch, tmp_path):
    """Handlers on a runner that never launches anything (statuses are set by hand)."""
    monkeypatch.setattr(jobs.TrainingRunner, "start", lambda self: self)
    ui = TrainHandlers(studio)
    dataset = make_imagefolder(tmp_path / "set", shots=SHOTS, per_shot=1)
    ui.runs = ui.runner.submit(jobs.TrainRequest(SHOTS, "smoke", dataset=str(dataset)))
    return ui


def dropdown_value(output):
    return getattr(output, "value", None) if hasattr(output, "choices") else None


def test_the_view_follows_the_queue_unless_a_run_was_picked(handlers):
    first, second, _third = handlers.runs
    store = handlers.runner.runs
    out = handlers.refresh(None, {}, None)
    assert dropdown_value(out[6]) == first.id                # the next run to train
    shown = out[7]
    store.update(first.id, status=jobs.DONE)
    store.update(second.id, status=jobs.RUNNING)
    out = handlers.refresh(first.id, shown, None)
    assert dropdown_value(out[6]) == second.id and "#2 medium" in out[0]
    # Picked by hand: the finished run stays on screen while the queue moves on.
    picked = handlers.pick(first.id, out[7], None)
    assert "#1 close" in picked[0]
    store.update(second.id, status=jobs.DONE)
    out = handlers.refresh(first.id, picked[7], None)
    assert dropdown_value(out[6]) is None and "#1 close" in out[0]


def test_the_history_refreshes_when_a_run_changes(handlers):
    out = handlers.refresh(None, {}, None)
    assert [row[3] for row in out[5]] == ["queued"] * 3
    again = handlers.refresh(out[6].value, out[7], None)
    assert not isinstance(again[5], list)                     # unchanged: the table (and its scroll) stays
    handlers.runner.cancel(handlers.runs[2].id)
    out = handlers.refresh(out[6].value, again[7], None)
    assert [row[3] for row in out[5]] == ["cancelled", "queued", "queued"]
    assert out[5][0][5] == "LoRA r4 α4 · smoke · lr 0.0001 · 64px · b1"


def test_cancelling_a_run_that_is_over_says_so_without_an_error(handlers):
    """A second click on Cancel, or a click after the run ended, is nothing wrong: a plain message."""
    store, (first, second, third) = handlers.runner.runs, handlers.runs
    assert handlers.cancel(first.id, None)[0] == f"Run #{first.id}: Cancelled."
    message, rows = handlers.cancel(first.id, None)
    assert message == (f"Run #{first.id}: already cancelled; there is nothing to cancel. "
                       "Resume continues it from its last checkpoint.")
    assert [row[3] for row in rows] == ["queued", "queued", "cancelled"]
    store.update(second.id, status=jobs.DONE)
    assert handlers.cancel(second.id, None)[0] == f"Run #{second.id}: already done; there is nothing to cancel."
    assert handlers.runner.get(second.id).status == jobs.DONE and handlers.runner.get(third.id).status == "queued"


def test_the_run_menu_takes_a_number_or_text_typed_into_it(handlers):
    first = handlers.runs[0]
    for value in (first.id, str(first.id), f"#{first.id} close (close-run{first.id})"):
        assert handlers.status(value, None)["status"] == "queued"
    with pytest.raises(InvalidInput, match="'abc' is not a run number: pick a run from the list"):
        handlers.status("abc", None)


def test_the_method_choices_stay_on_one_line_beside_a_methods_fields(studio, serve, page):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(serve(studio))
    page.locator("#demo-banner").first.wait_for()  # the page has been drawn
    page.get_by_role("tab", name="Train").click()
    for method in ("Textual inversion", "Full fine-tune", "Motion LoRA (clips)"):
        page.locator("#train-method").get_by_text(method, exact=True).click()
        page.locator(f"#train-{ {'Textual inversion': 'ti', 'Full fine-tune': 'full'}.get(method, 'motion')}-fields").wait_for()
        tops = page.locator("#train-method label").evaluate_all("ls => ls.map(l => Math.round(l.getBoundingClientRect().top))")
        assert len(tops) == 4 and len(set(tops)) == 1, (method, tops)
