"""A word-level tokenizer for the tiny twins, built offline with the ``tokenizers`` library.

Words are split on whitespace and punctuation (``tokenizers``' ``Whitespace`` pre-tokenizer:
``\\w+|[^\\w\\s]+``); the vocabulary is the pieces of the given words (each word is
pre-tokenized the same way, so ``"object?"`` contributes ``object`` and ``?``), plus a few
punctuation marks and digits, after five special tokens with fixed ids: ``<pad>`` 0,
``<s>`` 1 (bos, prepended by the post-processor), ``</s>`` 2 (eos), ``<unk>`` 3, ``<image>`` 4.
The result is a ``PreTrainedTokenizerFast`` that saves and reloads through ``AutoTokenizer``.

``<image>`` is an added special token but deliberately *not* registered as the tokenizer's
``image_token`` attribute: ``Blip2Processor`` 5.24 crashes when that attribute is a string; the
processors find the token by its text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD, BOS, EOS, UNK, IMAGE = SPECIAL_TOKENS
EXTRA_PIECES = tuple(".,?!:;'\"()-/") + tuple("0123456789")


def build_tokenizer(words: Iterable[str], *, lowercase: bool = False) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (e.g. ``world.json["vocabulary"]``).

    ``lowercase`` adds a lowercasing normalizer (the vocabulary is lowercased too). The vocabulary
    order is deterministic (specials, then sorted pieces), so the same words give the same ids.
    """
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    pieces: set[str] = set(EXTRA_PIECES)
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"vocabulary entries must be strings, got {word!r}")
        text = word.lower() if lowercase else word
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    pieces.difference_update(SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *sorted(pieces)))}

    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
