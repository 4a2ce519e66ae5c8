"""Tokenizers: any local transformers tokenizer directory, or a small word-level one built offline.

Nothing here downloads: loading is `local_files_only`. Must not import torch.distributed,
deepspeed, megatron or ray.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from models.errors import InputError

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer over a fixed vocabulary.

    Ids: <pad>=0, <eos>=1, <unk>=2, then `words` in order, so the same word list always gives the
    same ids (the embedded task relies on this to be reproducible without any file).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # prompts are left-padded for generation
    return tok


def train_bpe_tokenizer(texts: list[str], vocab_size: int,
                        extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on local text, for data sets that come
    without a tokenizer and a machine that cannot download one. Deterministic for the same texts.
    `extra_special`: tokens never split (a chat template's role markers), after <pad>, <eos>, <unk>."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS.values(), *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS,
                                  **({"additional_special_tokens": list(extra_special)} if extra_special else {}))
    tok.padding_side = "left"
    return tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved with `save_pretrained`, from disk only. Ensures a pad token (EOS if none)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: tokenizer directory {'is not a directory' if path.exists() else 'not found'}")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise InputError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, ...); "
                         f"save one with tokenizer.save_pretrained({str(path)!r})")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers and tokenizers raise many types for one cause: unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: the tokenizer cannot be loaded ({type(e).__name__}: {first}); the files are "
                         f"damaged or from an unsupported tokenizer") from None
    if tok.eos_token is None or tok.eos_token_id is None:
        raise InputError(f"{path}: the tokenizer has no EOS token, so a response could never end; set "
                         f"eos_token in its tokenizer_config.json (or special_tokens_map.json)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
