"""What the Generate tab does, without gradio: ``GenerateForm`` (the form's values, in the /generate
API's order) and ``GenerateHandlers`` (one typed method per action). ``tab.py`` lays out the
components and wires them to these methods; tests call the methods directly.

Images reach the browser as PNG files in a temp folder outside the data folder (``TempImages``), so
their A1111 settings survive the download.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.generate import control as controlnet
from dreamshot.generate import pngmeta
from dreamshot.generate.control_models import controls
from dreamshot.generate.request import ControlRequest, GenerationRequest, cut_off, parse_blend
from dreamshot.generate.samplers import DEFAULT_SAMPLER
from dreamshot.generate.service import GenerationResult, service
from dreamshot.generate.storyboard import alpha_sweep, save_storyboard, storyboard, uploaded_sketches

NONE = "none"
KEEP_TEMP_S = 3600


def _given(value, default):
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


@dataclass
class GenerateForm:
    """The form, field for field in the order of the /generate API (README)."""
    prompt: str = ""
    shot: str | None = NONE
    alpha: float = 1.0
    use_template: bool = True
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: float = 16
    cfg: float = 6.0
    width: float = 512
    height: float = 512
    seed: object = -1          # a number or its text; checked with the request
    num_images: float = 1
    blend: str = ""
    embedding: str | None = NONE   # a library embedding's name (its token stands where the shot words stand)
    control: str = NONE            # ControlNet: none | canny | depth | scribble
    control_image: object = None   # reference frame (canny, depth) or sketch file (scribble): a file path
    control_sketch: object = None  # a sketch drawn in the page (image editor value); scribble prefers it
    control_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    canny_low: float = 100
    canny_high: float = 200
    control_map: bool = False      # control_image is a ready control map (e.g. a saved *-control.png)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def values(self) -> list:
        return [getattr(self, name) for name in self.fields()]

    def request(self) -> GenerationRequest:
        """The request (checked later by the service: ranges, NaN, text in number fields)."""
        shot = None if self.shot in (None, "", NONE) else self.shot
        return GenerationRequest(
            prompt=self.prompt or "", shot=shot, alpha=_given(self.alpha, 1.0), use_template=bool(self.use_template),
            negative_prompt=self.negative_prompt or "", sampler=self.sampler or DEFAULT_SAMPLER,
            steps=_given(self.steps, 16), cfg=_given(self.cfg, 6.0), width=_given(self.width, 512),
            height=_given(self.height, 512), seed=_given(self.seed, -1), num_images=_given(self.num_images, 1),
            blend=parse_blend(self.blend or ""),
            embedding=None if self.embedding in (None, "", NONE) else self.embedding,
            control=controlnet.form_control(self.control, self.control_image, self.control_sketch, self.control_scale,
                                            self.control_start, self.control_end, self.canny_low, self.canny_high,
                                            self.control_map))

    @classmethod
    def of_request(cls, req: GenerationRequest) -> "GenerateForm":
        blend = ", ".join(f"{k}={pngmeta.format_number(v)}" for k, v in (req.blend or {}).items())
        return cls(req.prompt, req.shot or NONE, req.alpha, req.use_template, req.negative_prompt, req.sampler,
                   req.steps, req.cfg, req.width, req.height, str(req.seed), req.num_images, blend,
                   embedding=req.embedding or NONE, **_control_fields(req.control))


def _control_fields(c: ControlRequest | None) -> dict:
    if c is None:
        return {}
    return dict(control=c.kind, control_image=c.image if isinstance(c.image, str) else None, control_scale=c.scale,
                control_start=c.start, control_end=c.end, canny_low=c.low, canny_high=c.high,
                control_map=c.preprocessed)


@dataclass
class Shown:
    """What a generation puts on the page."""
    gallery: list        # [(png path, caption)]
    info: str            # Markdown summary
    seed: int            # the first seed used
    parameters: str      # A1111 text of the first image


class TempImages:
    """PNG files with metadata in a temp folder outside the data folder (the data folder is never
    served); files older than an hour are removed."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="dreamshot-generate-"))

    def write(self, image, stem: str) -> str:
        """``image``: a GeneratedImage (its PNG bytes, encoded once) or (PIL image, parameters)."""
        path = self.folder() / f"{stem}.png"
        if hasattr(image, "png"):
            path.write_bytes(image.png())
        else:
            pngmeta.save_png(image[0], path, image[1])
        return str(path)

    def folder(self) -> Path:
        self._prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_TEMP_S
        for path in self.root.glob("*/*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


def summary(result: GenerationResult, extra: str = "", cut: str = "") -> str:
    loras = ", ".join(f"{info.name} α={pngmeta.format_number(w)}" for info, w in result.loras)
    if result.request.embedding:
        loras = f"{loras} + " * bool(loras) + f"embedding {result.request.embedding}"
    loras = loras or "base model"
    if result.request.control is not None:
        c = result.request.control
        loras += f" · {c.kind} ControlNet ×{pngmeta.format_number(c.scale)}"
    stopped = " **Stopped early.**" if result.cancelled else ""
    warning = (f"\n\n**Too long:** the text encoder reads 75 tokens of a prompt; it never saw `{cut}`. "
               "Shorten the prompt." if cut else "")
    return (f"Seeds {', '.join(map(str, result.seeds))} · {loras} · {result.seconds:.1f} s{stopped}{extra}\n\n"
            f"Prompt: `{result.prompt}`{warning}")


class GenerateHandlers:
    """The Generate tab's actions. ``owner`` names the caller's jobs (Stop stops only its own);
    ``progress(fraction, text)`` reports progress."""

    def __init__(self, studio, temp: TempImages | None = None):
        self.studio = studio
        self.svc = service(studio)
        self.temp = temp or TempImages()

    # -- choices --------------------------------------------------------------------------------
    def lora_choices(self) -> list[tuple[str, str]]:
        """(label, value) of the Shot LoRA menu: 'none' first, then every LoRA of the library."""
        choices = [("none (base model)", NONE)]
        taxonomy = self.svc.taxonomy()
        for info in self.svc.loras():
            phrase = self.svc.shot_phrase(info, taxonomy)
            label = f"{info.name} · {phrase}" if phrase and phrase != info.name else info.name
            choices.append((f"{label} ({info.origin})", info.name))
        return choices

    def shot_types(self) -> list[str]:
        return [NONE, *self.svc.taxonomy().names]

    def embedding_choices(self) -> list[tuple[str, str]]:
        """(label, value) of the Embedding menu: 'none' first, then every embedding of the library."""
        return [("none", NONE), *((f"{i.name} · {i.token}", i.name) for i in self.svc.embeddings_list())]

    LIBRARY_COLUMNS = ("name", "kind", "method", "shot", "token", "origin", "hash")

    def library_rows(self) -> list[list]:
        """The library table: every LoRA and embedding, oldest first."""
        return [[i.name, i.kind, i.method, i.shot or "", i.token or "", i.origin, i.short_hash]
                for i in self.svc.library.list()]

    # -- generation -----------------------------------------------------------------------------
    def generate(self, form: GenerateForm, owner: str = "api", progress=None) -> Shown:
        with self.svc.job(owner, progress=progress) as job:
            result = self.svc.generate(form.request(), job)
        gallery = [(self.temp.write(img, str(img.seed)), f"seed {img.seed}") for img in result.images]
        if result.control_image is not None:
            gallery.append((self._control_file(result.control_image), f"{result.request.control.kind} control image"))
        return Shown(gallery, summary(result, cut=self._cut(result)), result.request.seed, result.images[0].parameters)

    def _cut(self, result: GenerationResult) -> str:
        return cut_off(self.svc.pipe.tokenizer, result.prompt)

    def _control_file(self, image) -> str:
        path = self.temp.folder() / "control.png"
        image.save(path, format="PNG")
        return str(path)

    def control_preview(self, form: GenerateForm, owner: str = "api", progress=None) -> str | None:
        """The control image the form's ControlNet would get (PNG path); None without a ControlNet."""
        from dreamshot.generate.request import check_inputs

        req = check_inputs(form.request().replace(prompt=form.prompt or "-"))
        if req.control is None:
            return None
        return self._control_file(controls(self.studio).prepare(req.control, req.width, req.height))

    @staticmethod
    def reference_problem(path) -> str | None:
        """What is wrong with an uploaded reference file (not an image, an image bomb, too large), or
        None: checked when it is uploaded, so the page can say so and drop it."""
        if path in (None, ""):
            return None
        try:
            controlnet.load_image(path, "reference image")
        except InvalidInput as exc:
            return str(exc)
        return None

    def compare(self, form: GenerateForm, owner: str = "api", progress=None) -> Shown:
        with self.svc.job(owner, progress=progress) as job:
            base, lora = self.svc.compare_with_base(form.request(), job)
        label = ", ".join([*(f"{i.name} α={pngmeta.format_number(w)}" for i, w in lora.loras),
                           *([lora.request.embedding] if lora.request.embedding else [])])
        gallery = []
        for b, l in zip(base.images, lora.images):
            gallery.append((self.temp.write(b, f"base-{b.seed}"), f"base model · seed {b.seed}"))
            gallery.append((self.temp.write(l, f"lora-{l.seed}"), f"{label} · seed {l.seed}"))
        return Shown(gallery, summary(lora, f" · left: base model, right: {label}", self._cut(lora)), lora.request.seed,
                     lora.images[0].parameters)

    def live_alpha(self, form: GenerateForm, live: bool, last_seed, owner: str = "api", progress=None) -> Shown | None:
        """α moved: re-run the last generation with its seed, so only α changes the picture. None
        (nothing to do) when live regeneration is off, nothing was generated yet, or no LoRA is chosen."""
        if not live or last_seed in (None, "") or form.shot in (None, "", NONE) or not (form.prompt or "").strip():
            return None
        return self.generate(dataclasses.replace(form, seed=last_seed), owner, progress)

    def stop(self, owner: str) -> str:
        return "Stopping…" if self.svc.cancel(owner) else "Nothing is running."

    def sweep(self, form: GenerateForm, shots: list, alphas: str, owner: str = "api", progress=None):
        """(grid PNG path, info) of shot types × α for the form's prompt and seed."""
        with self.svc.job(owner, progress=progress) as job:
            result = alpha_sweep(self.svc, form.request(), list(shots or []), alphas, job)
        path = self.temp.write((result.grid, result.parameters), "alpha-sweep")
        return path, f"α sweep: seed {result.cells[0][0].seed}, {len(result.shots)} × {len(result.alphas)} images."

    def storyboard(self, form: GenerateForm, text: str, columns, title: str, sketches=None, owner: str = "api",
                   progress=None):
        """(sheet PNG path, [PNG, PDF], info) of 'shot | description [| sketch file name]' lines;
        ``sketches``: the uploaded sketch files (scribble ControlNet at the form's scale, start, end)."""
        req = form.request().replace(prompt="-", control=None)
        template = ControlRequest("scribble", None, _given(form.control_scale, 1.0), _given(form.control_start, 0.0),
                                  _given(form.control_end, 1.0))
        paths = [getattr(s, "name", s) for s in (sketches or [])]
        with self.svc.job(owner, progress=progress) as job:
            result = storyboard(self.svc, text, req, job, columns=int(columns or 3), title=title or "",
                                sketches=uploaded_sketches(paths), sketch_control=template)
        save_storyboard(result, self.temp.folder())
        return (str(result.png_path), [str(result.png_path), str(result.pdf_path)],
                f"Storyboard: {len(result.panels)} panels, seed {result.panels[0].seed}.")

    # -- settings read back ---------------------------------------------------------------------
    def read_png(self, path) -> tuple[GenerateForm, str]:
        if not path:
            raise InvalidInput("Drop a PNG first.")
        try:
            text = pngmeta.read_parameters(Path(path))
        except (OSError, ValueError, SyntaxError):
            raise InvalidInput("This file is not an image that can be read (PNG, JPEG or WebP).") from None
        if not text:
            raise InvalidInput("This image carries no generation settings (no A1111 'parameters' text).")
        return self.read_text(text)

    def read_text(self, text: str) -> tuple[GenerateForm, str]:
        if not (text or "").strip():
            raise InvalidInput("Paste the settings text first.")
        req, notes = self.svc.request_from_parameters(text)
        if req.control is not None and isinstance(req.control.image, str):   # outputs/ is never served: a copy
            copy = self.temp.folder() / Path(req.control.image).name
            copy.write_bytes(Path(req.control.image).read_bytes())
            req = req.replace(control=dataclasses.replace(req.control, image=str(copy)))
        return GenerateForm.of_request(req), "Settings restored." + "".join(f"\n- {n}" for n in notes)

    # -- LoRA upload (admins: the tab checks the role first) ------------------------------------
    def upload(self, path, name: str, shot_type: str | None, token: str | None = None) -> str:
        if not path:
            raise InvalidInput("Choose a .safetensors file first.")
        shot = None if shot_type in (None, "", NONE) else shot_type
        info = self.svc.upload_lora(Path(path), name=name, shot=shot, token=(token or "").strip() or None)
        if info.kind == "embedding":
            return (f"Added the embedding **{info.name}** (token `{info.token}`, {info.meta.get('vectors')} vectors, "
                    f"shot {info.shot or '-'}, hash {info.short_hash}).")
        return f"Added **{info.name}** ({info.format} format, shot {info.shot or '-'}, hash {info.short_hash})."
