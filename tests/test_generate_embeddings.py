"""Textual-inversion embeddings in Generate: added to the library by content (A1111 ``emb_params`` or
diffusers ``learned_embeds``), checked against the text encoder's width, loaded once into the shared
pipeline, their token where the shot words stand, named in the PNG parameters and restored from them,
reloaded when the file changes, alone or with a shot LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dreamshot.errors import InvalidInput
from dreamshot.generate import pngmeta
from dreamshot.generate.embeddings import inspect_embedding_file, is_embedding_file, read_vectors, schedule
from dreamshot.generate.loras import LoraLibrary
from dreamshot.generate.service import service
from tests.generate_fixtures import fast, gen_studio, lora_files, one_torch_thread, pixels  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH = 32                       # the demo text encoder's hidden size
CAPTION = "a woman reading a letter"
SHOT_WORDS = "a high-quality close shot picture of a woman reading a letter"


def random_embedding(path, *, vectors: int = 2, width: int = WIDTH, seed: int = 0, fmt: str = "a1111",
                     token: str | None = "<close-shot>", shot: str | None = "close"):
    """An embedding file with random vectors (large enough to change the image): A1111 style
    ``{"emb_params": [N, width]}`` with string metadata (what the TI trainer writes), or diffusers
    style ``{token: [N, width]}``."""
    vecs = torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed)) * 2.0
    if fmt == "a1111":
        meta = {k: v for k, v in {"token": token, "shot": shot, "method": "ti"}.items() if v}
        save_file({"emb_params": vecs}, str(path), metadata=meta)
    else:
        save_file({token: vecs}, str(path))
    return path


@pytest.fixture
def ti_file(tmp_path):
    return random_embedding(tmp_path / "close_ti.safetensors")


def token_rows(svc, token: str, n: int):
    tok, weight = svc.pipe.tokenizer, svc.pipe.text_encoder.get_input_embeddings().weight
    names = [token, *(f"{token}_{i}" for i in range(1, n))]
    return weight[[tok.convert_tokens_to_ids(t) for t in names]].detach().clone()


def test_files_are_told_apart_by_content_and_checked(tmp_path, lora_files):
    a1111 = random_embedding(tmp_path / "a.safetensors")
    learned = random_embedding(tmp_path / "learned_embeds.safetensors", fmt="diffusers", token="<noir>", vectors=1)
    assert is_embedding_file(a1111) and is_embedding_file(learned)
    assert not is_embedding_file(lora_files["close"]) and not is_embedding_file(lora_files["close_kohya"])
    check = inspect_embedding_file(a1111, WIDTH)
    assert (check.format, check.vectors, check.token, check.meta["shot"]) == ("a1111", 2, "<close-shot>", "close")
    assert inspect_embedding_file(learned, WIDTH).token == "<noir>"
    sd15 = random_embedding(tmp_path / "sd15.safetensors", width=768)
    with pytest.raises(InvalidInput, match=r"width 768 \(Stable Diffusion 1.x\).*uses width 32"):
        inspect_embedding_file(sd15, WIDTH)
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(InvalidInput, match="SDXL embedding"):
        inspect_embedding_file(tmp_path / "xl.safetensors", WIDTH)


def test_a_single_short_vector_is_refused_as_not_an_embedding(tmp_path):
    """A 1-D tensor of a width no text encoder has is a single vector of numbers, not an embedding
    of vectors of "width 3"; a 1-D vector of the encoder's own width is a one-token embedding."""
    for key in ("emb_params", "<x>"):
        save_file({key: torch.zeros(3)}, str(tmp_path / "flat.safetensors"))
        with pytest.raises(InvalidInput, match=r"holds a single vector of 3 numbers, not an embedding.*"
                                               r"vectors of 32 numbers \(shape \[tokens, 32\]") as err:
            inspect_embedding_file(tmp_path / "flat.safetensors", WIDTH)
        assert "width 3" not in str(err.value)
    save_file({"<x>": torch.zeros(WIDTH)}, str(tmp_path / "one.safetensors"))
    assert inspect_embedding_file(tmp_path / "one.safetensors", WIDTH).vectors == 1


def test_width_mismatch_is_refused_and_nothing_is_stored(studio, tmp_path):
    svc = service(studio)
    wrong = random_embedding(tmp_path / "sd15.safetensors", width=768)
    with pytest.raises(InvalidInput, match="width 768"):
        svc.upload_lora(wrong, name="sd15_ti")
    with pytest.raises(InvalidInput, match="a word the base model already knows"):
        svc.upload_lora(random_embedding(tmp_path / "cat.safetensors", token="cat"), name="cat_ti")
    assert LoraLibrary(studio).list() == []
    folder = studio.settings.loras_dir / "embeddings"
    assert not folder.exists() or not any(folder.iterdir())
    assert svc.generate(fast()).images                                        # still working


def test_cli_adds_and_lists_embeddings(studio, tmp_path, capsys):
    from dreamshot.__main__ import main

    learned = random_embedding(tmp_path / "learned_embeds.safetensors", fmt="diffusers", token="<noir>")
    data = ["--data", str(studio.settings.data_dir), "--model", "demo"]
    assert main(["loras", "add", str(learned), "--name", "noir", "--token", "<noir-look>", *data]) == 0
    assert main(["loras", "add", str(tmp_path / "learned_embeds.safetensors"), "--name", "plain", *data]) == 0
    assert main(["loras", "list", *data]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("noir ", "plain "))}
    assert lines["noir"].split()[1:3] == ["embedding", "ti"] and "token <noir-look>" in lines["noir"]
    assert "token <noir>" in lines["plain"]          # the file's own token when no --token is given
    info = LoraLibrary(studio).get("noir")
    assert (info.kind, info.method, info.token, info.origin) == ("embedding", "ti", "<noir-look>", "uploaded")


def test_generate_with_an_embedding_params_and_read_back(studio, ti_file):
    svc = service(studio)
    base = pixels(svc.generate(fast(SHOT_WORDS, use_template=False)))
    info = svc.upload_lora(ti_file, name="close_ti")
    assert (info.kind, info.token, info.shot, info.meta["vectors"]) == ("embedding", "<close-shot>", "close", 2)
    assert svc.loras() == [] and [e.name for e in svc.embeddings_list()] == ["close_ti"]
    result = svc.generate(fast(embedding="close_ti", seed=-1))
    assert result.prompt == "a high-quality <close-shot> picture of a woman reading a letter"
    assert np.abs(pixels(result) - base).max() > 0                           # the embedding changes the image
    assert torch.equal(token_rows(svc, "<close-shot>", 2), read_vectors(info.path))     # loaded once, as saved
    again = pixels(svc.generate(fast(SHOT_WORDS, use_template=False)))
    assert np.array_equal(again, base)                                        # other prompts: unchanged
    text = pngmeta.read_parameters(result.images[0].path)
    params = pngmeta.parse_parameters(text)
    # written as AUTOMATIC1111 names the embedding (after its file, close_ti.safetensors), so the PNG's
    # prompt triggers it there; the studio reads it back to its own token (#22)
    assert params.prompt == "a high-quality close_ti picture of a woman reading a letter"
    assert params.ti_hashes == {"close_ti": info.short_hash}
    assert params.methods == {"close_ti": "ti"} and params.loras == []
    req, notes = svc.request_from_parameters(text)
    assert notes == [] and req.embedding == "close_ti" and req.prompt == CAPTION and req.use_template
    assert np.array_equal(pixels(svc.generate(req)), pixels(result))
    typed = svc.generate(fast("a <close-shot> woman", use_template=False, embedding="close_ti", seed=4))
    assert pngmeta.parse_parameters(typed.images[0].parameters).prompt == "a close_ti woman"
    req, notes = svc.request_from_parameters(typed.images[0].parameters)
    assert (req.prompt, req.embedding, notes) == ("a <close-shot> woman", "close_ti", [])
    LoraLibrary(studio).remove("close_ti")
    req, notes = svc.request_from_parameters(text)
    assert req.embedding is None and notes == ["Embedding 'close_ti' is not in this studio's library; it was left out."]
    with pytest.raises(InvalidInput, match="Unknown embedding 'close_ti'. Available: none yet"):
        svc.generate(fast(embedding="close_ti"))


def test_a_changed_file_of_the_same_name_is_reloaded(studio, tmp_path):
    svc = service(studio)
    lib = LoraLibrary(studio)
    first = lib.register(random_embedding(tmp_path / "v1.safetensors", seed=1), name="close_ti", shot="close",
                         origin="trained", kind="embedding", token="<close-shot>")
    one = pixels(svc.generate(fast(embedding="close_ti")))
    second = lib.register(random_embedding(tmp_path / "v2.safetensors", seed=2, vectors=3), name="close_ti",
                          shot="close", origin="trained", kind="embedding", token="<close-shot>")
    assert second.sha256 != first.sha256
    two = svc.generate(fast(embedding="close_ti"))                            # no "token already in vocabulary"
    assert torch.equal(token_rows(svc, "<close-shot>", 3), read_vectors(second.path))
    assert np.abs(pixels(two) - one).max() > 0
    assert f"v2: {second.short_hash}" in two.images[0].parameters     # as A1111 names it: after its file


def test_two_embeddings_of_one_token_in_one_call(studio, tmp_path):
    svc = service(studio)
    lib = LoraLibrary(studio)
    for name, seed in (("run1", 1), ("run2", 2)):
        lib.register(random_embedding(tmp_path / f"{name}.safetensors", seed=seed), name=name, shot="close",
                     origin="trained", kind="embedding", token="<close-shot>")
    alone = [pixels(svc.generate(fast(embedding=name))) for name in ("run1", "run2")]
    both = svc.generate_many([fast(embedding="run1"), fast(embedding="run2"), fast(embedding="run1", seed=9)])
    assert np.abs(alone[0] - alone[1]).max() > 20
    # run1's two images form one batch: equal to the one-image run up to batching's rounding (batch.py)
    assert np.abs(pixels(both[0]) - alone[0]).max() <= 2 and np.array_equal(pixels(both[1]), alone[1])
    assert "run2: " in both[1].images[0].parameters and "run1: " in both[2].images[0].parameters


def test_schedule_splits_only_clashing_tokens():
    class E:
        def __init__(self, name, token, sha):
            self.name, self.token, self.sha256 = name, token, sha

    a, b, c = E("a", "<t>", "1"), E("b", "<t>", "2"), E("c", "<u>", "3")
    assert schedule([[0, 1], [2]], [a, c, None]) == [([a, c], [0, 1]), ([], [2])]
    assert schedule([[0, 1, 2]], [a, b, a]) == [([a], [0, 2]), ([b], [1])]


def test_embedding_with_a_lora_and_compare_with_base(gen_studio, ti_file):
    svc = service(gen_studio)
    svc.upload_lora(ti_file, name="close_ti")
    with_lora = svc.generate(fast(shot="close", alpha=0.8, embedding="close_ti"))
    only_ti = svc.generate(fast(embedding="close_ti"))
    only_lora = svc.generate(fast(shot="close", alpha=0.8))
    assert with_lora.prompt == only_ti.prompt != only_lora.prompt == SHOT_WORDS
    assert [(i.name, w) for i, w in with_lora.loras] == [("close", 0.8)]
    assert np.abs(pixels(with_lora) - pixels(only_ti)).max() > 0
    assert np.abs(pixels(with_lora) - pixels(only_lora)).max() > 0
    params = pngmeta.parse_parameters(with_lora.images[0].parameters)
    assert params.loras == [("close", 0.8)] and list(params.ti_hashes) == ["close_ti"]
    assert params.methods == {"close": "lora", "close_ti": "ti"}
    req, notes = svc.request_from_parameters(with_lora.images[0].parameters)
    assert (req.shot, req.alpha, req.embedding, notes) == ("close", 0.8, "close_ti", [])
    for request in (fast(embedding="close_ti", seed=5), fast(shot="close", embedding="close_ti", seed=5)):
        base, side = svc.compare_with_base(request)
        assert base.prompt == SHOT_WORDS and base.request.embedding is None and base.loras == []
        assert "<close-shot>" in side.prompt
        plain = svc.generate(fast(SHOT_WORDS, use_template=False, seed=5))
        # (an embedding-only side shares the base's batch: equal up to batching's rounding)
        assert np.abs(pixels(base) - pixels(plain)).max() <= 2 < np.abs(pixels(side) - pixels(plain)).max()
    base, _ = svc.compare_with_base(fast("a <close-shot> woman", use_template=False, embedding="close_ti", seed=5))
    assert base.prompt == "a close shot woman"


def test_tab_handlers_list_choose_and_restore_embeddings(studio, ti_file):
    from dreamshot.generate.handlers import GenerateForm, GenerateHandlers

    h = GenerateHandlers(studio)
    note = h.upload(str(ti_file), "close_ti", "close", "")
    assert "embedding **close_ti**" in note and "<close-shot>" in note
    assert h.embedding_choices() == [("none", "none"), ("close_ti · <close-shot>", "close_ti")]
    assert h.library_rows()[0][:5] == ["close_ti", "embedding", "ti", "close", "<close-shot>"]
    shown = h.generate(GenerateForm(prompt="a man on a bridge", steps=3, width=64, height=64, seed="3",
                                    embedding="close_ti"))
    assert "embedding close_ti" in shown.info and "TI hashes" in shown.parameters
    form, note = h.read_png(shown.gallery[0][0])
    assert (form.embedding, form.shot, form.prompt, note) == ("close_ti", "none", "a man on a bridge",
                                                              "Settings restored.")


def test_a1111_ti_hashes_are_read_by_name_or_hash():
    from dataclasses import replace

    from dreamshot.generate.loras import LoraInfo
    from dreamshot.generate.params import request_from_parameters
    from dreamshot.shots import get_taxonomy

    text = ("masterpiece, easynegative, a lighthouse\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, "
            'Size: 512x512, TI hashes: "EasyNegative: c74b4e810b03, other: 0123456789ab", Version: v1.6.0')
    info = LoraInfo(1, "easy", None, None, "a1111", "uploaded", None, "c74b4e810b03" + "0" * 52, None, {},
                    kind="embedding", method="ti", token="easynegative")
    req, notes = request_from_parameters(text, [], get_taxonomy(None), [info])
    assert req.embedding == "easy" and req.prompt.startswith("masterpiece, easynegative")   # found by its hash
    assert notes == ["Embedding 'other' is not in this studio's library; it was left out."]
    renamed = replace(info, name="EasyNegative", sha256="f" * 64)
    req, notes = request_from_parameters(text, [], get_taxonomy(None), [renamed])
    assert req.embedding == "EasyNegative" and "the library's file differs" in notes[0]
