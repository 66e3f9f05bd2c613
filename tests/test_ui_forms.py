"""A refused form event shows its message once and leaves the form usable.

Gradio marks every output of a failed event with an "Error" overlay that swallows clicks (unless the
event shows no progress): a form event whose outputs are the form's own fields must be wired with
``dreamshot.ui.QUIET``, so a refusal is one toast. Checked on the served app's wiring (the overlay
itself was seen in Chromium: issue 21, item 4), and the refusal loses nothing.
"""

from __future__ import annotations

import gradio as gr
import pytest

from dreamshot.errors import InvalidInput

# Events whose outputs include fields people edit and that refuse bad input.
FORM_EVENTS = ["label_settings", "label_resolve", "read_png", "read_parameters", "upload_lora", "train_preset"]
FIELDS = (gr.Textbox, gr.Number, gr.Slider, gr.Dropdown, gr.Radio, gr.Checkbox, gr.CheckboxGroup)


def _overlaid_fields(fn) -> list[str]:
    """The editable fields a failure of ``fn`` would cover with an "Error" overlay."""
    if fn.show_progress == "hidden":
        return []
    targets = fn.show_progress_on or fn.outputs
    return [c.label for c in targets if isinstance(c, FIELDS) and c.interactive is not False
            and c.visible is not False]


def test_refused_form_events_cover_no_field_with_an_error(studio):
    import app as app_module

    demo = app_module.build_app(studio)
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert set(FORM_EVENTS) <= set(by_name)
    covered = {name: _overlaid_fields(by_name[name]) for name in FORM_EVENTS}
    assert covered == {name: [] for name in FORM_EVENTS}
    # Every other event too (page loads that fill a form, pickers, "reuse this seed", suggestion settings):
    # none may put an overlay on a field people edit when it fails.
    everywhere = {f"{fn.api_name or fn.name} #{i}": _overlaid_fields(fn) for i, fn in demo.fns.items()}
    assert {name: fields for name, fields in everywhere.items() if fields} == {}


def test_a_bad_quota_is_refused_and_changes_nothing(studio):
    from labeling.tab_admin import AdminHandlers, SettingsForm

    h = AdminHandlers(studio)
    before = h.current_settings()
    with pytest.raises(InvalidInput, match="Quota for 'close' must be a whole number"):
        h.save_settings(SettingsForm(before[0], "close=abc", "384", 0.5, 9))
    assert h.current_settings() == before
