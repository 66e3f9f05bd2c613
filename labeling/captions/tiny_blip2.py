"""A tiny BLIP-2 captioner (random weights, offline tokenizer) for tests and offline demos.

The real captioners (``Salesforce/blip2-flan-t5-xl``, ...) cannot be downloaded here, so tests build
this one: BLIP-2's architecture (vision tower, Q-Former, OPT or T5 language model) shrunk to a few hundred
thousand parameters, and a byte-level BPE tokenizer trained in-process with the ``tokenizers``
package. It is written with ``save_pretrained`` and loaded back by :mod:`labeling.captioner` through
the same ``from_pretrained(folder)`` code path as a real checkpoint. Its captions are random words.
"""

from __future__ import annotations

from pathlib import Path

from dreamshot.demo_model import built_once, replace_folder

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
SEED = 1234

# A few caption-like sentences: enough for a small byte-level vocabulary of real words.
_CORPUS = [
    "a man sitting at a table in a dark room",
    "a woman standing in front of a window",
    "two people talking on a city street at night",
    "a car driving down a road in the desert",
    "a close up of a face with blue eyes",
    "a group of soldiers walking through a field",
    "a house on a hill under a cloudy sky",
    "a child playing with a dog in the grass",
    "an old man wearing a hat and a coat",
    "a black and white photo of a train station",
] * 20


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=64,
    )
    fast.add_bos_token = True
    return fast


DEMO_DIR = "demo-blip2"


def ensure_tiny_blip2(models_dir: Path) -> Path:
    """The studio's demo captioner under ``<models_dir>/demo-blip2``, built on first use by one thread or
    process (``demo_model.built_once``)."""
    return built_once(Path(models_dir) / DEMO_DIR, lambda path: (path / "config.json").is_file(),
                      lambda path: build_tiny_blip2(path))


def _text_config(kind: str, tokenizer) -> dict:
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if kind == "opt":  # decoder-only, like Salesforce/blip2-opt-2.7b
        return dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32, **ids)
    if kind == "t5":  # encoder-decoder, like Salesforce/blip2-flan-t5-xl
        return dict(model_type="t5", vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                    num_heads=4, decoder_start_token_id=tokenizer.pad_token_id, **ids)
    raise ValueError(f"text model must be 'opt' or 't5', not {kind!r}")


def build_tiny_blip2(out_dir: Path, seed: int = SEED, text_model: str = "opt") -> Path:
    """Write a tiny BLIP-2 (model + processor) to out_dir, atomically, and return the path.
    ``text_model``: "opt" (decoder-only language model) or "t5" (encoder-decoder, FlanT5-style)."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            cross_attention_frequency=1),
        text_config=_text_config(text_model, tokenizer),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    return _save(out_dir, model, processor)


def build_tiny_blip(out_dir: Path, seed: int = SEED) -> Path:
    """The same for BLIP (``model_type`` ``blip``, ``BlipForConditionalGeneration``): tests the
    captioner's second architecture (``Salesforce/blip-image-captioning-large`` in real use)."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    tokenizer.add_special_tokens({"sep_token": "[SEP]", "cls_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    return _save(out_dir, model, processor)


def _save(out_dir: Path, model, processor) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return replace_folder(out_dir, write)


if __name__ == "__main__":  # python -m labeling.tiny_blip2 OUT_DIR
    import sys

    print(build_tiny_blip2(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-blip2")))
