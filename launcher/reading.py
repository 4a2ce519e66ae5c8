"""What the model reads, checked at launch: the run's tokenizer (the user's, a pretrained model's, a BPE
trained on the data, or the embedded task's words), text it does not know, the chat template that
renders conversations and prompts, and prompts longer than their budget. Called by preflight.py's
`check_inputs`; `inputs` is its Inputs.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from launcher.config import Config, ConfigError
from models.errors import InputError
from models.tokenizer import build_word_tokenizer, load_tokenizer, train_bpe_tokenizer
from rlhf.chat import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATE_NAME,
    ROLE_TOKENS,
    assistant_spans,
    chat_prompt,
    render_prompts,
    stop_at_turn_end,
)
from rlhf.data import DataConfig, DataError, load_sft, load_text
from rlhf.files import is_record_file
from rlhf.task import WORDS

log = logging.getLogger("instructrl")

PTX_BPE_CHARS = 200_000  # characters of the pretraining text a trained BPE sees, beside the task's data
MAX_UNKNOWN = 0.05  # share of <unk> tokens in a data file above which its text is not the tokenizer's


def mix_lines(path: str, data: DataConfig, max_chars: int) -> list[str]:
    """The lines of the policy's mix (ppo.ptx_data) its tokenizer must read: a demonstrations file's prompts and
    responses, or plain text's first `max_chars` characters."""
    if is_record_file(path):
        return [f"{r.prompt} {r.response}" for r in load_sft(path, data)]
    return load_text(path)[:max_chars].splitlines()


def build_tokenizer(cfg: Config, inputs):
    """The run's tokenizer, in memory: the user's, the pretrained model's, a BPE trained on the data
    (or the one an earlier stage of this run trained), or the embedded task's words; with a chat
    template when the run reads conversations."""
    saved = cfg.run.dir / "tokenizer"
    conversations = [(r.where, r.messages) for part in inputs.sft or () for r in part if r.messages]
    conversations += [(c.where, (*c.context, {"role": "assistant", "content": reply}))
                      for part in inputs.rm or () for c in part if c.context is not None for reply in c.responses]
    conversations += [(p.where, p.messages) for name in ("prompts", "eval_prompts", "select_prompts", "label_pool")
                      for p in getattr(inputs, name) or () if p.messages is not None]
    if cfg.model.tokenizer or cfg.model.pretrained:
        source = cfg.model.tokenizer or cfg.model.pretrained
        return with_chat_template(load_tokenizer(source), conversations, source)
    if cfg.model.bpe_vocab and (saved / "tokenizer.json").exists() and not cfg.run.overwrite:
        return with_chat_template(load_tokenizer(saved), conversations, str(saved))
    if not cfg.model.bpe_vocab:
        return build_word_tokenizer(WORDS)
    texts = [r.prompt + r.response for r in inputs.sft[0]] if inputs.sft else []
    texts += [c.prompt + r for c in (inputs.rm[0] if inputs.rm else []) for r in c.responses]
    texts += [p.text for p in inputs.prompts or []]
    if cfg.ppo.ptx_coef and cfg.ppo.ptx_data:  # the pretraining mix is text the policy reads too
        texts += mix_lines(cfg.ppo.ptx_data, cfg.data, PTX_BPE_CHARS)
    if not texts:
        raise ConfigError("model.bpe_vocab: a BPE is trained on the run's data, and this command reads none; "
                          "run `instructrl sft` first (it saves the tokenizer) or set model.tokenizer")
    if not conversations:
        return train_bpe_tokenizer(texts, cfg.model.bpe_vocab)
    # the default template's role markers are tokens of their own, never split or merged with text
    tok = train_bpe_tokenizer(texts, cfg.model.bpe_vocab, ROLE_TOKENS)
    return with_chat_template(tok, conversations, "trained on this run's data")


def with_chat_template(tok, conversations: list[tuple[str, tuple]], source: str):
    """Conversations are read through a chat template: the tokenizer's own, or instructrl's default
    (rlhf/chat.py) where it has none. Every one is rendered here, so a template that refuses one, or
    renders turns inconsistently, fails at launch, naming the record."""
    if not conversations:
        return tok
    if not getattr(tok, "chat_template", None):
        log.info("the tokenizer (%s) has no chat template: conversations use instructrl's default '%s'",
                 source, DEFAULT_TEMPLATE_NAME)
        tok.chat_template = DEFAULT_TEMPLATE
    for where, messages in conversations:
        try:
            assistant_spans(tok, messages)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
    return tok


def check_text(cfg: Config, tok, sources: dict, inputs) -> None:
    """Text the tokenizer does not know comes out as <unk> and trains nothing: refuse it."""
    unk = tok.unk_token_id
    if unk is None:
        return
    sets = {"sft_train": [r.prompt + " " + r.response for r in inputs.sft[0]] if inputs.sft else [],
            "comparisons_train": [c.prompt + " " + c.responses[0] for c in inputs.rm[0]] if inputs.rm else [],
            "ppo_train": [p.text for p in inputs.prompts or []], "ppo_eval": [p.text for p in inputs.eval_prompts]}
    if cfg.ppo.ptx_coef and cfg.ppo.ptx_data:
        sources = {**sources, "ptx": cfg.ppo.ptx_data}
        sets["ptx"] = mix_lines(cfg.ppo.ptx_data, cfg.data, 100_000)
    for key, texts in sets.items():
        ids = [i for t in texts[:1000] for i in tok(t, add_special_tokens=False)["input_ids"]]
        share = sum(i == unk for i in ids) / max(1, len(ids))
        if share > MAX_UNKNOWN:
            raise DataError(f"{sources[key] if not isinstance(sources[key], list) else key}: {share:.0%} of its "
                            f"tokens are unknown to the tokenizer ({tok.unk_token}); the text is not what the "
                            f"tokenizer was made for. Set model.pretrained or model.tokenizer to one that knows it, "
                            f"or model.bpe_vocab to train one on your data.")


def apply_chat_template(cfg: Config, inputs) -> None:
    """Every prompt the policy reads as the template renders it: a conversation always (with the
    generation prompt), a text prompt under data.chat_template (as a user turn)."""
    tok = inputs.tok
    sets = ("prompts", "eval_prompts", "select_prompts", "label_pool")
    if any(p.messages is not None for name in sets for p in getattr(inputs, name) or ()):
        check_turn_end(tok)
    for name in sets:
        if getattr(inputs, name):
            setattr(inputs, name, render_prompts(tok, getattr(inputs, name)))
    if not cfg.data.chat_template:
        return
    if not getattr(tok, "chat_template", None):
        source = cfg.model.tokenizer or cfg.model.pretrained or "built for this run"
        raise ConfigError(f"data.chat_template=true, but the tokenizer ({source}) has no chat template; give a "
                          f"tokenizer with one, or set data.chat_template=false")
    if inputs.sft:  # conversations are rendered whole by the template already (rlhf/chat.py)
        inputs.sft = tuple([r if r.messages else r.model_copy(update={"prompt": chat_prompt(tok, r.prompt)})
                            for r in part] for part in inputs.sft)
    if inputs.rm:
        inputs.rm = tuple([c if c.context is not None else replace(c, prompt=chat_prompt(tok, c.prompt))
                           for c in part] for part in inputs.rm)
    for name in sets:
        if getattr(inputs, name):
            setattr(inputs, name, [p if p.messages is not None else replace(p, query=chat_prompt(tok, p.text))
                                   for p in getattr(inputs, name)])


def warn_long_prompts(cfg: Config, stages: tuple[str, ...], inputs) -> None:
    """Prompts longer than the prompt budget lose their oldest tokens when sampled: for a conversation,
    its first turns, which the reply may depend on. Said once per set, with the longest."""
    sets = [("ppo.prompts", inputs.prompts or [], cfg.ppo.max_prompt_len, "ppo.max_prompt_len")]
    if {"sft", "ppo", "dpo"} & set(stages):
        sets.append(("the evaluation prompts", inputs.eval_prompts, cfg.evaluation.max_prompt_len,
                     "evaluation.max_prompt_len"))
    for name, prompts, budget, key in sets:
        lengths = [len(inputs.tok(p.model_text, add_special_tokens=False)["input_ids"]) for p in prompts]
        over = sum(n > budget for n in lengths)
        if over:
            log.warning("%s: %d of %d prompts are longer than %s = %d tokens (the longest %d); their oldest tokens "
                        "are cut when the policy reads them", name, over, len(lengths), key, budget, max(lengths))


def check_turn_end(tok) -> None:
    """Samples stop at the tokenizer's EOS: where the template ends a turn with another token, that
    token becomes the run's EOS (rlhf/chat.py)."""
    old = stop_at_turn_end(tok)
    if old is not None:
        log.info("samples stop at the chat template's end of turn %r: it is this run's EOS (the tokenizer's was %r)",
                 tok.eos_token, old)
