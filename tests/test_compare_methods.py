"""Comparing two generators (issue 14, "Compare the methods"): the generator text form, its
resolution against the library, an evaluation of two LoRA generators on the same captions and seeds,
and a survey built from two generators whose Table 5 names them."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from dreamshot import schema
from dreamshot.errors import InvalidInput
from dreamshot.evaluate import pairs, report
from dreamshot.evaluate.pairs import EvalOptions
from dreamshot.evaluate.service import service as evaluation
from dreamshot.generate import generators, pngmeta
from dreamshot.generate.loras import LoraLibrary
from dreamshot.generate.request import ControlRequest
from dreamshot.survey import results as survey_results
from dreamshot.survey.service import QUESTIONS, service as surveys
from tests.evaluate_fixtures import eval_studio, tiny_eval_models  # noqa: F401 (fixtures)
from tests.generate_fixtures import gen_studio, lora_files  # noqa: F401 (fixtures)
from tests.survey_helpers import ready_survey, small_spec

FAST = dict(width=64, height=64, steps=2, batch=4, bootstrap=100, ablation=False, alpha_values=[0.0, 1.0],
            alpha_subset=1)


def add_full_loras(studio, lora_files) -> None:
    """LoRAs registered as extracted from full fine-tunes (method "full"), rank 4, for close and medium."""
    lib = LoraLibrary(studio)
    lib.register(lora_files["medium"], name="close-full", shot="close", origin="trained", kind="lora",
                 method="full", meta={"rank": 4})
    lib.register(lora_files["close"], name="medium-full", shot="medium", origin="trained", kind="lora",
                 method="full", meta={"rank": 4})


# ---- the text form ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical, label", [
    ("base", "base", "Base"),
    ("LoRA", "lora@0.7", "LoRA α=0.7"),                 # no @α: the default α
    ("lora@0.8", "lora@0.8", "LoRA α=0.8"),
    ("full@1", "full@1", "Full→LoRA α=1"),
    ("ti", "ti", "TI"),
    ("ti + lora@0.6", "ti+lora@0.6", "TI + LoRA α=0.6"),
    ("lora@0.6+ti", "ti+lora@0.6", "TI + LoRA α=0.6"),
    ("name:my-lora@0.9", "name:my-lora@0.9", "my-lora α=0.9"),
    ("lora@0.8+canny", "lora@0.8+canny", "LoRA α=0.8 +canny"),
    ("depth", "base+depth", "Base +depth"),
])
def test_parse_gives_a_canonical_text_and_a_label(text, canonical, label):
    spec = generators.parse(text, default_alpha=0.7)
    assert spec.text == canonical and generators.label(spec) == label
    assert generators.parse(spec.text, 0.3) == spec                 # the canonical text reads back the same


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("base+lora", "'base' is the model without"),
    ("lora+full", "more than one LoRA"),
    ("ti@0.5", "only a LoRA part takes @α"),
    ("lora@2", "α must be between 0 and 1.5"),
    ("scribble", "Unknown generator part 'scribble'"),
    ("canny+depth", "more than one control"),
    ("name:x@0.5+lora@0.8", "two @α"),
])
def test_parse_refuses_bad_text_naming_the_part(text, message):
    with pytest.raises(InvalidInput, match=message):
        generators.parse(text)


def test_resolve_per_shot_against_the_library(gen_studio, lora_files):
    add_full_loras(gen_studio, lora_files)
    lib = LoraLibrary(gen_studio)
    lib.register(lora_files["close"], name="close-ti", shot="close", origin="trained", kind="embedding",
                 token="<close-shot>")
    entries = lib.list()
    full = generators.resolve(generators.parse("full@1"), "close", entries)
    assert full.lora.name == "close-full" and full.request_fields()["shot"] == "close-full"
    lora = generators.resolve(generators.parse("lora@0.5"), "close", entries)
    assert lora.request_fields() == {"shot": "close", "alpha": 0.5, "embedding": None, "control": None}
    both = generators.resolve(generators.parse("ti+lora@0.6+canny"), "close", entries)
    fields = both.request_fields("frame.png")
    assert fields["shot"] == "close" and fields["embedding"] == "close-ti" and both.token == "<close-shot>"
    assert fields["control"] == ControlRequest("canny", image="frame.png")
    assert generators.label(generators.parse("full@1"), [full]) == "Full→LoRA r4 α=1"
    base = generators.resolve(generators.parse("base"), "close", entries)
    assert base.request_fields() == {"shot": None, "alpha": 1.0, "embedding": None, "control": None}
    named = generators.resolve(generators.parse("name:close-ti"), "medium", entries)
    assert named.embedding.name == "close-ti" and named.lora is None
    with pytest.raises(InvalidInput, match="No textual-inversion embedding for the shot type 'medium' yet: "
                                           "train one with --method ti"):
        generators.resolve(generators.parse("ti"), "medium", entries)
    with pytest.raises(InvalidInput, match="No full-fine-tune LoRA for the shot type 'long'"):
        generators.resolve(generators.parse("full@1"), "long", entries)
    with pytest.raises(InvalidInput, match="No library entry called 'nope'. Available: close, close-full"):
        generators.resolve(generators.parse("name:nope"), "close", entries)
    with pytest.raises(InvalidInput, match="two LoRAs"):
        generators.resolve(generators.parse("name:close+full@1"), "close", entries)
    with pytest.raises(InvalidInput, match="needs a reference frame"):
        both.request_fields()
    offered = generators.choices(entries, 0.8)
    assert {"base", "lora@0.8", "full@0.8", "ti", "ti+lora@0.8", "base+canny", "name:close-ti"} <= set(offered)
    with pytest.raises(InvalidInput, match="the same"):
        generators.check_pair(generators.parse("lora@1"), generators.parse("lora"))


# ---- evaluation -----------------------------------------------------------------------------------------

def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_evaluation_compares_two_lora_generators_on_the_same_captions_and_seeds(
        eval_studio, lora_files, tiny_eval_models, tmp_path, one_torch_thread):
    from dreamshot.generate.service import GenerationRequest, service as generation

    add_full_loras(eval_studio, lora_files)
    options = EvalOptions(out=str(tmp_path / "eval"), clip_model=tiny_eval_models["clip"],
                          dino_model=tiny_eval_models["dino"], pairs=2, a="lora@0.5", b="full@1", **FAST)
    res = evaluation(eval_studio).run(options)
    out = tmp_path / "eval"
    lines = pairs.read_jsonl(out / "pairs.jsonl")
    assert res["complete"] and len(lines) == 2 and {r["shot"] for r in lines} == {"close", "medium"}
    for rec in lines:
        a_text = pngmeta.read_parameters(out / rec["base_image"])
        b_text = pngmeta.read_parameters(out / rec["tuned_image"])
        for text in (a_text, b_text):                                                 # the same caption
            assert text.split("\n")[0].split(" <lora:")[0] == rec["prompt"]
        assert f"Seed: {rec['seed']}," in a_text and f"Seed: {rec['seed']}," in b_text  # and the same seed
        assert f"<lora:{rec['shot']}:0.5>" in a_text and f"<lora:{rec['shot']}-full:1>" in b_text
    first = next(r for r in lines if r["shot"] == "close")   # side A is exactly a lora@0.5 image of that seed
    alone = generation(eval_studio).generate(GenerationRequest(
        prompt=first["prompt"], shot="close", alpha=0.5, use_template=False, seed=first["seed"], width=64,
        height=64, steps=2), save=False).images[0].image
    assert np.abs(_pixels(out / first["base_image"]) - np.asarray(alone, dtype=np.int16)).max() <= 1
    gens = res["generators"]
    assert (gens["a"]["label"], gens["b"]["label"]) == ("LoRA α=0.5", "Full→LoRA r4 α=1")
    assert gens["b"]["per_shot"]["medium"]["lora"] == "medium-full"
    assert res["tables"]["table3"]["dino"]["overall"]["n"] == 2
    assert set(res["tables"]["table3"]["judged_as_requested"]["overall"]) >= {"base", "tuned"}
    assert [a["alpha"] for a in res["alpha_curve"]] == [0.0, 1.0]          # B's α curve
    text = report.markdown(res)
    assert "**A**: LoRA α=0.5 · **B**: Full→LoRA r4 α=1" in text and "| A: LoRA α=0.5 | B: Full→LoRA r4 α=1 |" in text
    assert "side B's LoRA at each α; B = Full→LoRA r4 α=1" in text
    with pytest.raises(InvalidInput, match=r"other settings \(generators\)"):     # resume never mixes specs
        evaluation(eval_studio).run(EvalOptions(**{**options.__dict__, "a": "base"}))
    assert "generators" not in EvalOptions(out="x").generation_key()       # default runs resume as before


def test_evaluation_refuses_a_generator_a_shot_cannot_serve(eval_studio, tiny_eval_models, tmp_path):
    options = EvalOptions(out=str(tmp_path / "e"), clip_model=tiny_eval_models["clip"],
                          dino_model=tiny_eval_models["dino"], pairs=2, b="full@1", **FAST)
    with pytest.raises(InvalidInput, match="No shot type can be evaluated with A = base and B = full@1: "
                                           "No full-fine-tune LoRA"):
        evaluation(eval_studio).run(options)
    with pytest.raises(InvalidInput, match="No full-fine-tune LoRA for the shot type 'close'"):
        evaluation(eval_studio).run(EvalOptions(**{**options.__dict__, "shots": ["close"]}))
    assert not (tmp_path / "e").exists()


# ---- survey -------------------------------------------------------------------------------------------

def test_survey_of_two_generators_labels_table5_by_generator(gen_studio, lora_files, one_torch_thread):
    add_full_loras(gen_studio, lora_files)
    svc = surveys(gen_studio)
    info = svc.build(small_spec(name="methods", pairs=2, per_participant=2, a="lora@0.5", b="full@1"))
    assert info.ready == 2 and "A = LoRA α=0.5 vs B = Full→LoRA r4 α=1" in info.line()
    P = schema.survey_pairs
    with gen_studio.db.read() as conn:
        rows = conn.execute(sa.select(P).where(P.c.survey_id == info.id)).all()
    for row in rows:
        assert row.meta["generators"]["a"]["lora"] == row.shot and row.lora_name == f"{row.shot}-full"
        assert f"<lora:{row.shot}:0.5>" in row.base_parameters and f"<lora:{row.shot}-full:1>" in row.lora_parameters
        assert f"Seed: {row.seed}," in row.base_parameters and f"Seed: {row.seed}," in row.lora_parameters
    svc.set_state("methods", "open")
    token = svc.join("methods", "", "198.51.100.7")
    while not (view := svc.view(token))["finished"]:
        for q in QUESTIONS:                  # always the picture on the left, wherever B was shown
            ack = svc.answer(token, view["slot"], view["pair_id"], q, "A", "198.51.100.7")
    assert ack["sides"] == {"base": "LoRA α=0.5", "lora": "Full→LoRA r4 α=1"}    # revealed after the pair
    from dreamshot.survey.tab import SurveyHandlers

    class Req:
        client = type("C", (), {"host": "192.0.2.9"})()
        headers, query_params, username = {}, {}, None

    h = SurveyHandlers(gen_studio)
    page = h.ui_start("methods", "", Req())
    token, slot, pair = page[0], page[-3], page[-2]
    notes = [str(x) for q in QUESTIONS for x in h.ui_answer(q, "B", token, slot, pair, Req())]
    revealed = next(n for n in notes if "In that pair" in n)
    assert ("**B** was Full→LoRA r4 α=1 and **A** LoRA α=0.5" in revealed
            or "**A** was Full→LoRA r4 α=1 and **B** LoRA α=0.5" in revealed)
    res = survey_results.results(gen_studio, "methods")
    table = res.markdown()
    assert "| question | % LoRA α=0.5 (A) | % Full→LoRA r4 α=1 (B) | % neither |" in table
    assert "sign test: Full→LoRA r4 α=1 (B) vs LoRA α=0.5 (A)" in table
    like = res.overall[0]
    exported = survey_results.export_rows(gen_studio, "methods")
    for row in exported:
        assert row["preferred"] == {"lora": "Full→LoRA r4 α=1", "base": "LoRA α=0.5"}[row["choice"]]
    # The handler's participant is on a password-less full studio: a preview, exported but not counted.
    assert {r["preview"] for r in exported} == {True, False}
    counted = [r for r in exported if r["question"] == "like" and r["round"] == 0 and not r["preview"]]
    assert counted and like.shares["lora"].count == sum(r["choice"] == "lora" for r in counted)
    assert like.n == len(counted)


def test_old_surveys_read_as_before_and_controlnet_needs_frames(gen_studio):
    ready_survey(gen_studio, name="old")           # settings without generators: built before them
    table = survey_results.results(gen_studio, "old").markdown()
    assert "| question | % baseline | % fine-tuned | % neither |" in table and "(A)" not in table
    with pytest.raises(InvalidInput, match="ControlNet image from a held-out frame"):
        surveys(gen_studio).create(small_spec(name="cn", b="lora@1+canny"))
    with pytest.raises(InvalidInput, match="No full-fine-tune LoRA for the shot type 'close'"):
        surveys(gen_studio).create(small_spec(name="full", b="full@1"))
    assert surveys(gen_studio).list() == [surveys(gen_studio).info("old")]


# ---- an embedding and a ControlNet generator (textual inversion and ControlNet in generation) --------------

def add_embedding(studio, folder, shot: str = "close", seed: int = 0) -> str:
    """A random textual-inversion embedding for ``shot`` (A1111 ``emb_params``, the demo text width)."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"{shot}-ti.safetensors"
    token = f"<{shot}-shot>"
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(seed)) * 2.0
    save_file({"emb_params": vectors}, str(path), metadata={"token": token, "shot": shot, "method": "ti"})
    LoraLibrary(studio).register(path, name=f"{shot}-ti", shot=shot, origin="trained", kind="embedding",
                                 token=token)
    return token


def test_evaluation_of_an_embedding_against_a_lora_with_controlnet(eval_studio, tiny_eval_models, tmp_path,
                                                                   one_torch_thread):
    token = add_embedding(eval_studio, tmp_path)
    options = EvalOptions(out=str(tmp_path / "eval"), clip_model=tiny_eval_models["clip"],
                          dino_model=tiny_eval_models["dino"], pairs=1, shots=["close"], a="ti",
                          b="lora@0.8+canny", **{**FAST, "ablation": True})
    res = evaluation(eval_studio).run(options)
    out = tmp_path / "eval"
    assert res["complete"] and res["pairs_done"] == 2
    assert (res["generators"]["a"]["label"], res["generators"]["b"]["label"]) == ("TI", "LoRA α=0.8 +canny")
    for rec in pairs.read_jsonl(out / "pairs.jsonl"):
        a_text = pngmeta.read_parameters(out / rec["base_image"])
        b_text = pngmeta.read_parameters(out / rec["tuned_image"])
        assert f"Seed: {rec['seed']}," in a_text and f"Seed: {rec['seed']}," in b_text
        assert 'TI hashes: "close-ti:' in a_text and "<lora:" not in a_text and "ControlNet" not in a_text
        assert "<lora:close:0.8>" in b_text and 'ControlNet 0: "Module: canny' in b_text
        if rec["ablation"]:       # no shot words in the prompt: no token either
            assert a_text.startswith(rec["prompt"] + "\n")
        else:                     # the token where the shot words stand; CLIP-T scores the words. The PNG
            # writes it as A1111 names the embedding (its file close-ti.safetensors), so it works there (#22)
            assert a_text.startswith(rec["prompt"].replace("close shot", "close-ti") + "\n")
    assert res["generators"]["a"]["per_shot"]["close"]["token"] == token
    assert res["alpha_curve"] and "B = LoRA α=0.8 +canny)" in report.markdown(res)


def test_survey_of_an_embedding_against_base_with_controlnet(gen_studio, tmp_path, one_torch_thread):
    from tests.evaluate_fixtures import add_held_out

    token = add_embedding(gen_studio, tmp_path)
    add_held_out(gen_studio, 2, shots=("close",))
    svc = surveys(gen_studio)
    spec = small_spec(name="ti-cn", pairs=2, per_participant=1, prompts=None, a="base+canny", b="ti")
    spec.shots = ["close"]
    info = svc.build(spec)
    assert info.ready == 2 and "A = Base +canny vs B = TI" in info.line()
    P = schema.survey_pairs
    with gen_studio.db.read() as conn:
        rows = conn.execute(sa.select(P).where(P.c.survey_id == info.id)).all()
    for row in rows:
        assert row.frame_id is not None and row.meta["generators"]["b"]["prompt"] == row.prompt.replace(
            "close shot", token)
        assert 'ControlNet 0: "Module: canny' in row.base_parameters and "TI hashes" not in row.base_parameters
        # the PNG text names the embedding as A1111 does (after its file, close-ti.safetensors) (#22)
        assert row.lora_parameters.startswith(row.meta["generators"]["b"]["prompt"].replace(token, "close-ti") + "\n")
        assert 'TI hashes: "close-ti:' in row.lora_parameters and "ControlNet" not in row.lora_parameters
    assert "| question | % Base +canny (A) | % TI (B) |" in survey_results.results(gen_studio, "ti-cn").markdown()


def test_cli_takes_two_generators_and_refuses_a_bad_one(eval_studio, lora_files, tiny_eval_models, tmp_path,
                                                       capsys, one_torch_thread):
    import json

    from dreamshot.__main__ import main

    add_full_loras(eval_studio, lora_files)
    data = str(eval_studio.settings.data_dir)
    common = ["--data", data, "--model", "demo"]
    args = ["evaluate", *common, "--out", str(tmp_path / "cli"), "--pairs", "2", "--a", "lora@0.5", "--b", "full",
            "--clip-model", tiny_eval_models["clip"], "--dino-model", tiny_eval_models["dino"], "--width", "64",
            "--height", "64", "--steps", "2", "--alpha-subset", "0", "--no-ablation", "--bootstrap", "100"]
    assert main(args) == 0
    res = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [res["generators"][s]["spec"] for s in "ab"] == ["lora@0.5", "full@1"]
    assert "**A**: LoRA α=0.5 · **B**: Full→LoRA r4 α=1" in capsys.readouterr().out
    assert main(["survey", "build", *common, "--name", "cli", "--shots", "close", "--pairs", "1",
                 "--per-participant", "1", "--frames", "", "--steps", "2", "--size", "64", "--a", "full",
                 "--b", "lora@0.5"]) == 0
    assert "A = Full→LoRA r4 α=1 vs B = LoRA α=0.5" in capsys.readouterr().out
    assert main(["evaluate", *common, "--out", str(tmp_path / "bad"), "--b", "lora@0.5+ti@1"]) == 2
    assert "only a LoRA part takes @α" in capsys.readouterr().err


def test_tab_generator_menus_list_what_the_library_offers_to_admins_only(gen_studio, lora_files, make_studio):
    from dreamshot.evaluate.tab import EvalForm, EvaluateHandlers
    from dreamshot.survey.tab_admin import BuildForm, SurveyAdminHandlers

    add_full_loras(gen_studio, lora_files)
    for handlers in (EvaluateHandlers(gen_studio), SurveyAdminHandlers(gen_studio)):
        menu_a, menu_b = handlers.generator_choices(None)
        offered = [c[0] if isinstance(c, tuple) else c for c in menu_b.choices]
        assert {"base", "lora", "full", "lora+canny", "name:close-full"} <= set(offered) and "ti" not in offered
        assert (menu_a.value, menu_b.value) == ("base", "lora")
    guarded = make_studio(admin_password="pw")
    for handlers in (EvaluateHandlers(guarded), SurveyAdminHandlers(guarded)):    # no error on page load
        assert handlers.generator_choices(None) == ({"__type__": "update"}, {"__type__": "update"})  # gr.skip()
    options = EvaluateHandlers(gen_studio).options(EvalForm(name="x", a=" ti ", b="full@0.5+canny"))
    assert (options.a, options.b) == ("ti", "full@0.5+canny")
    spec = BuildForm("s", ["close"], 2, 1, 0.8, "pasted prompts", "a cat", "", "", 2, 64, "lora", "full").spec()
    assert (spec.a, spec.b, spec.alpha) == ("lora", "full", 0.8)


def test_default_shots_are_those_both_generators_serve_and_the_alpha_curve_needs_a_lora_on_b(gen_studio, tmp_path):
    from dreamshot.evaluate.sides import resolve_sides

    add_embedding(gen_studio, tmp_path)                      # an embedding for 'close' only
    entries = LoraLibrary(gen_studio).list()
    sides = resolve_sides(gen_studio, entries, EvalOptions(out="x", a="lora", b="ti"))
    assert sides.shots == ["close"] and not sides.b_has_lora
    assert [s.shot for s in sides.loras()] == ["close"]
    sides = resolve_sides(gen_studio, entries, EvalOptions(out="x", alpha=0.3))
    assert sides.shots == ["close", "medium"] and sides.b_has_lora and sides.b.text == "lora@0.3"
    with pytest.raises(InvalidInput, match="the same"):
        resolve_sides(gen_studio, entries, EvalOptions(out="x", a="ti", b="ti"))
