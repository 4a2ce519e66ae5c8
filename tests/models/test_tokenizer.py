"""Tokenizers: the embedded word tokenizer round-trips through a transformers tokenizer directory."""

from __future__ import annotations

import pytest

from models.errors import InputError
from models.tokenizer import build_word_tokenizer, load_tokenizer, train_bpe_tokenizer
from rlhf.task import WORDS


def test_word_tokenizer_round_trip(tmp_path):
    tok = build_word_tokenizer(WORDS)
    ids = tok("reverse : 3 1 4 =", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 6
    assert tok.decode(ids) == "reverse : 3 1 4 ="
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again("reverse : 3 1 4 =", add_special_tokens=False)["input_ids"] == ids
    assert again.padding_side == "left" and again.pad_token_id == 0


def test_bad_tokenizer_directories_are_named(tmp_path):
    with pytest.raises(InputError, match=r"nope: tokenizer directory not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    build_word_tokenizer(WORDS).save_pretrained(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(InputError, match=r"corrupt: the tokenizer cannot be loaded"):
        load_tokenizer(tmp_path / "corrupt")
    tok = build_word_tokenizer(WORDS)
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "no-eos")
    with pytest.raises(InputError, match=r"no-eos: the tokenizer has no EOS token, so a response could never end"):
        load_tokenizer(tmp_path / "no-eos")


def test_bpe_tokenizer_trained_locally_round_trips(tmp_path):
    texts = ["\n\nHuman: how do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast."] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == texts[0] and len(ids) < len(texts[0]) / 2
    assert tok("ünïcode ✓", add_special_tokens=False)["input_ids"]  # bytes never fall out of the vocabulary
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)(texts[0], add_special_tokens=False)["input_ids"] == ids
