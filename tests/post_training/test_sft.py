"""SFT pieces that do not need a prepared dataset: the chat template, the prompt mask of the loss, the
exact-match metric, vocabulary growth for the chat tokens, ``generate --chat``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_command
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_llm.chat import (
    CHAT_TOKENS,
    IGNORE_INDEX,
    ChatFormatError,
    chat_tokenizer,
    check_messages,
    parse,
    prompt_ids,
    render,
)
from lightning_llm.config import GPTConfig
from lightning_llm.data.tokenizer import Tokenizer, gpt2_tokenizer
from lightning_llm.model import GPT
from lightning_llm.warm_start import WarmStartError, check_tokenizer, grow_vocab

GPT2 = gpt2_tokenizer()
CHAT = chat_tokenizer(GPT2)

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["<|user|>", "<|end|>", "<|endoftext|>", " <|assistant|> hi", ""]
)
reply = text.filter(lambda s: bool(s.strip()))


@settings(max_examples=60, deadline=None)
@given(system=st.none() | text, turns=st.lists(st.tuples(text, reply), min_size=1, max_size=3))
def test_template_round_trips_and_masks_all_but_the_replies(system, turns) -> None:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    r = render(CHAT, messages)
    end = CHAT.extra_special["<|end|>"]
    assert parse(CHAT, [*r.ids, r.labels[-1]]) == messages  # render -> ids -> parse
    assert r.labels[-1] == end
    # the trained tokens are exactly each reply's ids and its <|end|>
    trained = [t for t in r.labels if t != IGNORE_INDEX]
    assert trained == [t for _, a in turns for t in [*CHAT.encode(a), end]]
    # text never becomes a special token: only the template puts them there
    specials = set(CHAT.special_tokens.values())
    n_special = sum(t in specials for t in [*r.ids, r.labels[-1]])
    assert n_special == 1 + 2 * len(messages)
    assert prompt_ids(CHAT, messages[:-1])[-1] == CHAT.extra_special["<|assistant|>"]


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([], "non-empty list"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "bot", "content": "x"}], "role 'bot'"),
        ([{"role": "assistant", "content": "x"}], "expected"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "empty assistant"),
        ([{"role": "user", "content": 3}], "not a string"),
    ],
)
def test_bad_conversations_say_what_is_wrong(messages, says) -> None:
    with pytest.raises(ChatFormatError, match=says):
        check_messages(messages)


def test_a_training_conversation_ends_with_a_reply_and_a_prompt_with_a_user_turn() -> None:
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatFormatError, match="end with an assistant"):
        render(CHAT, user)
    with pytest.raises(ChatFormatError, match="end with a user"):
        prompt_ids(CHAT, [*user, {"role": "assistant", "content": "yo"}])
    with pytest.raises(ChatFormatError, match="no chat tokens"):
        prompt_ids(GPT2, user)


def test_chat_tokens_come_after_every_id_and_keep_the_text_ids() -> None:
    assert sorted(CHAT.extra_special.values()) == list(range(50257, 50257 + len(CHAT_TOKENS)))
    assert CHAT.encode("Hello <|user|> world") == GPT2.encode("Hello <|user|> world")
    assert CHAT.base().fingerprint() == GPT2.fingerprint() != CHAT.fingerprint()
    assert Tokenizer.from_dict(CHAT.to_dict()).fingerprint() == CHAT.fingerprint()
    assert chat_tokenizer(CHAT) is CHAT


def _tiny(vocab: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)
    return GPT(cfg, device_type="cpu", dtype=torch.float64).double()


def test_prompt_tokens_get_exactly_zero_gradient() -> None:
    """The fused loss with -100 on the prompt: no gradient reaches the head from prompt positions, and the
    head's gradient equals an fp64 cross-entropy over the reply positions alone."""
    model = _tiny()
    x = torch.randint(0, 64, (3, 12))
    y = torch.randint(0, 64, (3, 12))
    y[:, :7] = IGNORE_INDEX  # prompt
    y[1, 7:9] = IGNORE_INDEX  # a longer prompt in one row
    hidden = {}

    def keep(module, inputs, out):
        out.retain_grad()
        hidden["h"] = out

    model.norm_f.register_forward_hook(keep)
    loss = model(x, y)
    loss.backward()
    grad_h = hidden["h"].grad
    prompt = y == IGNORE_INDEX
    assert torch.count_nonzero(grad_h[prompt]) == 0
    assert bool((grad_h[~prompt].abs().sum(-1) > 0).all())
    fused_head_grad = model.lm_head.weight.grad.clone()

    model.zero_grad()
    h = model.hidden_states(x)
    ref = F.cross_entropy(model.lm_head(h)[~prompt], y[~prompt])  # fp64, reply positions only
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)  # the fused softmax runs in fp32
    torch.testing.assert_close(fused_head_grad, model.lm_head.weight.grad, rtol=1e-5, atol=1e-6)


def test_exact_match_is_greedy_decoding_reproducing_the_reply() -> None:
    """The validation metric (teacher-forced argmax on every reply token) agrees with actual generation."""
    from lightning_llm.module import LitGPT

    model = _tiny(seed=3).float().eval()
    prompt = torch.tensor([[5, 9, 2, 7]])
    greedy = model.generate(prompt, 6, temperature=0.0)  # (1, 10)
    x = greedy[:, :-1]
    labels = greedy[:, 1:].clone()
    labels[:, : prompt.shape[1] - 1] = IGNORE_INDEX
    wrong = labels.clone()
    wrong[0, -2] = (wrong[0, -2] + 1) % 64  # one reply token differs from the greedy one
    lit = LitGPT(model.config)
    lit.model = model
    lit.validation_step({"input_ids": torch.cat([x, x]), "labels": torch.cat([labels, wrong])}, 0)
    assert lit.val_exact.compute().item() == 0.5  # the greedy reply matches, the altered one does not


def _state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"wte.weight": torch.randn(vocab, 4), "lm_head.weight": torch.randn(vocab, 4)}


def test_chat_tokens_grow_the_vocabulary_with_mean_rows_and_keep_the_text_rows() -> None:
    new_ids = check_tokenizer(GPT2.to_dict(), CHAT, "base.ckpt")
    assert new_ids == list(range(50257, 50261))
    state = _state(50304)  # GPT-2's vocabulary padded to a multiple of 64: room for the new ids
    old = {k: v.clone() for k, v in state.items()}
    assert grow_vocab(state, 50304, new_ids) == 4
    for key, w in state.items():
        mean = old[key][[i for i in range(50304) if i not in new_ids]].mean(0)
        torch.testing.assert_close(w[new_ids], mean.expand(4, -1))
        torch.testing.assert_close(w[:50257], old[key][:50257])
    small = _state(50257)  # no padding: the table grows
    grow_vocab(small, 50304, new_ids)
    assert small["wte.weight"].shape == (50304, 4)
    assert check_tokenizer(CHAT.to_dict(), CHAT, "sft.ckpt") == []  # SFT checkpoint on chat data


def test_a_different_base_tokenizer_is_still_refused() -> None:
    other = Tokenizer("bpe-300", {bytes([i]): i for i in range(256)}).with_special_tokens(CHAT_TOKENS)
    with pytest.raises(WarmStartError, match="same ids would mean different text"):
        check_tokenizer(GPT2.to_dict(), other, "base.ckpt")


@pytest.fixture(scope="module")
def chat_ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real checkpoint whose tokenizer has the chat tokens (rows grown as init_weights grows them)."""
    from test_generate_cli import train_tiny_checkpoint

    out = tmp_path_factory.mktemp("chat_ckpt")
    path = train_tiny_checkpoint(tiny_dataset, out, attention="sdpa")
    ckpt = torch.load(path, weights_only=True)
    base = Tokenizer.from_dict(ckpt["tokenizer"])
    chat = chat_tokenizer(base)
    vocab = (chat.vocab_size + 63) // 64 * 64
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    grow_vocab(state, vocab, check_tokenizer(ckpt["tokenizer"], chat, str(path)))
    state["lm_head.weight"] = state["wte.weight"]
    ckpt["state_dict"] = {f"model.{k}": v for k, v in state.items()}
    ckpt["model_config"]["vocab_size"] = vocab
    ckpt["tokenizer"] = chat.to_dict()
    torch.save(ckpt, out / "chat.ckpt")
    return out / "chat.ckpt"


def test_generate_chat_renders_the_template_and_stops_at_the_end_of_the_turn(chat_ckpt: Path, capsys) -> None:
    from lightning_llm.cli.generate import load_checkpoint

    code, out, err = run_command(
        capsys, "generate", "--ckpt_path", str(chat_ckpt), "--chat", "--prompt", "Who speaks?",
        "--temperature", "0", "--max_new_tokens", "8",
    )  # fmt: skip
    assert code is None, err
    model, tok = load_checkpoint(chat_ckpt)
    ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": "Who speaks?"}])])
    end = tok.extra_special["<|end|>"]
    new = model.generate(ids, 8, temperature=0.0)[0, ids.shape[1] :].tolist()
    reply = new[: new.index(end)] if end in new else new
    reply = reply[: reply.index(tok.eot_id)] if tok.eot_id in reply else reply
    assert out.strip() == tok.decode(reply).strip()
    assert "Who speaks?" not in out  # the reply only, not the rendered prompt


def test_generate_chat_on_a_model_without_chat_tokens_says_so(
    tiny_dataset: Path, chat_ckpt: Path, capsys
) -> None:
    plain = chat_ckpt.parent / "last.ckpt"
    code, _, _ = run_command(capsys, "generate", "--ckpt_path", str(plain), "--chat", "--prompt", "hi")
    assert code is not None and "no chat tokens" in code and "lightning-llm sft" in code
    code, _, _ = run_command(capsys, "generate", "--ckpt_path", str(plain), "--system", "x", "--prompt", "hi")
    assert code is not None and "--system is a chat message" in code


@pytest.mark.parametrize("tied", [True, False])
def test_freeze_embeddings_keeps_them_and_trains_the_rest(tied: bool) -> None:
    from lightning_llm.module import LitGPT

    cfg = GPTConfig(
        vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False, tie_embeddings=tied
    )
    lit = LitGPT(cfg, freeze_embeddings=True)
    lit.configure_model()
    model = lit.model
    head = model.lm_head.weight.detach().clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(lit.param_groups(), lr=1e-2)
    batch = {"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}
    lit.training_step(batch, 0).backward()
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["wte.weight"], before["wte.weight"]) and model.wte.weight.grad is None
    head_same = torch.equal(model.lm_head.weight, head)
    assert head_same == tied  # a tied head is the embedding; an untied one trains
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
