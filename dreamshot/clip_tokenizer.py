"""Build Stable Diffusion 1.5's CLIP tokenizer offline from the BPE merges file OpenAI ships.

OpenAI's SimpleTokenizer builds its 49,408-token vocabulary from ``bpe_simple_vocab_16e6.txt.gz``:
the 256 byte symbols, the same with ``</w>``, the first 48,894 merges joined, then the two special
tokens. Written out as ``vocab.json`` + ``merges.txt`` it loads with
``CLIPTokenizer.from_pretrained(dir)`` and gives the same ids as SD 1.5's own tokenizer.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BPE_FILE = Path(__file__).with_name("assets") / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # 48,894
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def write_clip_tokenizer(out_dir: Path, bpe_file: Path = BPE_FILE) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for SD 1.5's tokenizer to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    (out_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }))
    return out_dir


def load_clip_tokenizer(directory: Path):
    from dreamshot.models import import_tokenizer_library

    import_tokenizer_library()
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
    tok.model_max_length = MAX_LENGTH
    return tok
