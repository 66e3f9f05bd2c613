"""The Evaluate tab through gradio_client on the served app, and its admin check."""

from __future__ import annotations

import pytest

from dreamshot.errors import AccessDenied
from dreamshot.evaluate.tab import EvalForm, EvaluateHandlers
from tests.evaluate_fixtures import eval_studio, tiny_eval_models  # noqa: F401 (fixtures)
from tests.generate_fixtures import lora_files  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tab_runs_an_evaluation_and_shows_tables_plot_and_pairs(eval_studio, tiny_eval_models, serve):
    from gradio_client import Client

    client = Client(serve(eval_studio), verbose=False)
    status, tables, plot, gallery = client.predict(
        "tabrun", "test", [], 2, 1.0, tiny_eval_models["clip"], tiny_eval_models["dino"], "auto", 4, 64, 2,
        True, "0,1", False, api_name="/evaluate_run")
    assert status.startswith("**Complete**: 4 pairs")
    assert "Table 3" in tables and "Table 4" in tables and "α curve" in tables and "judge" in tables
    assert plot and len(gallery) == 2
    again = client.predict("tabrun", api_name="/evaluate_results")
    assert again[1] == tables
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No results in evaluations/nothing"):
        client.predict("nothing", api_name="/evaluate_results")
    with pytest.raises(AppError, match="Run name"):
        client.predict("../up", api_name="/evaluate_results")
    assert client.predict(api_name="/evaluate_stop") == "No evaluation is running."

    # The Show results button: a run without results clears the previous run's view and says so.
    ui = EvaluateHandlers(eval_studio)
    assert ui.show("tabrun")[1] == tables
    status, tables_shown, plot_shown, pairs_shown = ui.show("nothing")
    assert "No results in evaluations/nothing" in status and (tables_shown, plot_shown, pairs_shown) == ("", None, [])


def test_only_admins_may_evaluate(make_studio):
    studio = make_studio(admin_password="pw-admins")
    ui = EvaluateHandlers(studio)
    with pytest.raises(AccessDenied):
        ui.run(EvalForm(name="x"), request=None)
    with pytest.raises(AccessDenied):
        ui.results("x", request=None)
    assert not (studio.settings.data_dir / "evaluations").exists()
