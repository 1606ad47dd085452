"""An independent reference of the release's slow `InternLM2Tokenizer` (transformers 4.x), from sentencepiece and
the release's tokenizer files only; it shares no code with `hovle.conversion.tokenizer_conversion`.

The release's rules:
* encode: split the text at the added tokens (longest first), `sp.encode` each piece of text, `<s>` first
  (`add_bos_token`), `</s>` last only with `add_eos_token`;
* decode with `skip_special_tokens=True`: drop the special ids, `sp.decode` the rest, then transformers 4.x's
  `clean_up_tokenization` (the slow tokenizer's `convert_tokens_to_string` applies it unconditionally).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import sentencepiece


def clean_up_tokenization(text: str) -> str:
    """transformers 4.x's `clean_up_tokenization`, in its order: no space before . ? ! , then " ' " -> "'", then no
    space before the contractions n't 'm 's 've 're."""
    text = re.sub(r" ([.?!,])", r"\1", text)
    text = text.replace(" ' ", "'")
    return re.sub(r" (n't|'m|'s|'ve|'re)", r"\1", text)


class ReferenceInternLM2Tokenizer:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        self.added = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
        extra = folder / "added_tokens.json"
        if extra.exists():
            self.added.update(json.loads(extra.read_text()))
        specials = json.loads((folder / "special_tokens_map.json").read_text())
        names = [specials[r]["content"] for r in ("bos_token", "eos_token", "unk_token", "pad_token")]
        names += specials["additional_special_tokens"]
        self.special_ids = {self.added[name] for name in names}
        # The release marks every added token special; the simple decode below relies on it.
        assert set(self.added.values()) == self.special_ids
        self.add_bos = config.get("add_bos_token", True)
        self.add_eos = config.get("add_eos_token", False)
        alternatives = sorted(self.added, key=len, reverse=True)
        self.splitter = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        for chunk in self.splitter.split(text):
            if chunk in self.added:
                ids.append(self.added[chunk])
            elif chunk:
                ids.extend(self.sp.encode(chunk))
        if add_special_tokens:
            ids = ([self.sp.bos_id()] if self.add_bos else []) + ids + ([self.sp.eos_id()] if self.add_eos else [])
        return ids

    def decode(self, ids: list[int]) -> str:
        """`decode(ids, skip_special_tokens=True)`."""
        return clean_up_tokenization(self.sp.decode([i for i in ids if i not in self.special_ids]))
