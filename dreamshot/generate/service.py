"""Shot-type generation: the shared base pipeline, shot LoRAs as merged adapters, batches, progress
and cancel. Used by the Generate tab, the CLI (``python -m dreamshot generate``) and every feature
that needs images (survey, evaluation, video) through ``service(studio)``.

API (``svc = service(studio)``; requests are ``GenerationRequest``, see ``request.py``)::

    svc.generate(req, job=None, *, save=True, batch_size=None) -> GenerationResult
        req.num_images images (seeds seed, seed+1, ...) in one denoising batch. Raises Cancelled
        when stopped before any image was finished.
    svc.generate_many(requests, job=None, *, batch_size=None, save=True) -> list[GenerationResult]
        One result per request, in order. Requests sharing size/steps/sampler/CFG/LoRA mix run
        together in batches (different prompts and seeds in one batch); other requests form
        further groups. batch_size None = automatic (GPU: from free memory; CPU: 4), capped at 16.
        A cancelled call returns what was finished (results without images have cancelled=True).
    svc.compare_with_base(req, job=None, *, save=True) -> (base, lora)
    svc.compare_many(requests, job=None, *, batch_size=None, save=True) -> list[(base, lora)]
        The LoRA image and the base-model image of the same seed and the same final prompt.
    svc.compile(example=None) -> float
        Opt-in for long batch jobs: channels-last + torch.compile of the UNet; returns the seconds
        of the warm-up generation (compilation included) at the example's settings.
    with svc.job(owner, progress=fn) as job: ...   # progress(fraction, text); svc.cancel(owner)

Each image matches the one-by-one image of its seed up to floating-point noise and is bit-identical
when the same batch runs again (``batch.py``). ``save=True`` writes PNGs (A1111 ``parameters`` text
inside) under outputs/ in a background thread, off the denoising path: a call returns when its
images are decoded, and ``image.path`` waits for that image's file. ``image.png()`` gives the same
PNG bytes (encoded once) for a download.

How a call runs: every request is checked (``check_inputs``) and planned once - its LoRA mix resolved
from the library and its prompt built by the project's template (``studio.project``: the same prompt
the LoRA was trained on) - with the library, taxonomy and template read once per call. Then, under
the service lock, per group: the mix is merged into the weights (``adapters.AdapterBank``: an α or
shot change costs about a millisecond, a LoRA at fixed α runs at the base model's speed, α = 0 is
bit-identical to the base model) and the batches run on a cached scheduler per sampler.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.generate import batch as batching
from dreamshot.generate import embeddings as ti
from dreamshot.generate.adapters import AdapterSet
from dreamshot.generate.loras import LoraInfo, LoraLibrary, a1111_lora_hash, file_sha256
from dreamshot.generate.params import parameters_text, request_from_parameters
from dreamshot.generate.request import (  # noqa: F401 (re-exported: the service's public names)
    ALPHA_RANGE, MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, GenerationRequest, base_request,
    check_inputs, parse_blend, random_seed, with_seed,
)
from dreamshot.generate.results import Cancelled, GeneratedImage, GenerationResult, Job, Jobs  # noqa: F401
from dreamshot.generate.samplers import (  # noqa: F401
    DEFAULT_SAMPLER, SAMPLERS, SchedulerCache, make_scheduler, sampler_name, steps_shown,
)
from dreamshot.shots import training_prompt

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a call reads once: the LoRA library and the project's taxonomy and template."""
    loras: list
    taxonomy: object
    template: str
    embeddings: list = ()


class GenerationService:
    def __init__(self, studio):
        self.studio = studio
        self.library = LoraLibrary(studio)
        self.lock = threading.RLock()        # held around adapter/scheduler changes and pipeline runs
        self.jobs = Jobs()
        self.compiled = False
        self._adapters: AdapterSet | None = None
        self._embeddings: ti.EmbeddingSet | None = None
        self._schedulers: SchedulerCache | None = None
        self._model_hash: str | None = None
        self._lora_hashes: dict = {}         # (path, mtime, size) -> A1111 short hash
        self._saver: ThreadPoolExecutor | None = None
        self._writing: set = set()           # PNG writes not finished yet (see save_later)

    def close(self) -> None:
        if self._saver is not None:
            self._saver.shutdown(wait=True)
            self._saver = None

    # -- model and library --------------------------------------------------------------------
    @property
    def pipe(self):
        return self.studio.models.pipeline()

    @property
    def adapters(self) -> AdapterSet:
        if self._adapters is None:
            self._adapters = AdapterSet(self.pipe, self.library)
        return self._adapters

    @property
    def embeddings(self) -> ti.EmbeddingSet:
        """The library's textual-inversion embeddings in the shared pipeline (``embeddings.py``)."""
        if self._embeddings is None:
            self._embeddings = ti.EmbeddingSet(self.pipe, self.library)
        return self._embeddings

    def embeddings_list(self) -> list[LoraInfo]:
        """The library's textual-inversion embeddings, read now."""
        return self.library.list(kind="embedding")

    def shapes(self):
        return self.adapters.shapes()

    @property
    def model_name(self) -> str:
        status = self.studio.models.status
        return "dreamshot-demo" if status.is_demo else Path(status.source.rstrip("/")).name

    def model_hash(self) -> str:
        """A1111-style short model hash: the first 10 hex digits of the UNet weights' sha256."""
        if self._model_hash is None:
            self._model_hash = _unet_hash(self.studio.models.status.source) or ""
        return self._model_hash

    def taxonomy(self):
        return self.studio.project.taxonomy()

    def loras(self) -> list[LoraInfo]:
        """The library's LoRAs, read now (a LoRA trained a moment ago is in it)."""
        return self.library.list(kind="lora")

    def context(self) -> Context:
        project = self.studio.project
        entries = self.library.list()            # read once: LoRAs and embeddings
        return Context([e for e in entries if e.kind == "lora"], project.taxonomy(), project.template(),
                       [e for e in entries if e.kind == "embedding"])

    def resolve_lora(self, key: str, loras: list[LoraInfo] | None = None) -> LoraInfo:
        """A LoRA by name, else the newest LoRA for that shot type; InvalidInput otherwise."""
        loras = self.loras() if loras is None else loras
        for info in loras:
            if info.name == key:
                return info
        of_shot = [info for info in loras if info.shot == key]
        if of_shot:
            return of_shot[-1]
        if key in self.taxonomy().names:
            raise InvalidInput(f"No LoRA for the shot type {key!r} yet: train one in the Train tab "
                               "(or upload one), then generate again.")
        available = sorted({i.name for i in loras} | {i.shot for i in loras if i.shot})
        raise InvalidInput(f"Unknown shot type or LoRA {key!r}. Available: "
                           + (", ".join(available) if available else "none yet (base model only)") + ".")

    def shot_phrase(self, info: LoraInfo | None, taxonomy=None) -> str | None:
        """The words for ``{shot}`` in the template (``close shot``) of a LoRA's shot type."""
        if info is None or not info.shot:
            return None
        return self.studio.project.shot_phrase(info.shot, taxonomy)

    def plan(self, req: GenerationRequest, context: Context | None = None) -> tuple[str, list]:
        """(prompt the model sees, [(LoraInfo, weight)]) for a checked request."""
        ctx = context or self.context()
        if req.blend:
            mix = [(self.resolve_lora(name, ctx.loras), w) for name, w in req.blend.items()]
            lead = self.resolve_lora(req.shot, ctx.loras) if req.shot else max(mix, key=lambda m: m[1])[0]
        elif req.shot:
            lead = self.resolve_lora(req.shot, ctx.loras)
            mix = [(lead, req.alpha)]
        else:
            lead, mix = None, []
        phrase = self.shot_phrase(lead, ctx.taxonomy)
        if req.embedding:  # its token stands where the shot words stand (as in its training prompts)
            phrase = ti.resolve(req.embedding, ctx.embeddings).token
        if req.use_template and phrase:
            return training_prompt(phrase, req.prompt, ctx.template), mix
        return req.prompt, mix

    def base_prompt(self, req: GenerationRequest, context: Context | None = None) -> str:
        """The prompt of a request's base-model image: its final prompt, with the shot words of its
        LoRA, else of its embedding's shot type, where an embedding's token stands (the base model
        knows no token); the caption alone when neither names a shot type."""
        ctx = context or self.context()
        if not req.embedding:
            return self.plan(req, ctx)[0]
        info = ti.resolve(req.embedding, ctx.embeddings)
        phrase = self.shot_phrase(info, ctx.taxonomy)
        if not req.use_template:   # the token typed in the prompt: the shot words in its place
            return ti.untokened(req.prompt, info.token, phrase or "")
        with_lora = self.plan(req.replace(embedding=None), ctx)[0]
        if with_lora != req.prompt or not phrase:   # the LoRA's shot words (or no shot words at all)
            return with_lora
        return training_prompt(phrase, req.prompt, ctx.template)

    def upload_lora(self, path: Path, *, name: str, shot: str | None = None, token: str | None = None) -> LoraInfo:
        """Validate, store and register an uploaded LoRA or textual-inversion embedding (told apart
        by the file's content; ``token``: an embedding's prompt token), then prove diffusers can load
        it; a refused file leaves nothing behind and the service keeps working."""
        if shot:
            self.taxonomy().get(shot)
        if any(i.name == (name or "").strip() for i in self.library.list()):
            raise InvalidInput(f"A LoRA or embedding called {name.strip()!r} is already in the library; "
                               "choose another name.")
        source = self.studio.models.status.source
        with self.lock:
            if ti.is_embedding_file(path):
                return self.embeddings.upload(Path(path), name=name, shot=shot, token=token, base_model=source)
            if token:
                raise InvalidInput(f"{Path(path).name} is a LoRA, not an embedding: a token is only for embeddings.")
            return self.adapters.upload(Path(path), name=name, shot=shot, base_model=source)

    def configure(self, mix: list) -> float:
        """Load (once) and merge [(LoraInfo, weight)]; returns the seconds it took (benchmarks).
        Callers hold ``self.lock``."""
        return self.adapters.configure(mix)

    # -- jobs -----------------------------------------------------------------------------------
    def job(self, owner: str = "local", progress=None):
        """``with svc.job(owner, progress=fn) as job``: a job ``cancel(owner)`` can stop."""
        return self.jobs.job(owner, progress)

    def cancel(self, owner: str) -> int:
        return self.jobs.cancel(owner)

    def busy(self) -> bool:
        """Whether a generation holds the model now (an RLock has no ``locked()`` before Python 3.13)."""
        if self.lock.acquire(blocking=False):
            self.lock.release()
            return False
        return True

    @contextmanager
    def _locked(self, job: Job, fraction: float):
        if not self.lock.acquire(blocking=False):
            job.report(fraction, "waiting for another generation to finish…")
            self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    # -- generation -----------------------------------------------------------------------------
    def generate(self, req: GenerationRequest, job: Job | None = None, *, save: bool = True,
                 progress_span: tuple = (0.0, 1.0), batch_size: int | None = None) -> GenerationResult:
        """Run one request (its images in one batch); Cancelled if stopped before the first image."""
        [result] = self.generate_many([req], job, batch_size=batch_size, save=save, progress_span=progress_span)
        if not result.images:
            raise Cancelled("Stopped before the first image was finished.")
        return result

    def generate_many(self, requests: list, job: Job | None = None, *, batch_size: int | None = None,
                      save: bool = True, progress_span: tuple = (0.0, 1.0)) -> list[GenerationResult]:
        """One result per request, in order; see the module docstring."""
        checked = [with_seed(check_inputs(r)) for r in requests]
        if batch_size is not None and not 1 <= int(batch_size) <= batching.MAX_BATCH:
            raise InvalidInput(f"Batch size must be between 1 and {batching.MAX_BATCH} (got {batch_size}).")
        ctx = self.context()
        plans = [self.plan(r, ctx) for r in checked]
        results = [GenerationResult(r, prompt, mix) for r, (prompt, mix) in zip(checked, plans)]
        if not results:
            return results
        job = job or Job()
        run = batching.BatchRun(self, job, results, ctx.template, progress_span, save)
        embedded = [ti.resolve(r.embedding, ctx.embeddings) if r.embedding else None for r in checked]
        with self._locked(job, progress_span[0]):
            if job.cancelled:
                raise Cancelled("Stopped.")
            for needed, group in ti.schedule(batching.groups(checked, plans), embedded):
                self.embeddings.activate(needed)
                if not run.group(group, batch_size):
                    break
        run.finish()
        return results

    # -- compare --------------------------------------------------------------------------------
    def compare_with_base(self, req: GenerationRequest, job: Job | None = None, *, save: bool = True):
        """(base result, LoRA result) from the same seed and the same final prompt."""
        [(base, lora)] = self.compare_many([req], job, save=save)
        if not base.images or not lora.images:
            raise Cancelled("Stopped before the comparison was finished.")
        return base, lora

    def compare_many(self, requests: list, job: Job | None = None, *, batch_size: int | None = None,
                     save: bool = True) -> list[tuple]:
        """[(base result, LoRA result)] per request: the LoRA images and the base model's images of
        the same seeds and the same final prompts, each side batched."""
        checked = [with_seed(check_inputs(r)) for r in requests]
        if any(not r.shot and not r.blend and not r.embedding for r in checked):
            raise InvalidInput("Choose a shot LoRA or an embedding to compare with the base model.")
        ctx = self.context()
        bases = [base_request(r, self.base_prompt(r, ctx)) for r in checked]
        out = self.generate_many([*checked, *bases], job, batch_size=batch_size, save=save)
        return list(zip(out[len(checked):], out[:len(checked)]))

    # -- compiled mode ------------------------------------------------------------------------------
    def compile(self, example: GenerationRequest | None = None, *, backend: str = "inductor",
                mode: str | None = None) -> float:
        """Opt-in compiled mode for long batch jobs: the UNet in channels-last memory layout and
        ``torch.compile``d in place (names and LoRA merging unchanged). Compilation happens on the
        first call at each batch shape; with ``example`` that call is made here. Returns its
        seconds (the compile time, reported in the log)."""
        import torch

        with self.lock:
            if not self.compiled:
                unet = self.pipe.unet
                unet.to(memory_format=torch.channels_last)
                unet.compile(backend=backend, mode=mode)
                self.compiled = True
        t0 = time.perf_counter()
        if example is not None:
            self.generate_many([example], save=False)
        seconds = time.perf_counter() - t0
        log.info("compiled mode on; warm-up generation (compiling included) took %.1f s", seconds)
        return seconds

    # -- pieces a call uses -----------------------------------------------------------------------
    def batch_size_for(self, req: GenerationRequest) -> int:
        return batching.auto_batch_size(self.pipe, req.width, req.height)

    def scheduler(self, sampler: str, seeds: list):
        if self._schedulers is None:
            self._schedulers = SchedulerCache(dict(self.pipe.scheduler.config))
        return self._schedulers.get(sampler, seeds)

    def parameters_text(self, req: GenerationRequest, prompt: str, mix: list, seed: int,
                        template: str | None = None) -> str:
        """The A1111 ``parameters`` text of one image."""
        return parameters_text(req, prompt, mix, seed, model_name=self.model_name, model_hash=self.model_hash(),
                               lora_hashes={info.name: self.lora_hash(info) for info, _ in mix},
                               template=template if template is not None else self.studio.project.template(),
                               embedding=self.embeddings.active.get(req.embedding) if req.embedding else None)

    def lora_hash(self, info: LoraInfo, path: Path | None = None) -> str:
        """A1111's short hash of the file AUTOMATIC1111 loads for a LoRA (``info.a1111_file``: a
        trained LoRA's kohya export), or of ``path``; cached by the file's path, size and mtime."""
        path = Path(path or info.a1111_file)
        try:
            stat = os.stat(path)
        except OSError:
            return info.short_hash
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._lora_hashes:
            try:
                self._lora_hashes[key] = a1111_lora_hash(path)
            except OSError:
                return info.short_hash
        return self._lora_hashes[key]

    def lora_hashes(self, info: LoraInfo) -> set:
        """Every short hash an image may name a LoRA by: its A1111 file's (written now), the library
        file's (written before issue 22) and the library file's plain sha256 prefix."""
        return {self.lora_hash(info), self.lora_hash(info, info.path), info.short_hash}

    def output_path(self, seed: int, index: int = 0) -> Path:
        now = datetime.now(timezone.utc)
        folder = Path(self.studio.settings.outputs_dir) / now.strftime("%Y-%m-%d")
        tail = f"-{index}" if index else ""
        return folder / f"{now.strftime('%H%M%S-%f')}-{seed}{tail}.png"

    def save_later(self, fn, *args):
        """``fn(*args)`` on the PNG writer threads (off the denoising path); its Future."""
        if self._saver is None:
            self._saver = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dreamshot-png")
        future = self._saver.submit(fn, *args)
        self._writing.add(future)
        future.add_done_callback(self._writing.discard)
        return future

    def wait_for_saves(self) -> None:
        """Until every PNG (and control image) handed to the writers so far is on disk."""
        wait(list(self._writing))

    def request_from_parameters(self, text: str, beside=None) -> tuple[GenerationRequest, list[str]]:
        """A request restoring an image's settings from A1111 text, and notes on what could not be
        restored (unknown LoRA, sampler ...). Raises InvalidInput when the text holds no settings.
        A ControlNet's saved control image is looked up under outputs/ (and in folder ``beside``)."""
        from dreamshot.generate import control, pngmeta

        self.wait_for_saves()   # a control image written in the background may be the one asked for
        req, notes = request_from_parameters(text, self.loras(), self.taxonomy(), self.embeddings_list(),
                                             lora_hashes=self.lora_hashes)
        restored, more = control.restore(pngmeta.parse_parameters(text).settings,
                                         [beside, self.studio.settings.outputs_dir])
        return req.replace(control=restored), notes + more


def _unet_hash(source: str) -> str | None:
    """sha256[:10] of the UNet weights file of a local folder or a cached Hub snapshot."""
    from dreamshot.models import local_or_cached

    found = local_or_cached(source, "model_index.json")
    if found is None:
        return None
    folder = Path(found)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        path = folder / "unet" / name
        if path.is_file():
            return file_sha256(path)[:10]
    return None


def service(studio) -> GenerationService:
    """The one GenerationService of a studio (it owns the shared pipeline's adapters)."""
    return studio.service(GenerationService)
