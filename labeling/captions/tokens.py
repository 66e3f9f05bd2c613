"""CLIP token counts of training prompts, as SD 1.5's text encoder sees them (start and end tokens
included; 77 is the context).

The tokenizer is the real SD 1.5 one, written offline from the BPE merges shipped in a wheel
(``dreamshot.clip_tokenizer``). It and the memo of counted prompts are process-wide and hold no
studio data: a count depends on the text only, so they are not per-studio state.
"""

from __future__ import annotations

import functools
import tempfile
import threading

CLIP_MAX_TOKENS = 77          # SD 1.5's text encoder context, start and end tokens included
_MEMO_LIMIT = 50_000

_lock = threading.Lock()
_memo: dict[str, int] = {}


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    from dreamshot.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer

    folder = write_clip_tokenizer(tempfile.mkdtemp(prefix="dreamshot-clip-tok-"))
    return load_clip_tokenizer(folder)


def token_counts(texts: list[str]) -> list[int]:
    """CLIP token counts (start and end tokens included), one per text."""
    with _lock:
        todo = list(dict.fromkeys(t for t in texts if t not in _memo))
        if todo:
            if len(_memo) > _MEMO_LIMIT:
                _memo.clear()
            ids = _clip_tokenizer()(todo, truncation=False).input_ids
            _memo.update(zip(todo, map(len, ids)))
        return [_memo[t] for t in texts]


def over_limit(tokens: int | None) -> bool:
    return tokens is not None and tokens > CLIP_MAX_TOKENS
