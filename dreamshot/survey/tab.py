"""Survey tab. Participants (no login, phone or desktop): intro, then pairs A/B with three questions
each, answered by click or with the keys A / B / N; the token stays in the browser, so a reload
resumes at the next unanswered pair. Admins (full studio only) get build / open / close / results /
exclusions below (``tab_admin.py``).

Participant API (``gradio_client``), JSON in and out:

    /survey_join    (survey, token)                         -> view (a new token unless `token` is yours)
    /survey_view    (token)                                 -> view: progress and the current pair
    /survey_answer  (token, slot, pair_id, question, answer) -> ack (+ lora_side when the pair is done)
    /survey_images  (token, slot)                           -> (image A, image B)

The three JSON endpoints skip Gradio's queue: besides gradio_client, any HTTP client can call them
with one ``POST /gradio_api/run/<name>`` and body ``{"data": [...]}``.
"""

from __future__ import annotations

import logging

import gradio as gr

from dreamshot.access import ADMIN
from dreamshot.client_address import request_ip
from dreamshot.errors import DreamShotError
from dreamshot.safety import redact
from dreamshot.survey.service import QUESTIONS, service
from dreamshot.ui import guarded

KEYS = ("A", "B", "N")
PREVIEW_NOTE = ("\n\n*Preview: you are a studio member, so these answers are kept apart from the participants' "
                "and not counted in the results.*")
LABELS = {"A": "A", "B": "B", "N": "Neither / same"}
# What a participant (nobody logged in) may call; every other endpoint checks for a studio member.
PUBLIC_API = ("survey_join", "survey_view", "survey_answer", "survey_images")
log = logging.getLogger(__name__)

# The pair's layout. Pictures A and B side by side at any width, each at most half of their column,
# scaled up or down with their aspect kept, and never taller than what leaves the questions in view.
# Narrow screens: pictures, then questions below. Wide screens (and a phone on its side): pictures
# two thirds, questions one third beside them. The A / B labels sit above the pictures, not on them.
CSS = """
.survey-layout { flex-wrap: wrap; gap: 12px; }
.survey-layout > .survey-pictures-col, .survey-layout > .survey-questions { flex: 1 1 100% !important; min-width: 0 !important; }
.survey-pictures { flex-wrap: nowrap !important; gap: 8px; align-items: flex-start; }
#survey-img-a, #survey-img-b { flex: 1 1 0 !important; min-width: 0 !important; }
#survey-img-a label[data-testid="block-label"], #survey-img-b label[data-testid="block-label"] { position: static; margin: 0 0 4px 0; }
#survey-img-a .image-container, #survey-img-b .image-container, #survey-img-a .image-frame, #survey-img-b .image-frame,
#survey-img-a button, #survey-img-b button { width: 100%; height: auto; cursor: default; }
#survey-img-a img, #survey-img-b img { display: block; width: 100%; height: auto; margin: 0 auto; object-fit: contain;
  max-height: max(150px, calc(100svh - 560px)); }
@media (min-width: 900px), (orientation: landscape) and (min-width: 640px) {
  .survey-layout { flex-wrap: nowrap; }
  .survey-layout > .survey-pictures-col { flex: 2 1 0 !important; }
  .survey-layout > .survey-questions { flex: 1 1 0 !important; }
  #survey-img-a img, #survey-img-b img { max-height: max(200px, calc(100svh - 300px)); }
}
@media (hover: none) { .survey-keys { display: none; } }
"""

HEAD = """
<style>""" + CSS + """</style>
<script>
(() => {
  if (window.__dreamshotSurveyKeys) return;
  window.__dreamshotSurveyKeys = true;
  // A / B / N answer the first open question of the pair on screen; one question at a time.
  let waiting = null;
  const btn = (q, k) => {
    const el = document.getElementById(`survey-${q}-${k}`);
    const b = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    return b && !b.disabled && b.offsetParent !== null ? b : null;
  };
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)))) return;
    const key = (ev.key || "").toUpperCase();
    if (!["A", "B", "N"].includes(key)) return;
    for (const q of ["like", "shot", "prompt"]) {
      if (waiting && waiting.q === q && Date.now() - waiting.t < 4000 && btn(q, "A")) return;
      const b = btn(q, key);
      if (b) { ev.preventDefault(); waiting = {q, t: Date.now()}; b.click(); return; }
    }
  });
})();
</script>
"""


class SurveyHandlers:
    """Participant actions. ``join``/``view``/``answer`` are the JSON API; ``ui_*`` return the
    component updates of the page (``len(self.view_outputs)`` values)."""

    def __init__(self, studio):
        self.studio = studio

    @property
    def service(self):
        return service(self.studio)

    # ---- JSON API ---------------------------------------------------------------------------------
    def join(self, survey: str, token: str, request: gr.Request) -> dict:
        """Join an open survey ('' = the only open one); keeps `token` if it is already yours. A
        studio member (the full studio, not a survey-only server) joins as a preview: not counted."""
        member = self.studio.access.role(getattr(request, "username", None)) == ADMIN
        return self.service.view(self.service.join(survey, token, request_ip(request), preview=member))

    def view(self, token: str) -> dict:
        """Progress and the current pair (slot, pair_id, shot, prompt, answered) of a participant."""
        return self.service.view(token)

    def answer(self, token: str, slot: int, pair_id: int, question: str, answer: str, request: gr.Request) -> dict:
        """Store one answer: question like|shot|prompt, answer A|B|N. Committed before it returns."""
        return self.service.answer(token, slot, pair_id, question, answer, request_ip(request))

    def images(self, token: str, slot):
        return self.service.images(token, slot)

    # ---- page -------------------------------------------------------------------------------------
    def page(self, view: dict | None, note: str = "", new_images: bool = True, linked: str = "") -> list:
        """Updates for: token, store, intro, start, pair column, header, image A, image B, 9 answer
        buttons, status, thanks, slot, pair id, survey chooser. ``linked``: the survey a
        ``?survey=NAME`` link names (chosen, and no chooser, when it is open)."""
        if view is None:
            names = self.service.open_names()
            chosen = linked if linked in names else (names[0] if len(names) == 1 else "")
            intro = ("*No survey is open right now. Please come back later.*" if not names else
                     self.service.info(chosen).intro if chosen else "Choose a survey, then start.")
            chooser = gr.Dropdown(choices=names, value=chosen or (names[0] if names else None),
                                  visible=len(names) > 1 and not chosen)
            return [gr.skip(), gr.skip(), gr.Markdown(intro, visible=True), gr.Button(visible=bool(names)),
                    gr.Column(visible=False), "", gr.skip(), gr.skip(), *[gr.skip()] * 9, note, gr.Markdown(visible=False),
                    None, None, chooser]
        finished = view["finished"]
        closed = view.get("state") != "open" and not finished
        if closed:
            saved = f" The {view['done']} pair(s) you answered are saved." if view["done"] else ""
            end = f"## This survey is closed\nIt no longer takes answers.{saved} Thank you!"
            return [view["token"], view["token"], gr.Markdown(visible=False), gr.Button(visible=False),
                    gr.Column(visible=False), "", gr.skip(), gr.skip(), *[gr.skip()] * 9, note,
                    gr.Markdown(end, visible=True), None, None, gr.Dropdown(visible=False)]
        buttons = []
        for q in QUESTIONS:
            chosen = (view.get("answered") or {}).get(q)
            for k in KEYS:
                buttons.append(gr.Button(interactive=chosen is None and not finished,
                                         variant="primary" if chosen == k else "secondary"))
        images = [gr.skip(), gr.skip()]
        if not finished and new_images:
            images = list(self.service.images(view["token"], view["slot"]))
        header = "" if finished else (
            f"**Pair {view['slot'] + 1} of {view['total']}**  ·  shot type: **{view['shot_phrase']}**\n\n"
            f"Prompt: *{view['prompt']}*") + (PREVIEW_NOTE if view.get("preview") else "")
        thanks = gr.Markdown("## Thank you!\nAll your answers are saved. You can close this page.", visible=finished)
        return [view["token"], view["token"], gr.Markdown(visible=False), gr.Button(visible=False),
                gr.Column(visible=not finished), header, *images, *buttons,
                note or f"{view['done']} of {view['total']} pairs answered", thanks,
                view.get("slot"), view.get("pair_id"), gr.Dropdown(visible=False)]

    def ui_load(self, stored: str, request: gr.Request) -> list:
        """Page load: resume the stored token's survey (unless ?survey=NAME asks for another)."""
        survey = (getattr(request, "query_params", None) or {}).get("survey", "")
        if stored:
            try:
                view = self.service.view(stored)
                if not survey or view["survey"] == survey:
                    return self.page(view)
            except Exception:  # a token from another studio or a deleted survey: start afresh
                pass
        return self.page(None, linked=survey)

    def ui_start(self, survey: str, stored: str, request: gr.Request) -> list:
        survey = survey or (getattr(request, "query_params", None) or {}).get("survey", "")
        try:
            return self.page(self.join(survey, stored, request))
        except DreamShotError as exc:       # closed, rate-limited ...: said on the page, which stays whole
            return self.page(None, self.refusal(exc), linked=survey)

    @staticmethod
    def refusal(exc: DreamShotError) -> str:
        message = redact(str(exc))
        log.info("survey page refused: %s: %s", type(exc).__name__, message)
        gr.Warning(message)
        return f"**Not saved:** {message}"

    def ui_answer(self, question: str, key: str, token: str, slot, pair_id, request: gr.Request) -> list:
        if slot is None or pair_id is None:
            return self.page(None)
        try:
            ack = self.answer(token, int(slot), int(pair_id), question, key, request)
        except DreamShotError as exc:
            # The message beside the page as the server sees it now: a page left behind by another
            # window moves on to the pair that is really next, a closed survey says so.
            note = self.refusal(exc)
            try:
                view = self.service.view(token)
            except DreamShotError:
                return self.page(None, note)
            return self.page(view, note, new_images=view.get("slot") != int(slot))
        note = ""
        if ack["slot_done"] and not ack["duplicate"]:
            sides = ack.get("sides") or {}
            other = "B" if ack["lora_side"] == "A" else "A"
            revealed = (f"**{ack['lora_side']}** was the fine-tuned model" if sides.get("lora") in (None, "fine-tuned")
                        else f"**{ack['lora_side']}** was {sides['lora']} and **{other}** {sides['base']}")
            note = f"Saved. In that pair, {revealed}. {ack['done']} of {ack['total']} pairs answered."
        view = self.service.view(token)
        return self.page(view, note, new_images=view.get("slot") != int(slot))


def build(studio, demo: gr.Blocks) -> None:
    h = SurveyHandlers(studio)
    store = gr.BrowserState("", storage_key="dreamshot-survey-token")
    with gr.Column(elem_id="survey-participant"):
        intro = gr.Markdown(elem_id="survey-intro")
        survey_box = gr.Dropdown([], label="Survey", visible=False, elem_id="survey-name")
        start = gr.Button("Start the survey", variant="primary", visible=False, elem_id="survey-start")
        with gr.Column(visible=False, elem_id="survey-pair") as pair_col:
            header = gr.Markdown(elem_id="survey-header")
            with gr.Row(elem_classes=["survey-layout"]):          # sizes: CSS above
                with gr.Column(min_width=0, elem_classes=["survey-pictures-col"]):
                    with gr.Row(elem_classes=["survey-pictures"]):
                        img_a = gr.Image(label="A", type="pil", interactive=False, min_width=0, elem_id="survey-img-a",
                                         buttons=[], format="png")
                        img_b = gr.Image(label="B", type="pil", interactive=False, min_width=0, elem_id="survey-img-b",
                                         buttons=[], format="png")
                with gr.Column(min_width=0, elem_classes=["survey-questions"]):
                    buttons = []
                    for q, text in QUESTIONS.items():
                        gr.Markdown(f"**{text}**", elem_classes=["survey-question"])
                        with gr.Row():
                            for k in KEYS:
                                buttons.append((q, k, gr.Button(LABELS[k], size="sm", min_width=60,
                                                                elem_id=f"survey-{q}-{k}")))
                    gr.Markdown("*Keys: A, B or N answer the next open question.*", elem_classes=["survey-keys"])
        status = gr.Markdown(elem_id="survey-status")
        thanks = gr.Markdown(visible=False, elem_id="survey-thanks")
        token = gr.Textbox(visible=False, elem_id="survey-token")
        slot = gr.Number(visible=False, precision=0)
        pair_id = gr.Number(visible=False, precision=0)
    outputs = [token, store, intro, start, pair_col, header, img_a, img_b, *[b for _, _, b in buttons],
               status, thanks, slot, pair_id, survey_box]
    demo.load(guarded(h.ui_load), inputs=[store], outputs=outputs, api_visibility="private")
    start.click(guarded(h.ui_start), inputs=[survey_box, store], outputs=outputs, api_visibility="private",
                concurrency_id="survey", concurrency_limit=8)
    for q, k, button in buttons:
        def on_click(token_value, slot_value, pair_value, request: gr.Request, q=q, k=k):
            return h.ui_answer(q, k, token_value, slot_value, pair_value, request)

        button.click(guarded(on_click), inputs=[token, slot, pair_id], outputs=outputs, api_visibility="private",
                     concurrency_id="survey", concurrency_limit=8)
    api = dict(concurrency_id="survey", concurrency_limit=8)
    # Small JSON calls skip the queue (no SSE round trips); SQLite serialises the writes anyway.
    gr.api(guarded(h.join), api_name="survey_join", queue=False)
    gr.api(guarded(h.view), api_name="survey_view", queue=False)
    gr.api(guarded(h.answer), api_name="survey_answer", queue=False)
    images_btn = gr.Button(visible=False)
    images_btn.click(guarded(h.images), inputs=[token, slot], outputs=[img_a, img_b], api_name="survey_images",
                     **api)
    if not studio.settings.survey_only:
        from dreamshot.survey.tab_admin import build_admin

        build_admin(studio, demo)
