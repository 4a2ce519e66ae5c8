"""Conversations (#28): chat records checked turn by turn, the assistant-only loss mask worked out by
hand, and templates rendered token for token as transformers' apply_chat_template renders them."""

from __future__ import annotations

import json

import pytest

from models.tokenizer import train_bpe_tokenizer
from rlhf.batching import collate_lm, encode_conversation
from rlhf.chat import DEFAULT_TEMPLATE, ROLE_TOKENS, chat_prompt, encode_dialogue, hh_messages
from rlhf.data import DataError, load_sft, write_jsonl
from rlhf.task import WORDS

DIALOGUE = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two plus two"},
            {"role": "assistant", "content": "four"}, {"role": "user", "content": "and three more"},
            {"role": "assistant", "content": "seven then"}]
TEXTS = ["be brief two plus two four and three more seven then hello there"] * 20

# Templates written here after the public ones of three model families (their turn markers, system
# handling and generation prompts), for tokenizers trained here: nothing is downloaded.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
          "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
FAMILIES = {
    "llama3": (LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "qwen2": (QWEN2, ("<|im_start|>", "<|im_end|>"), "<|im_end|>\n"),
    "mistral": (MISTRAL, ("<s>",), "<eos>"),
}


def family_tokenizer(name: str):
    template, special, _ = FAMILIES[name]
    tok = train_bpe_tokenizer(TEXTS, 300, special)
    tok.chat_template = template
    if name in ("llama3", "mistral"):
        tok.bos_token = special[0]
    return tok


def default_tokenizer():
    tok = train_bpe_tokenizer(TEXTS, 300, ROLE_TOKENS)
    tok.chat_template = DEFAULT_TEMPLATE
    return tok


def test_the_loss_covers_every_assistant_turn_and_its_end_of_turn_token_only():
    """By hand: the default template writes <|role|> text <eos> per turn; the loss covers the tokens of
    "four" and "seven then" and the <eos> after each, never the system or user turns or the role
    markers (the generation prompt <|assistant|> is the model's input, not its output)."""
    tok = default_tokenizer()
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    marker = {role: tok.convert_tokens_to_ids(f"<|{role}|>") for role in ("system", "user", "assistant")}
    eos = tok.eos_token_id
    pieces = [([marker["system"]] + ids("be brief") + [eos], False),
              ([marker["user"]] + ids("two plus two") + [eos], False),
              ([marker["assistant"]], False), (ids("four") + [eos], True),
              ([marker["user"]] + ids("and three more") + [eos], False),
              ([marker["assistant"]], False), (ids("seven then") + [eos], True)]
    want_ids = [i for piece, _ in pieces for i in piece]
    want_mask = [t for piece, t in pieces for _ in piece]
    got_ids, got_mask = encode_dialogue(tok, DIALOGUE)
    assert got_ids == want_ids and got_mask == want_mask
    assert got_ids == tok.apply_chat_template(DIALOGUE, tokenize=True)["input_ids"]

    e = encode_conversation(tok, DIALOGUE, max_len=128)
    assert e.response == ids("seven then") + [eos] and e.prompt == want_ids[:len(e.prompt)]
    batch = collate_lm([e], tok.pad_token_id)
    assert batch.loss_mask[0].tolist() == want_mask
    assert tok.decode(batch.input_ids[0][batch.loss_mask[0]]) == "four<eos>seven then<eos>"


def test_truncation_drops_the_oldest_turns_with_their_marks():
    tok = default_tokenizer()
    full = encode_conversation(tok, DIALOGUE, max_len=128)
    n = len(full.prompt) + len(full.response)
    cut = encode_conversation(tok, DIALOGUE, max_len=n - 3)
    assert cut.truncated and cut.response == full.response
    assert cut.prompt == full.prompt[3:] and cut.prompt_targets == full.prompt_targets[3:]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_templates_render_token_for_token_as_transformers_does(family):
    """Llama-3, Qwen2 and Mistral-style templates: the ids are apply_chat_template's, and the tokens the
    loss covers spell each assistant turn followed by the template's end of turn."""
    tok = family_tokenizer(family)
    dialogue = DIALOGUE[1:] if family == "mistral" else DIALOGUE  # its template refuses system turns
    ids, trained = encode_dialogue(tok, dialogue)
    assert ids == tok.apply_chat_template(dialogue, tokenize=True)["input_ids"]
    end = FAMILIES[family][2].replace("<eos>", tok.eos_token)
    covered = tok.decode([i for i, t in zip(ids, trained, strict=True) if t])
    assert covered == "four" + end + "seven then" + end
    first = trained.index(True)
    context = dialogue[:[m["role"] for m in dialogue].index("assistant")]
    assert tok.decode(ids[:first]) == tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)


def test_a_template_that_rewrites_earlier_turns_is_refused():
    from models.errors import InputError

    tok = default_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                         "{{ '<|assistant|>' }}{% else %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}"
                         "{% endif %}{% endfor %}")
    with pytest.raises(InputError, match="renders a turn differently once later turns follow it"):
        encode_dialogue(tok, DIALOGUE)


def test_chat_prompt_single_turn_and_hh_transcript():
    from models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(WORDS)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_prompt(tok, "copy : 1 =") == "<user>copy : 1 =</user><assistant>"
    transcript = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: sort : 2 1 =\n\nAssistant:"
    assert chat_prompt(tok, transcript) == ("<user>hi</user><assistant>hello</assistant>"
                                            "<user>sort : 2 1 =</user><assistant>")


def test_hh_transcripts_become_turns():
    text = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert hh_messages(text) == ({"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                                 {"role": "user", "content": "how are you?"})


def messages_file(tmp_path, *conversations, extra: list[dict] = ()):
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in conversations] + list(extra))


def test_chat_records_load_with_their_fields(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": DIALOGUE, "answer": 7}])
    [r] = load_sft(path)
    assert r.messages == tuple(DIALOGUE) and r.response == "seven then" and r.fields == {"answer": 7}
    assert r.where == f"{path}:1"


U, A = "user", "assistant"


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


BAD_CONVERSATIONS = {
    "unknown role": (turns((U, "hi"), ("bot", "yo")), r"chat\.jsonl:1: field 'messages\.1\.role': 'bot'; a role is "
                                                      r"one of system, user, assistant"),
    "no assistant turn": (turns((U, "hi")), r"chat\.jsonl:1: field 'messages': no assistant turn to learn"),
    "ends on a user turn": (turns((U, "hi"), (A, "yo"), (U, "and?")),
                            r"chat\.jsonl:1: field 'messages\.2': the conversation ends on a user turn"),
    "empty content": (turns((U, "hi"), (A, "  ")), r"chat\.jsonl:1: field 'messages\.1\.content': empty"),
    "content not text": ([{"role": U, "content": "hi"}, {"role": A, "content": ["yo"]}],
                         r"field 'messages\.1\.content': expected text, got a list"),
    "missing role": ([{"content": "hi"}], r"field 'messages\.0\.role': missing"),
    "system later": (turns((U, "hi"), ("system", "x"), (A, "yo")),
                     r"field 'messages\.1\.role': a system message comes first"),
    "two user turns": (turns((U, "hi"), (U, "again"), (A, "yo")),
                       r"field 'messages\.1\.role': 'user' after 'user'; user and assistant turns alternate"),
    "assistant first": (turns((A, "yo"), (U, "hi"), (A, "x")),
                        r"field 'messages\.0\.role': 'assistant' after the start"),
    "not a list": ("hi", r"field 'messages': expected a conversation, a non-empty list .* got text"),
    "empty list": ([], r"field 'messages': expected a conversation"),
}


@pytest.mark.parametrize("case", list(BAD_CONVERSATIONS))
def test_bad_conversations_are_named(tmp_path, case):
    conversation, message = BAD_CONVERSATIONS[case]
    with pytest.raises(DataError, match=message):
        load_sft(messages_file(tmp_path, conversation))


def test_a_file_holds_one_kind_of_record(tmp_path):
    path = messages_file(tmp_path, DIALOGUE, extra=[{"prompt": "a", "response": "b"}])
    with pytest.raises(DataError, match=r"chat\.jsonl:2: a 'prompt'/'response' record, in a file whose first record "
                                        r"\(.*chat\.jsonl:1\) is a conversation"):
        load_sft(path)
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"messages": DIALOGUE}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:2: a conversation \('messages'\), in a file whose first"):
        load_sft(path)


CONTEXT = turns((U, "keep 7"), (A, "kept"), (U, "what was it ?"))


def reply(text):
    return [{"role": A, "content": text}]


def test_chat_comparisons_in_every_form_and_prompts(tmp_path):
    from rlhf.data import load_comparisons, load_prompts

    rows = [{"prompt": CONTEXT, "responses": [reply("7"), reply("8"), reply("kept")]},
            {"prompt": CONTEXT, "chosen": reply("7"), "rejected": reply("9")},
            {"chosen": CONTEXT + reply("7"), "rejected": CONTEXT + reply("6")}]
    got = load_comparisons(write_jsonl(tmp_path / "c.jsonl", rows))
    assert [c.responses for c in got] == [("7", "8", "kept"), ("7", "9"), ("7", "6")]
    assert all(c.context == tuple(CONTEXT) for c in got)
    prompts = load_prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": CONTEXT, "answer": 7}]))
    assert prompts[0].judged == CONTEXT and prompts[0].fields == {"answer": 7}
    assert load_prompts(tmp_path / "c.jsonl")[2].messages == tuple(CONTEXT)  # comparisons serve as prompts


def test_chat_comparisons_rendered_reply_after_its_conversation():
    """A reply is encoded as the template renders it after its conversation (end of turn included, no
    EOS appended), the conversation as the prompt."""
    from rlhf.batching import encode_response
    from rlhf.data import Comparison

    tok = default_tokenizer()
    c = Comparison("x", ("7", "8"), tuple(CONTEXT))
    e = encode_response(tok, c, "7", 64)
    assert e.prompt == tok(tok.apply_chat_template(CONTEXT, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    assert e.response == tok("7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert e.prompt_targets is None


BAD_CHAT_COMPARISONS = {
    "differ before the reply": ({"chosen": CONTEXT + reply("7"), "rejected": turns((U, "keep 8"), (A, "kept"),
                                                                                   (U, "what was it ?"), (A, "8"))},
                                r"c\.jsonl:1: field 'rejected\.0': differs from 'chosen' before the reply"),
    "reply not one assistant message": ({"prompt": CONTEXT, "chosen": reply("7") * 2, "rejected": reply("8")},
                                        r"field 'chosen': expected the reply as a list of one assistant message"),
    "prompt ending on the assistant": ({"prompt": CONTEXT[:2], "chosen": reply("7"), "rejected": reply("8")},
                                       r"field 'prompt\.1': the prompt ends on an assistant turn"),
    "the same reply twice": ({"prompt": CONTEXT, "responses": [reply("7"), reply("7 ")]},
                             r"c\.jsonl:1: reply 2 has the same text as an earlier one"),
    "one reply": ({"prompt": CONTEXT, "responses": [reply("7")]}, r"field 'responses': expected K >= 2 replies"),
    "empty reply": ({"prompt": CONTEXT, "chosen": reply(""), "rejected": reply("8")},
                    r"field 'chosen\.0\.content': empty"),
}


@pytest.mark.parametrize("case", list(BAD_CHAT_COMPARISONS))
def test_bad_chat_comparisons_are_named(tmp_path, case):
    from rlhf.data import load_comparisons

    row, message = BAD_CHAT_COMPARISONS[case]
    with pytest.raises(DataError, match=message):
        load_comparisons(write_jsonl(tmp_path / "c.jsonl", [row]))


def test_samples_stop_where_the_templates_turn_ends():
    """The end of turn, found by rendering; where it is not the EOS (Qwen2-style: <|im_end|>), it becomes
    the EOS and the rendering is unchanged; a template that writes both is refused, its EOS kept."""
    from models.errors import InputError
    from rlhf.chat import stop_at_turn_end, turn_end

    assert turn_end(default_tokenizer()) == "<eos>" and turn_end(family_tokenizer("llama3")) == "<|eot_id|>"
    tok = family_tokenizer("qwen2")
    before = tok.apply_chat_template(DIALOGUE, tokenize=False)
    assert stop_at_turn_end(tok) == "<eos>"
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.apply_chat_template(DIALOGUE, tokenize=False) == before
    assert stop_at_turn_end(default_tokenizer()) is None
    both = family_tokenizer("qwen2")
    both.chat_template = QWEN2.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + eos_token")
    with pytest.raises(InputError, match=r"turn with '<\|im_end\|>' and also writes the tokenizer's EOS"):
        stop_at_turn_end(both)
    assert both.eos_token == "<eos>"
