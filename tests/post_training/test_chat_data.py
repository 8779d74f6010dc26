"""Post-training data: JSONL records → prepare-sft / prepare-dpo → shards → ChatDataModule / PreferenceDataModule.

Covers every kind of bad record (error naming file:line, output directory untouched), the template round trip
through the data path, labels and padding, the preference batch layout, exact resume, reuse / refusal of a
prepared directory, the builtin classics sets and the CLI. Offline: the tokenizer is ``tiny_dataset``'s BPE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from cli_runner import run_command
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_llm.chat import END_TOKEN, IGNORE_INDEX, ROLE_TOKENS, chat_tokenizer, parse
from lightning_llm.cli.prepare_chat import DPOPrepareConfig, SFTPrepareConfig
from lightning_llm.data.chat_datamodule import ChatCollate, ChatDataModule, PreferenceDataModule
from lightning_llm.data.chat_prepare import base_tokenizer, prepare_chat
from lightning_llm.data.chat_records import ChatRecordError, alpaca_messages, sft_messages
from lightning_llm.data.classics_tasks import TESTAMENTS, WORKS, generate_instructions, generate_preferences
from lightning_llm.data.errors import ConfigError, DataError, DatasetDamaged, PrepareError
from lightning_llm.data.layout import LOCK_FILE, MARKER
from lightning_llm.data.tokenizer import Tokenizer
from lightning_llm.module import TokenData


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


CONVERSATIONS = [
    [user("Who wrote Hamlet?"), bot("Shakespeare")],
    [
        {"role": "system", "content": "Answer briefly."},
        user("Two and two?"),
        bot("Four."),
        user("And three?"),
        bot("Five."),
    ],
    [user("Say <|assistant|> and <|endoftext|> literally"), bot("<|assistant|> <|endoftext|>")],
    [user("Ünïcödé — ok?"), bot("Oui, très bien ✓")],
    *[[user(f"Question {i}?"), bot(f"Answer {i}.")] for i in range(20)],
]
PAIRS = [
    {"prompt": f"Continue line {i}:", "chosen": f"the true line {i}", "rejected": f"a wrong line, number {i}"}
    for i in range(30)
] + [
    {
        "prompt": [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Hello."), user("Which work?")],
        "chosen": [bot("The Bible")],
        "rejected": "Milton",
    }
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def tok_dir(tiny_dataset: Path) -> str:
    return str(tiny_dataset)


@pytest.fixture(scope="module")
def chat_tok(tiny_dataset: Path) -> Tokenizer:
    return chat_tokenizer(Tokenizer.load(tiny_dataset / "tokenizer"))


def prep(kind: str, source: Path | str, out: Path, tok_dir: str, **kw: Any) -> Path:
    config = SFTPrepareConfig if kind == "sft" else DPOPrepareConfig
    return prepare_chat(config(source=str(source), output_dir=str(out), tokenizer=tok_dir, **kw))


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory, tok_dir: str) -> Path:
    tmp = tmp_path_factory.mktemp("sft")
    train = write_jsonl(tmp / "train.jsonl", [{"messages": c} for c in CONVERSATIONS])
    val = write_jsonl(tmp / "val.jsonl", [{"instruction": "Name a poet.", "input": "", "output": "Milton"}])
    return prep("sft", train, tmp / "out", tok_dir, val_source=str(val))


@pytest.fixture(scope="module")
def dpo_dir(tmp_path_factory: pytest.TempPathFactory, tok_dir: str) -> Path:
    tmp = tmp_path_factory.mktemp("dpo")
    return prep("dpo", write_jsonl(tmp / "pairs.jsonl", PAIRS), tmp / "out", tok_dir, val_fraction=0.2)


# -- bad records ------------------------------------------------------------------------------------------
GOOD_SFT = json.dumps({"messages": [user("a"), bot("b")]})
GOOD_DPO = json.dumps({"prompt": "p", "chosen": "yes", "rejected": "no"})
BAD = [
    ("sft", '{"messages": [', "invalid JSON"),
    ("sft", "[1, 2]", "JSON list, not an object"),
    ("sft", '{"prompt": "x"}', "neither 'messages' nor Alpaca"),
    ("sft", json.dumps({"messages": "hello"}), "must be a non-empty list"),
    ("sft", json.dumps({"messages": [user("a"), {"role": "assistant", "content": 5}]}), "int content"),
    ("sft", json.dumps({"messages": [user("a"), {"role": "bot", "content": "b"}]}), "role 'bot'"),
    ("sft", json.dumps({"messages": [bot("a"), user("b")]}), "where the user was expected"),
    ("sft", json.dumps({"messages": [user("a"), bot("b"), user("c")]}), "ends with a user message"),
    ("sft", json.dumps({"messages": [user("a"), bot("  ")]}), "empty assistant reply"),
    ("sft", json.dumps({"instruction": "do it"}), "missing field 'output'"),
    ("sft", json.dumps({"instruction": "do it", "input": 3, "output": "ok"}), "'input' must be a string"),
    ("sft", json.dumps({"instruction": "do it", "output": ""}), "'output' is empty"),
    (
        "sft",
        json.dumps({"messages": [user("word " * 200), bot("b")]}),
        r"renders to \d+ tokens.*--block_size 64",
    ),
    ("dpo", json.dumps({"prompt": "p", "rejected": "no"}), "missing field 'chosen'"),
    ("dpo", json.dumps({"prompt": 1, "chosen": "a", "rejected": "b"}), "'prompt' must be a string or a list"),
    (
        "dpo",
        json.dumps({"prompt": [user("a"), bot("b")], "chosen": "a", "rejected": "b"}),
        "ends with an assistant message",
    ),
    ("dpo", json.dumps({"prompt": "p", "chosen": [bot("a"), bot("b")], "rejected": "c"}), "list of 2 items"),
    ("dpo", json.dumps({"prompt": "p", "chosen": 7, "rejected": "c"}), "must be a string"),
    ("dpo", json.dumps({"prompt": "p", "chosen": "a", "rejected": " "}), "rejected reply is empty"),
    ("dpo", json.dumps({"prompt": "p", "chosen": "same", "rejected": "same "}), "the same text"),
    (
        "dpo",
        json.dumps({"prompt": "word " * 200, "chosen": "a", "rejected": "b"}),
        r"the prompt alone is \d+",
    ),
]


@pytest.mark.parametrize(("kind", "line", "problem"), BAD, ids=[f"{k}-{p[:24]}" for k, _, p in BAD])
def test_bad_record_names_file_and_line_and_writes_nothing(tmp_path, tok_dir, kind, line, problem):
    good = GOOD_SFT if kind == "sft" else GOOD_DPO
    src = write_jsonl(tmp_path / "data.jsonl", [good, good, "", line, good])
    out = tmp_path / "out"
    with pytest.raises(ChatRecordError, match=re.escape(f"{src}:4: ")) as err:
        prep(kind, src, out, tok_dir, block_size=64)
    assert re.search(problem, str(err.value)), str(err.value)
    assert isinstance(err.value, DataError)
    assert not out.exists()  # nothing created, not even the lock


def test_bad_record_leaves_a_prepared_directory_untouched(tmp_path, tok_dir):
    out = prep("sft", write_jsonl(tmp_path / "a.jsonl", [GOOD_SFT] * 3), tmp_path / "out", tok_dir)
    files = lambda: {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_FILE}  # noqa: E731
    before = files()
    bad = write_jsonl(tmp_path / "b.jsonl", [GOOD_SFT, "{oops"])
    with pytest.raises(ChatRecordError, match=f"{re.escape(str(bad))}:2: invalid JSON"):
        prep("sft", bad, out, tok_dir, overwrite=True)
    assert files() == before  # the lock file records who ran last; nothing else changed


def test_alpaca_records_become_conversations():
    assert alpaca_messages({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "f:1") == [
        user("Translate\n\nbonjour"),
        bot("hello"),
    ]
    for no_input in ({}, {"input": ""}, {"input": "  "}, {"input": None}):
        record = {"instruction": "Name a poet.", "output": "Milton", **no_input}
        assert sft_messages(record, "auto", "f:1") == [user("Name a poet."), bot("Milton")]
    with pytest.raises(ChatRecordError, match="f:3: missing field 'messages'"):
        sft_messages({"instruction": "x", "output": "y"}, "messages", "f:3")


# -- the template through the data path ---------------------------------------------------------------------
def rows_of(loader) -> list[tuple[list[int], list[int]]]:
    return [
        (ids.tolist(), lab.tolist())
        for b in loader
        for ids, lab in zip(b["input_ids"], b["labels"], strict=True)
    ]


def check_labels(tok: Tokenizer, ids: list[int], labels: list[int]) -> None:
    """labels[t] = ids[t + 1] exactly where that token is the assistant's text or the <|end|> closing it."""
    special = tok.extra_special
    end, assistant = special[END_TOKEN], special[ROLE_TOKENS["assistant"]]
    length = (
        max(t for t, x in enumerate(labels) if x != IGNORE_INDEX) + 1
    )  # the last label is the final <|end|>
    assert labels[length - 1] == end
    full = ids[:length] + [end]
    in_reply = False
    for t in range(len(labels)):
        if t >= length:  # padding
            assert labels[t] == IGNORE_INDEX and ids[t] == tok.eot_id
            continue
        nxt = full[t + 1]
        if full[t] == assistant:
            in_reply = True
        trained = in_reply and nxt not in (assistant, special[ROLE_TOKENS["user"]])
        assert labels[t] == (nxt if trained else IGNORE_INDEX), (t, labels[t], nxt)
        if nxt == end:
            in_reply = False


def test_conversations_round_trip_through_the_shards(sft_dir, chat_tok):
    dm = ChatDataModule(str(sft_dir), batch_size=5, shuffle=False, drop_last=False)
    assert isinstance(dm, TokenData) and dm.vocab_size == chat_tok.vocab_size
    assert dm.tokenizer.fingerprint() == chat_tok.fingerprint() and dm.num_records("train") == len(
        CONVERSATIONS
    )
    rows = rows_of(dm.train_dataloader())
    assert sorted(json.dumps(parse(chat_tok, ids)) for ids, _ in rows) == sorted(
        map(json.dumps, CONVERSATIONS)
    )
    for ids, labels in rows:
        check_labels(chat_tok, ids, labels)
    val = rows_of(dm.val_dataloader())
    assert [parse(chat_tok, ids) for ids, _ in val] == [[user("Name a poet."), bot("Milton")]]
    report = json.loads((sft_dir / "report.json").read_text())
    assert (
        report["splits"]["train"]["records"] == len(CONVERSATIONS) and report["splits"]["val"]["records"] == 1
    )
    assert report["trained_tokens"] == sum(lab != IGNORE_INDEX for _, labels in rows + val for lab in labels)


def test_batches_pad_to_a_multiple_of_8_within_block_size():
    items = [
        {"input_ids": np.arange(n, dtype=np.int32), "labels": np.arange(1, n + 1, dtype=np.int32)}
        for n in (3, 58)
    ]
    batch = ChatCollate("sft", 100, 99, 60, "ds", "train")(items)
    assert batch["input_ids"].shape == (2, 60) and batch["input_ids"].dtype == torch.int64  # 64 capped at 60
    assert batch["input_ids"][0, 3:].eq(99).all() and batch["labels"][0, 3:].eq(IGNORE_INDEX).all()
    assert ChatCollate("sft", 100, 99, 256, "ds", "train")(items[:1])["input_ids"].shape == (1, 8)
    with pytest.raises(DatasetDamaged, match="token id 100"):
        ChatCollate("sft", 100, 99, 256, "ds", "train")(
            [{"input_ids": np.array([100]), "labels": np.array([1])}]
        )
    with pytest.raises(DataError, match="sequence of 58 tokens, more than block_size 32"):
        ChatCollate("sft", 100, 99, 32, "ds", "train")(items)


def test_preference_batch_is_chosen_rows_then_rejected_rows(dpo_dir, chat_tok):
    dm = PreferenceDataModule(str(dpo_dir), batch_size=3, shuffle=False, drop_last=False)
    by_prompt = {json.dumps(p["prompt"]): p for p in PAIRS}
    seen = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            ids, labels = batch["input_ids"], batch["labels"]
            b = ids.shape[0] // 2
            assert ids.shape == labels.shape and ids.shape[0] == 2 * b and ids.shape[1] % 8 == 0
            for i in range(b):
                chosen, rejected = parse(chat_tok, ids[i].tolist()), parse(chat_tok, ids[b + i].tolist())
                assert chosen[:-1] == rejected[:-1]
                prompt = (
                    chosen[:-1] if len(chosen) > 2 or chosen[0]["role"] == "system" else chosen[0]["content"]
                )
                pair = by_prompt[json.dumps(prompt)]
                reply = pair["chosen"] if isinstance(pair["chosen"], str) else pair["chosen"][0]["content"]
                assert chosen[-1] == bot(reply) and rejected[-1] == bot(pair["rejected"])
                first = [int((lab != IGNORE_INDEX).nonzero()[0]) for lab in (labels[i], labels[b + i])]
                assert first[0] == first[1] and torch.equal(
                    ids[i, : first[0] + 1], ids[b + i, : first[0] + 1]
                )
                check_labels(chat_tok, ids[i].tolist(), labels[i].tolist())
                check_labels(chat_tok, ids[b + i].tolist(), labels[b + i].tolist())
                seen += 1
    assert seen == len(PAIRS)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_batches_of_an_uninterrupted_run(sft_dir, dpo_dir, num_workers):
    for cls, path in ((ChatDataModule, sft_dir), (PreferenceDataModule, dpo_dir)):
        data = cls(str(path), batch_size=2, num_workers=num_workers, seed=3)
        it = iter(data.train_dataloader())
        for _ in range(2):
            next(it)
        state = data.state_dict()
        expected = [next(it) for _ in range(3)]
        resumed = cls(str(path), batch_size=2, num_workers=num_workers, seed=3)
        resumed.load_state_dict(state)
        it = iter(resumed.train_dataloader())
        for want in expected:
            got = next(it)
            assert all(torch.equal(want[k], got[k]) for k in ("input_ids", "labels"))
    with pytest.raises(DataError, match="another dataset"):
        ChatDataModule(str(sft_dir)).load_state_dict({**state, "dataset_fingerprint": "x"})


class Recorder(L.LightningModule):
    """Records every training batch; its single parameter never changes (lr 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(torch.cat([batch["input_ids"], batch["labels"]], dim=1))
        return (self.w * batch["input_ids"].float().mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_resume_sees_the_batches_of_an_uninterrupted_run(sft_dir, tmp_path):
    kw = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, max_steps=10, default_root_dir=tmp_path,
    )  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    full = Recorder()
    L.Trainer(callbacks=[ckpt], **kw).fit(full, ChatDataModule(str(sft_dir), batch_size=2))
    resumed = Recorder()
    path = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    L.Trainer(**kw).fit(resumed, ChatDataModule(str(sft_dir), batch_size=2), ckpt_path=path)
    assert len(resumed.seen) == 6
    assert all(torch.equal(x, y) for x, y in zip(full.seen[4:], resumed.seen, strict=True))


def test_datamodules_refuse_the_wrong_kind_and_a_short_block(tiny_dataset, sft_dir, dpo_dir):
    with pytest.raises(DataError, match="pretraining dataset .*prepare-sft"):
        ChatDataModule(str(tiny_dataset))
    with pytest.raises(DataError, match="is a DPO dataset .*Read it with PreferenceDataModule"):
        ChatDataModule(str(dpo_dir))
    with pytest.raises(DataError, match="is an SFT dataset"):
        PreferenceDataModule(str(sft_dir))
    longest = ChatDataModule(str(sft_dir)).longest
    with pytest.raises(DataError, match=f"up to {longest} tokens .*data.block_size {longest - 1}"):
        ChatDataModule(str(sft_dir), block_size=longest - 1)


# -- prepare: reuse and refusal -----------------------------------------------------------------------------
def test_prepare_reuses_same_settings_and_refuses_others(tmp_path, tok_dir, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"messages": c} for c in CONVERSATIONS])
    out = prep("sft", src, tmp_path / "out", tok_dir)
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "sft" and marker["settings"]["block_size"] == 256
    assert marker["counts"]["records"] == len(CONVERSATIONS) and marker["settings"]["val_fraction"] == 0.1
    mtime = (out / MARKER).stat().st_mtime_ns
    capsys.readouterr()
    prep("sft", src, out, tok_dir)
    assert "Reusing" in capsys.readouterr().out and (out / MARKER).stat().st_mtime_ns == mtime
    with pytest.raises(PrepareError, match=r"other settings:\n  block_size: existing 256, requested 128"):
        prep("sft", src, out, tok_dir, block_size=128)
    pairs = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(PrepareError, match="holds an SFT dataset"):
        prep("dpo", pairs, out, tok_dir)
    prep("sft", src, out, tok_dir, block_size=128, overwrite=True)
    assert json.loads((out / MARKER).read_text())["settings"]["block_size"] == 128
    with pytest.raises(ConfigError, match="a preference .* set: prepare it with lightning-llm prepare-dpo"):
        SFTPrepareConfig(source="classics-preferences", tokenizer=tok_dir)


def test_tokenizer_from_a_checkpoint_or_a_prepared_directory(tmp_path, tiny_dataset, chat_tok):
    base = Tokenizer.load(tiny_dataset / "tokenizer")
    torch.save({"tokenizer": base.to_dict(), "state_dict": {}}, tmp_path / "model.ckpt")
    for spec in (tmp_path / "model.ckpt", tiny_dataset, tiny_dataset / "tokenizer"):
        assert chat_tokenizer(base_tokenizer(str(spec))).fingerprint() == chat_tok.fingerprint()
    assert chat_tokenizer(chat_tok) is chat_tok  # an SFT checkpoint's tokenizer (for DPO) is kept as it is
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        base_tokenizer(str(tmp_path))


# -- the builtin classics sets ------------------------------------------------------------------------------
SPEAKER_LABEL = re.compile(r"^[A-Z][A-Za-z' -]*\.$")


def passage_lines(record: dict[str, Any]) -> set[str]:
    """The corpus lines a record shows (not the question, the labels or the speaker names)."""
    prompt = record["messages"][0]["content"] if "messages" in record else record["prompt"]
    lines = {s for s in prompt.split("\n\n", 1)[1].splitlines() if s.strip() and not SPEAKER_LABEL.match(s)}
    return lines | ({record["chosen"], record["rejected"]} if record["task"] == "continue" else set())


def test_classics_sets_are_deterministic_with_short_answers_and_unseen_held_out(classics_docs):
    train, held = generate_instructions(classics_docs, seed=7)
    assert (train, held) == generate_instructions(classics_docs, seed=7)
    assert (len(train), len(held)) == (3000, 300)
    tasks = {t: [r for r in train if r["task"] == t] for t in ("work", "speaker", "testament")}
    assert {t: len(r) for t, r in tasks.items()} == {"work": 1200, "speaker": 1000, "testament": 800}
    answers = {t: {r["messages"][1]["content"] for r in rs} for t, rs in tasks.items()}
    assert answers["work"] == set(WORKS) and answers["testament"] == set(TESTAMENTS)
    assert all(len(a.split()) <= 4 for a in answers["speaker"]) and len(answers["speaker"]) > 100
    for r in tasks["speaker"]:  # the answer is one of the two speakers shown
        assert r["messages"][1]["content"] + "." in r["messages"][0]["content"].splitlines()
    seen = set().union(*map(passage_lines, train))
    assert not any(passage_lines(r) & seen for r in held)

    ptrain, pheld = generate_preferences(classics_docs, seed=7)
    assert (ptrain, pheld) == generate_preferences(classics_docs, seed=7)
    assert (len(ptrain), len(pheld)) == (3000, 300)
    assert all(r["chosen"] != r["rejected"] for r in ptrain + pheld)
    seen = set().union(*map(passage_lines, ptrain))
    assert not any(passage_lines(r) & seen for r in pheld)


def test_cli_prepares_the_builtin_set_and_user_files(tmp_path, tok_dir, classics_cache, capsys):
    out = tmp_path / "sft"
    err, stdout, _ = run_command(
        capsys, "prepare-sft", "--tokenizer", tok_dir, "--output_dir", str(out),
        "--cache_dir", str(classics_cache), "--block_size", "512",
    )  # fmt: skip
    assert err is None and "3,000" in stdout and "Prepared" in stdout
    records = [json.loads(s) for s in (out / "records" / "val.jsonl").read_text().splitlines()]
    assert len(records) == 300 and records[0]["messages"][-1]["role"] == "assistant"
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["val"] == {"work": 120, "speaker": 100, "testament": 80}
    assert ChatDataModule(str(out), block_size=512).num_records("val") == 300

    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD_DPO, '{"prompt": "p", "chosen": "x", "rejected": "x"}'])
    err, _, _ = run_command(
        capsys,
        "prepare-dpo",
        "--source",
        str(bad),
        "--tokenizer",
        tok_dir,
        "--output_dir",
        str(tmp_path / "d"),
    )
    assert err is not None and f"{bad}:2: 'chosen' and 'rejected' are the same text" in err
    err, _, _ = run_command(
        capsys, "prepare-sft", "--source", str(tmp_path / "missing.jsonl"), "--tokenizer", tok_dir
    )
    assert err is not None and "missing.jsonl: no such file" in err
    good = write_jsonl(tmp_path / "good.jsonl", PAIRS)
    err, stdout, _ = run_command(
        capsys,
        "prepare-dpo",
        "--source",
        str(good),
        "--tokenizer",
        tok_dir,
        "--output_dir",
        str(tmp_path / "d"),
    )
    assert err is None and f"{len(PAIRS)} preference pairs" in stdout
