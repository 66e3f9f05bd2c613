"""Textual inversion (``--method ti``): one learned token per shot type, e.g. ``close-shot``.

The token (``--num-vectors`` N: ``close-shot``, ``close-shot_1``, ... as diffusers names them) is
added to the tokenizer; its embedding rows start from the ``--init-word`` embeddings (a word of
several tokens, like "close-up", is cycled over the vectors, as AUTOMATIC1111 does). The training
prompts are the project's template with the token where the shot words stand. Only the new rows
learn: the whole embedding matrix is the optimizer's tensor (as in diffusers' script), and after each
update every other row is put back to its original value (weight decay included). The text encoder
runs in the loop (no text-embedding cache); the UNet and VAE stay frozen; latents are cached as usual.

The result is ``<token>.safetensors`` (``close-shot.safetensors``; ``<run name>.safetensors`` when the
token cannot be a file name) in AUTOMATIC1111's format: ``{"emb_params": tensor[N, dim]}`` with string
metadata (``token`` among them). AUTOMATIC1111 names an embedding after its file and never reads the
stored token, ComfyUI takes ``embedding:close-shot``, and diffusers reads it with
``pipe.load_textual_inversion(file, token="close-shot")``: the file name is the token everywhere.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.shots import training_prompt
from training import components
from training import data as tdata
from training.checkpoints import Weights
from training.extract import save_atomic
from training.trainer import Trainer

TI_STATE = "embedding_state.safetensors"


def token_names(token: str, num_vectors: int) -> list[str]:
    """``close-shot``, ``close-shot_1``, ...: diffusers' names for a multi-vector token."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand(prompt: str, token: str, num_vectors: int) -> str:
    """The prompt with the token spelled out as its N vectors (what diffusers' pipeline does)."""
    return prompt.replace(token, " ".join(token_names(token, num_vectors)))


def add_token(tokenizer, text_encoder, token: str, num_vectors: int, init_word: str) -> list[int]:
    """Add the token's vectors to the tokenizer and embedding matrix, initialised from ``init_word``."""
    import torch

    names = token_names(token, num_vectors)
    if tokenizer.add_tokens(names) != len(names):
        raise InvalidInput(f"The tokenizer already knows {token!r}: choose another --token.")
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not init_ids:
        raise InvalidInput(f"--init-word {init_word!r} gives no token: use a plain word such as 'close'.")
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for i, token_id in enumerate(ids):
            weight[token_id] = weight[init_ids[i % len(init_ids)]].clone()
    return ids


_FILE_STEM = re.compile(r"^[A-Za-z0-9][\w.\-]{0,63}$")


def embedding_stem(config) -> str:
    """The embedding file's name without ``.safetensors``: the token itself when it can be a file name
    (AUTOMATIC1111 then triggers it with the same word the studio's prompts use), else the run name."""
    token = config.placeholder
    return token if _FILE_STEM.match(token) and not token.lower().endswith(".safetensors") else config.run_name


def metadata(config, *, dataset_hash: str, steps: int, dim: int) -> dict[str, str]:
    return {"token": config.placeholder, "shot": config.shot, "method": "ti", "base_model": config.base_model,
            "steps": str(steps), "init_word": config.initializer, "num_vectors": str(config.num_vectors),
            "dim": str(dim), "dataset_hash": dataset_hash, "learning_rate": f"{config.learning_rate:g}",
            "resolution": str(config.resolution), "name": config.run_name,
            "training_prompt_template": training_prompt(config.placeholder, "{caption}", config.prompt_template),
            "trained_at": f"{time.time():.0f}"}


class EmbeddingWeights(Weights):
    """A checkpoint keeps the token's rows only."""
    file = TI_STATE

    def __init__(self, trainer: "TextualInversionTrainer"):
        self.trainer = trainer

    def state(self) -> dict:
        return {"emb_params": self.trainer.vectors()}

    def load(self, state: dict, folder) -> None:
        import torch

        rows = state.get("emb_params")
        ids = self.trainer.token_ids
        if rows is None or tuple(rows.shape) != (len(ids), self.trainer.embeddings.weight.shape[1]):
            raise InvalidInput(f"Checkpoint {folder} does not match this token (--num-vectors, base model).")
        with torch.no_grad():
            self.trainer.embeddings.weight[ids] = rows.to(self.trainer.embeddings.weight)


class TextualInversionTrainer(Trainer):
    @property
    def unet(self):
        return self.parts.unet

    @property
    def text_encoder(self):
        return self.trainable[0]

    @property
    def text_cache(self) -> bool:
        return False

    @property
    def embeddings(self):
        return self.accelerator.unwrap_model(self.text_encoder).get_input_embeddings()

    def read_examples(self) -> list[tdata.Example]:
        c = self.config
        examples = tdata.read_imagefolder(Path(c.dataset), shot=c.shot, phrase=c.phrase, template=c.prompt_template,
                                          placeholder=c.placeholder)
        return [replace(ex, text=expand(ex.text, c.placeholder, c.num_vectors)) for ex in examples]

    def load_parts(self) -> components.Components:
        # the text encoder trains (its embedding matrix): fp32 master weights, autocast does the rest
        return components.load(self.config.base_model, self.precision, self.device, fp32=("text_encoder",))

    def make_trainable(self) -> list:
        import torch

        c, te = self.config, self.parts.text_encoder
        self.token_ids = add_token(self.parts.tokenizer, te, c.placeholder, c.num_vectors, c.initializer)
        te.requires_grad_(False)
        weight = te.get_input_embeddings().weight
        weight.requires_grad_(True)
        self.original = weight.detach().clone()
        self.frozen_rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        self.frozen_rows[self.token_ids] = False
        if c.gradient_checkpointing:
            te.gradient_checkpointing_enable()
            self.parts.unet.enable_gradient_checkpointing()
        return [te]

    def param_groups(self) -> list[dict]:
        return [{"params": [self.text_encoder.get_input_embeddings().weight], "lr": self.config.learning_rate}]

    def after_update(self) -> None:
        import torch

        weight = self.embeddings.weight
        with torch.no_grad():
            weight[self.frozen_rows] = self.original[self.frozen_rows]

    def vectors(self):
        """The token's rows, (N, dim), float32 on the CPU."""
        return self.embeddings.weight[self.token_ids].detach().float().cpu().contiguous()

    def checkpoint_weights(self) -> Weights:
        return EmbeddingWeights(self)

    def save_result(self, dataset_hash: str) -> tuple[dict[str, Path], dict]:
        c = self.config
        rows = self.vectors()
        meta = metadata(c, dataset_hash=dataset_hash, steps=self.total_steps, dim=rows.shape[1])
        path = save_atomic({"emb_params": rows}, self.out / f"{embedding_stem(c)}.safetensors", meta)
        return {"embedding": path}, {"token": c.placeholder, "num_vectors": c.num_vectors,
                                     "init_word": c.initializer}
