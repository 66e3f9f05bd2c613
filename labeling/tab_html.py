"""The Label tab's page parts: the keyboard script and styles (``HEAD``) and the HTML of the frame
and of the quota bars. Plain strings, no gradio: the handlers in ``labeling.tab`` return them.

Keyboard: one key per class (from the taxonomy), ``Enter`` (or space) accepts the model's
suggestion, ``x`` reject, ``s`` skip, ``u`` undo; the ``HEAD`` script clicks the matching buttons
(ignored while typing in a text field). Frames are shown as small
inline JPEGs rendered ahead of time (``labeling.crop.Previews``), so a keypress costs one DB write
and one small message; the next frame is shown at once and the server's answer confirms it.
"""

from __future__ import annotations

import base64
import html

from labeling import labels
from labeling.annotate import FrameView
from labeling.stats import QUOTA_RULE
from labeling.suggest import orders

HEAD = """
<script>
(() => {
  if (window.__dreamshotLabelKeys) return;
  window.__dreamshotLabelKeys = true;
  // One request at a time; a key pressed meanwhile waits (one is kept), so fast typists lose nothing.
  let pending = null, queued = null, observed = null;
  const frameRoot = () => document.querySelector("#label-frame .lf-root, #label-frame .lf-empty");
  const button = (id) => {
    const el = document.getElementById(id);
    if (!el) return null;
    const btn = el.tagName === "BUTTON" ? el : el.querySelector("button");
    return btn && !btn.disabled && btn.offsetParent !== null ? btn : null;
  };
  const settle = () => { pending = null; if (queued) { const k = queued; queued = null; fire(k); } };
  const watch = () => {
    const box = document.getElementById("label-frame");
    if (!box || observed === box) return;
    observed = box;
    new MutationObserver(() => {
      const root = frameRoot();
      if (pending && (!root || !root.dataset.pending)) { clearTimeout(pending.timer); settle(); }
    }).observe(box, {subtree: true, childList: true});
  };
  const showNext = (root) => {  // display the prefetched next frame now; the server confirms it
    const next = root && root.querySelector("template.lf-next");
    const cur = root && root.querySelector(".lf-cur");
    if (!next || !cur) return null;
    const before = {html: cur.innerHTML, frame: root.dataset.frame, suggest: root.dataset.suggest || ""};
    cur.innerHTML = next.innerHTML;
    root.dataset.frame = next.dataset.frame;
    root.dataset.suggest = next.dataset.suggest || "";
    root.dataset.pending = "1";
    next.remove();
    return before;
  };
  function fire(key) {
    const map = document.getElementById("label-keymap");
    let id = null, advances = true;
    const root = frameRoot();
    if (key === "x") id = "label-reject";
    else if (key === "s") id = "label-skip";
    else if (key === "u") { id = "label-undo"; advances = false; }
    else if (key === "enter" || key === " ") {  // accept the suggestion (the server says if there is none)
      id = "label-accept"; advances = Boolean(root && root.dataset.suggest);
    } else {
      const i = (map.dataset.keys || "").split(",").indexOf(key);
      if (i >= 0) id = "label-slot-" + i;
    }
    const btn = id && button(id);
    if (!btn) return false;
    watch();
    const before = advances ? showNext(root) : null;
    pending = {timer: setTimeout(() => {  // no answer (an error): put the frame back
      if (before && root.isConnected && root.dataset.pending) {
        root.querySelector(".lf-cur").innerHTML = before.html;
        root.dataset.frame = before.frame;
        root.dataset.suggest = before.suggest;
        delete root.dataset.pending;
      }
      settle();
    }, 4000)};
    btn.click();
    return true;
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    const map = document.getElementById("label-keymap");
    if (!map || map.parentElement.offsetParent === null) return;
    const key = (e.key || "").toLowerCase();
    const known = ["x", "s", "u", "enter", " "].includes(key) || (map.dataset.keys || "").split(",").includes(key);
    if (!known) return;
    e.preventDefault();
    if (pending) { queued = key; return; }
    fire(key);
  });
})();
</script>
<style>
#label-frame .lf { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap }
#label-frame .lf-crop { width: 384px; height: 384px; border-radius: 6px }
#label-frame .lf-full { position: relative; display: inline-block; line-height: 0 }
#label-frame .lf-full img { max-width: 384px; max-height: 384px; border-radius: 4px; opacity: .9 }
#label-frame .lf-box { position: absolute; border: 2px solid #ffcc00 }
#label-frame .lf-meta { font-size: .9em; opacity: .8; margin-top: 6px }
#label-frame .lf-wrap-full { overflow: hidden; display: inline-block; border-radius: 4px }
@media (max-width: 600px) {
  #label-frame .lf-crop { width: 100%; height: auto; max-width: 384px }
  #label-frame .lf-full img { max-width: 100% }
}
#label-frame .lf-heldout { background: #6d28d9; color: #fff; border-radius: 6px; padding: 6px 10px;
  margin-bottom: 8px; font-weight: 600 }
#label-frame .lf.heldout .lf-crop { outline: 4px solid #6d28d9; outline-offset: -4px }
#label-frame .lf-sug { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; margin-bottom: 8px;
  padding: 6px 10px; border-radius: 6px; background: rgba(37,99,235,.12); border: 1px solid rgba(37,99,235,.45) }
#label-frame .lf-sug kbd { border: 1px solid currentColor; border-radius: 4px; padding: 0 5px; font-size: .85em }
#label-frame .lf-sug .lf-conf { width: 120px; height: 8px; border-radius: 4px; background: rgba(128,128,128,.25);
  overflow: hidden; display: inline-block }
#label-frame .lf-sug .lf-conf > div { height: 100%; background: #2563eb }
#label-frame .lf-sug.lf-quiet { background: rgba(128,128,128,.1); border-color: rgba(128,128,128,.35); opacity: .85 }
#label-progress .lp-row { margin-bottom: 8px }
#label-progress .lp-n { float: right; opacity: .8 }
#label-progress .lp-bar { height: 8px; border-radius: 4px; background: rgba(128,128,128,.25); overflow: hidden }
#label-progress .lp-bar > div { height: 100%; background: #f97316 }
#label-progress .lp-foot { font-size: .9em; opacity: .8 }
</style>
"""


# ---- rendering ------------------------------------------------------------------------------
def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


HELD_OUT = ("Held-out frame (test split): not counted in quotas; Survey and Evaluate use these labels")


def suggestion_html(suggestion, taxonomy, note: str = "") -> str:
    """The model's suggestion and its confidence (Enter accepts), a held-back one (blind check), or
    the model's state when it has no suggestion yet."""
    if suggestion is None:
        return f'<div class="lf-sug lf-quiet">{html.escape(note)}</div>' if note else ""
    if not suggestion.shown:
        return ('<div class="lf-sug lf-quiet">Blind check: this frame is shown without the model\'s suggestion '
                "(it measures the model honestly). Press a class key.</div>")
    try:
        cls = taxonomy.get(suggestion.shot)
        name, key = cls.label, cls.key
    except Exception:   # a class of another taxonomy (the taxonomy changed since)
        name, key = suggestion.shot, "?"
    pct = 100 * suggestion.confidence
    what = "Pre-label" if suggestion.origin == "pre-label" else "Model suggests"
    return (f'<div class="lf-sug" title="probability {suggestion.confidence:.3f}, margin {suggestion.margin:.3f}; '
            f'model fit on {suggestion.model_labels} labels">{what}: <b>{html.escape(name)}</b> '
            f'<span class="lf-conf"><div style="width:{pct:.0f}%"></div></span> <span>{pct:.0f}% confident</span>'
            f' <span><kbd>Enter</kbd> accepts (same as <kbd>{html.escape(key)}</kbd>)</span></div>')


def _frame_block(frame_id: int, p: dict, meta: str, top: str = "", held_out: bool = False) -> str:
    w, h = p["size"]
    x0, y0, x1, y1 = p["box"]
    box = (f"left:{100 * x0 / w:.2f}%;top:{100 * y0 / h:.2f}%;"
           f"width:{100 * (x1 - x0) / w:.2f}%;height:{100 * (y1 - y0) / h:.2f}%")
    banner = f'<div class="lf-heldout">{HELD_OUT}</div>' if held_out else ""
    return (f'{banner}{top}<div class="lf{" heldout" if held_out else ""}">'
            f'<img class="lf-crop" alt="crop of frame {frame_id}" src="{_data_url(p["crop"])}">'
            f'<div><div class="lf-wrap-full"><div class="lf-full"><img alt="full frame" src="{_data_url(p["full"])}">'
            f'<div class="lf-box" style="{box}"></div></div></div>'
            f'<div class="lf-meta">frame {frame_id} &middot; {w}&times;{h} &middot; {meta}</div></div></div>')


def keymap_html(taxonomy) -> str:
    """The class keys for the HEAD script (which ignores keys while no keymap is on the page)."""
    keys = ",".join(c.key for c in taxonomy.classes)
    return f'<div id="label-keymap" data-keys="{html.escape(keys)}" style="display:none"></div>'


def frame_html(view: FrameView) -> str:
    """The current frame, plus the next one hidden: the HEAD script shows it the moment a key is
    pressed and the server's answer (normally the same frame) replaces it."""
    keymap = keymap_html(view.progress.taxonomy)
    message = f'<p class="lf-msg"><b>{html.escape(view.message)}</b></p>' if view.message else ""
    if view.frame_id is None:
        return f'<div class="lf-empty" data-frame="">{keymap}{message}</div>'
    who = html.escape(view.annotator)
    taxonomy, held_out = view.progress.taxonomy, view.queue.split == "test"
    order = html.escape(orders.describe(view.queue.order, taxonomy).lower())
    current = {"crop": view.crop_jpeg, "full": view.full_jpeg, "box": view.box, "size": view.size}
    nxt = ""
    if view.next_id is not None and view.next_preview:
        block = _frame_block(view.next_id, view.next_preview, f"{max(view.remaining - 1, 0)} left for {who} &middot; {order}",
                             suggestion_html(view.next_suggestion, taxonomy), held_out)
        nxt = (f'<template class="lf-next" data-frame="{view.next_id}" '
               f'data-suggest="{_accepts(view.next_suggestion)}">{block}</template>')
    block = _frame_block(view.frame_id, current, f"{view.remaining} left for {who} &middot; {order}",
                         suggestion_html(view.suggestion, taxonomy, view.suggest_note), held_out)
    return (f'<div class="lf-root" data-frame="{view.frame_id}" data-suggest="{_accepts(view.suggestion)}">'
            f'{keymap}{message}<div class="lf-cur">{block}</div>{nxt}</div>')


def _accepts(suggestion) -> str:
    """The class Enter accepts on a frame ('' when there is none to accept)."""
    return html.escape(suggestion.shot) if suggestion is not None and suggestion.shown else ""


def progress_html(p: labels.Progress, split: str = "train") -> str:
    rows = []
    if split == "test":   # the held-out queue: its own counts first, plainly not quotas
        rows.append('<div class="lp-row"><b>Held-out frames labeled</b> (no quota): ' + " &middot; ".join(
            f"{html.escape(c.label)} {p.held_out.get(c.name, 0)}" for c in p.taxonomy.classes) + "</div>")
    for c in p.taxonomy.classes:
        n, q = p.counts.get(c.name, 0), p.quotas[c.name]
        extra = p.extras.get(c.name, 0)
        pct = 100 if q <= 0 else min(100, 100 * n / q)
        rows.append(
            f'<div class="lp-row"><div><code>{html.escape(c.key)}</code> {html.escape(c.label)} '
            f'<span class="lp-n">{n}/{q}' + (f" +{extra} extra" if extra else "") + ("  &#10003;" if n >= q else "")
            + f'</span></div><div class="lp-bar"><div style="width:{pct:.1f}%"></div></div></div>')
    if p.held_out and split != "test":
        rows.append('<div class="lp-foot">held-out (test, no quota): ' + " &middot; ".join(
            f"{html.escape(c.label)} {p.held_out.get(c.name, 0)}" for c in p.taxonomy.classes) + "</div>")
    rows.append(f'<div class="lp-foot">rejected {p.rejects} &middot; skipped {p.skips} &middot; '
                f"disagreements {p.disagreements}</div>")
    if p.all_met:
        rows.append("<div><b>Every quota is met.</b></div>")
    rows.append(f'<div class="lp-foot" title="{html.escape(QUOTA_RULE.replace(chr(10), " "))}">Settled frames count; extras fill '
                "places that frames leave.</div>")
    return '<div class="lp">' + "".join(rows) + "</div>"


def prompt_html(taxonomy) -> str:
    """Before an annotator starts: the keys still answer, with "type your name first"."""
    return (f'<div class="lf-empty" data-frame="">{keymap_html(taxonomy)}'
            '<p>Type your name and press <b>Start / resume</b>.</p></div>')


def notice_html(message: str, taxonomy) -> str:
    """A refusal with no annotator's frame to show it over (e.g. a key pressed before a name is typed)."""
    return (f'<div class="lf-empty" data-frame="">{keymap_html(taxonomy)}'
            f'<p class="lf-msg"><b>{html.escape(message)}</b></p>'
            '<p>Type your name and press <b>Start / resume</b>.</p></div>')
