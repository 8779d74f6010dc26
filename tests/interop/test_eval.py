"""``lightning-llm eval``: the lm-eval adapter's scores equal a direct float64 computation with the model
(log-likelihoods in batches, contexts cut to the block, the rolling windows of a whole text, greedy
generation cut at a stop string), the local ``classics_continuation`` task is deterministic, well formed
and loads offline, and the command runs end to end on a tiny checkpoint with clear errors. Tests that need
lm-eval are skipped where it is not installed (``pip install 'lightning-llm[eval]'``).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_command

from lightning_llm.config import GPTConfig
from lightning_llm.data.documents import Document, Source
from lightning_llm.data.tokenizer import Tokenizer
from lightning_llm.interop import classics_task
from lightning_llm.interop.classics_task import TASK_NAME, build_items, ensure_task, write_task
from lightning_llm.model import GPT

BLOCK = 32
CONFIG: dict[str, Any] = dict(block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, init_std=0.2)
SHORT = "ROMEO: But, soft!"
LONG = (
    "But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, "
    "fair sun, and kill the envious moon, who is already sick and pale with grief, that thou her maid "
    "art far more fair than she."
)


@pytest.fixture(autouse=True)
def _datasets_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face datasets never reaches the network (and eval's own setting of it is undone after)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _instances(kind: str, args: list[tuple]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def tok(bpe: tuple[Tokenizer, Any]) -> Tokenizer:
    return bpe[0]


@pytest.fixture(scope="module")
def model(tok: Tokenizer) -> GPT:
    """A random tiny GPT (block size 32) with weights large enough for peaked, non-uniform predictions."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, positional="rope", **CONFIG), device_type="cpu").eval()


@pytest.fixture(scope="module")
def model64(model: GPT) -> GPT:
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def lm(model: GPT, tok: Tokenizer) -> Any:
    pytest.importorskip("lm_eval")
    from lightning_llm.interop.lm_eval_adapter import GPTEvalLM

    return GPTEvalLM(model, tok, batch_size=3, progress=False)


@torch.no_grad()
def direct(model64: GPT, tokens: list[int], n_target: int) -> tuple[float, bool]:
    """Sum of log p(target) over the last ``n_target`` tokens of one float64 forward pass, and greedy."""
    logits = model64(torch.tensor([tokens[:-1]]))[0]
    logp = F.log_softmax(logits, dim=-1)
    at = range(len(tokens) - 1 - n_target, len(tokens) - 1)
    total = sum(float(logp[p, tokens[p + 1]]) for p in at)
    return total, all(int(logits[p].argmax()) == tokens[p + 1] for p in at)


def direct_windows(model64: GPT, seq: list[int], first: int) -> tuple[float, bool]:
    """``seq[first:]`` given what precedes it, BLOCK predicted tokens per forward pass, each pass reading
    the BLOCK tokens before its last target (a single pass when they fit)."""
    total, greedy = 0.0, True
    for start in range(first, len(seq), BLOCK):
        end = min(start + BLOCK, len(seq))
        logp, g = direct(model64, seq[max(0, end - 1 - BLOCK) : end], end - start)
        total, greedy = total + logp, greedy and g
    return total, greedy


# -- the adapter --------------------------------------------------------------------------------------
def test_encode_pair_splits_the_joint_encoding(lm: Any, tok: Tokenizer) -> None:
    for context, continuation in [
        ("It is the", " east"),
        ("Arise, fair ", "sun"),
        ("", "Hello"),
        ("a\n\n", "b"),
    ]:
        ctx, cont = lm.encode_pair(context, continuation)
        if context:
            assert ctx + cont == tok.encode(context + continuation)
            assert tok.decode(cont).strip() == continuation.strip()
        else:
            assert ctx == [tok.eot_id] and cont == tok.encode(continuation)


def test_loglikelihood_equals_a_direct_computation(lm: Any, model64: GPT, tok: Tokenizer) -> None:
    pairs = [
        ("ROMEO:", " But, soft!"),
        ("", "Hello there"),  # empty context: conditioned on <|endoftext|>
        (LONG, " So says Romeo."),  # context longer than the block: cut from the left
        ("It is the east, and Juliet", " is the sun"),
        ("Arise, fair sun", " and kill the envious moon, who is already sick"),
        ("Juliet:", " " + LONG),  # a continuation longer than the block: scored in windows
        ("Romeo", ""),  # nothing to score
    ]
    assert len(tok.encode(LONG)) > 2 * BLOCK
    got = lm.loglikelihood(_instances("loglikelihood", pairs))
    assert len(got) == len(pairs)
    for (context, continuation), (logp, greedy) in zip(pairs, got, strict=True):
        ctx, cont = lm.encode_pair(context, continuation)
        if len(cont) <= BLOCK:  # one forward pass of the context's last tokens and the continuation
            want, want_greedy = direct(model64, (ctx + cont)[-(BLOCK + 1) :], len(cont))
        else:
            want, want_greedy = direct_windows(model64, ctx + cont, len(ctx))
        assert logp == pytest.approx(want, rel=1e-5, abs=1e-4), (context[:20], continuation)
        assert greedy == want_greedy
        assert logp < 0 or not continuation


def test_the_greedy_flag(lm: Any, model: GPT, tok: Tokenizer) -> None:
    prompt = tok.encode("ROMEO: But, soft!")
    out = model.generate(torch.tensor([prompt]), 6, temperature=0.0)[0].tolist()
    assert lm.score_rows([(out, len(prompt))])[0][1] is True
    wrong = [*out[:-1], (out[-1] + 1) % tok.eot_id]
    assert lm.score_rows([(wrong, len(prompt))])[0][1] is False


def test_rolling_windows_are_lm_evals(tok: Tokenizer) -> None:
    """Each token predicted once, in disjoint windows of BLOCK, as lm-eval's own helpers cut them."""
    pytest.importorskip("lm_eval")
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from lightning_llm.interop.lm_eval_adapter import rolling_rows

    for n in (1, 5, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7):
        tokens = list(range(1, n + 1))
        rows = rolling_rows(tokens, 0, BLOCK)
        theirs = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(tokens, prefix_token=0, max_seq_len=BLOCK, context_len=1)
        ]
        assert [(t[:c], t[c:]) for t, c in rows] == theirs, n
        assert [x for t, c in rows for x in t[c:]] == tokens
        assert all(len(t) <= BLOCK + 1 for t, _ in rows)


def test_loglikelihood_rolling_equals_a_direct_computation(lm: Any, model64: GPT, tok: Tokenizer) -> None:
    short, long = tok.encode(SHORT), tok.encode(LONG)
    assert len(short) < BLOCK < 2 * BLOCK < len(long) and len(long) % BLOCK
    got = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(SHORT,), (LONG,)]))
    # shorter than the block: one forward pass of <|endoftext|> + the text
    assert got[0] == pytest.approx(direct(model64, [tok.eot_id, *short], len(short))[0], rel=1e-5, abs=1e-4)
    # longer: full windows see the one token before them, the last window the BLOCK tokens before its end
    assert got[1] == pytest.approx(direct_windows(model64, [tok.eot_id, *long], 1)[0], rel=1e-5, abs=1e-4)


def _greedy_reference(model: GPT, tok: Tokenizer, context: str, n: int) -> str:
    ids = tok.encode(context)[-(BLOCK - n) :]
    out = model.generate(torch.tensor([ids]), n, temperature=0.0)[0, len(ids) :].tolist()
    return tok.decode(out[: out.index(tok.eot_id)] if tok.eot_id in out else out)


def test_generate_until_is_greedy_generation_cut_at_the_stop_string(
    lm: Any, model: GPT, tok: Tokenizer
) -> None:
    full = _greedy_reference(model, tok, SHORT, 20)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop and full.find(stop) > 0
    long_full = _greedy_reference(model, tok, LONG, 12)  # the context is cut to leave room for 12 tokens
    got = lm.generate_until(
        _instances(
            "generate_until",
            [
                (SHORT, {"until": [stop, "never appears"], "max_gen_toks": 20, "do_sample": False}),
                (SHORT, {"until": ["never appears"], "max_gen_toks": 20}),
                (LONG, {"until": "never appears", "max_gen_toks": 12}),
            ],
        )
    )
    assert got == [full[: full.find(stop)], full, long_full]


# -- the local task -----------------------------------------------------------------------------------
class _Cached(Source):
    """Documents read once, under the fingerprint of the source they came from."""

    def __init__(self, docs: list[Document], fingerprint: str) -> None:
        super().__init__()
        self.docs, self._fingerprint = docs, fingerprint

    def documents(self) -> Iterator[Document]:
        return iter(self.docs)

    def fingerprint(self) -> str:
        return self._fingerprint


@pytest.fixture(scope="module")
def classics() -> _Cached:
    from lightning_llm.data.classics import ClassicsSource

    source = ClassicsSource()
    try:
        docs = list(source.documents())
    except Exception as err:  # offline, with no cached archives
        pytest.skip(f"the classics corpus is not available here: {err}")
    return _Cached(docs, source.fingerprint())


@pytest.fixture(scope="module")
def task_dir(classics: _Cached, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task exactly as ``lightning-llm eval`` generates it (default size and seed)."""
    return write_task(tmp_path_factory.mktemp("eval_task") / TASK_NAME, classics)


def test_items_are_deterministic_and_well_formed(classics: _Cached) -> None:
    docs = classics.docs[::4]  # every work, a quarter of the text: quicker
    items = build_items(docs, 60, seed=3)
    assert items == build_items(docs, 60, seed=3)
    assert items != build_items(docs, 60, seed=4)
    lines = {d.source: d.text.replace("\r\n", "\n").split("\n") for d in docs}
    texts = {source: "\n".join(line.rstrip() for line in text) for source, text in lines.items()}
    assert {i["source"].split("/")[0] for i in items} == {
        "classics:shakespeare",
        "classics:milton",
        "classics:bible",
    }
    assert len({i["id"] for i in items}) == 60 and len({(i["source"], i["context"]) for i in items}) == 60
    for item in items:
        choices, label = item["choices"], item["label"]
        assert len(choices) == 4 and len({c.lower() for c in choices}) == 4 and label in range(4)
        assert item["context"].endswith("\n") and len(item["context"]) >= classics_task.MIN_CONTEXT_CHARS
        assert (
            item["context"] + choices[label] + "\n" in texts[item["source"]]
        )  # the line that really follows
        assert all(classics_task.LINE_CHARS[0] <= len(c) <= classics_task.LINE_CHARS[1] for c in choices)
    labels = [i["label"] for i in items]
    assert len(set(labels)) == 4


def test_the_task_directory_is_reproducible_and_reused(
    classics: _Cached, task_dir: Path, tmp_path: Path
) -> None:
    again = write_task(tmp_path / "again", classics)
    for name in ("test.jsonl", "fewshot.jsonl"):
        assert (again / name).read_bytes() == (task_dir / name).read_bytes()
    test = [json.loads(line) for line in (task_dir / "test.jsonl").read_text().splitlines()]
    fewshot = [json.loads(line) for line in (task_dir / "fewshot.jsonl").read_text().splitlines()]
    assert len(test) == classics_task.DEFAULT_ITEMS and len(fewshot) == classics_task.DEFAULT_FEWSHOT
    assert not {i["id"] for i in test} & {i["id"] for i in fewshot}
    assert ensure_task(again, classics) == (again, False)
    (again / "test.jsonl").write_text("{}\n")  # damaged: made again
    assert ensure_task(again, classics) == (again, True)
    assert (again / "test.jsonl").read_bytes() == (task_dir / "test.jsonl").read_bytes()


def test_the_task_loads_offline_through_lm_eval(task_dir: Path) -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from lightning_llm.cli.evaluate import LOCAL_TASK

    assert LOCAL_TASK == TASK_NAME
    task = TaskManager(include_path=str(task_dir), include_defaults=False).load([TASK_NAME])["tasks"][
        TASK_NAME
    ]
    docs = list(task.test_docs())
    assert len(docs) == classics_task.DEFAULT_ITEMS
    assert task.doc_to_text(docs[0]) == docs[0]["context"]
    assert task.doc_to_choice(docs[0]) == docs[0]["choices"]
    assert task.doc_to_target(docs[0]) == docs[0]["label"]


# -- the command --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(model: GPT, tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture model in the checkpoint format ``lightning-llm fit`` writes (what load_checkpoint reads)."""
    path = tmp_path_factory.mktemp("eval_ckpt") / "tiny.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"model_config": model.config.to_dict(), "state_dict": state, "tokenizer": tok.to_dict()}, path
    )
    return path


def run_eval(capsys: pytest.CaptureFixture, *args: str) -> tuple[str | None, str, str]:
    """``lightning-llm eval ARGS`` in-process: (error message or None, stdout, stderr)."""
    return run_command(capsys, "eval", *args)


def test_eval_writes_results(
    ckpt: Path, task_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("lm_eval")
    out = tmp_path / "results.json"
    args = ["--ckpt_path", str(ckpt), "--tasks", TASK_NAME, "--limit", "8", "--num_fewshot", "1"]
    err, stdout, _ = run_eval(capsys, *args, "--task_dir", str(task_dir), "--output", str(out))
    assert err is None
    results = json.loads(out.read_text())
    scores = results["results"][TASK_NAME]
    assert 0.0 <= scores["acc,none"] <= 1.0 and 0.0 <= scores["acc_norm,none"] <= 1.0
    assert results["n-samples"][TASK_NAME]["effective"] == 8
    assert results["n-shot"][TASK_NAME] == 1
    assert results["lightning_llm"]["ckpt_path"] == str(ckpt.resolve())
    assert TASK_NAME in stdout and "acc" in stdout  # lm-eval's table


def test_eval_errors_are_one_paragraph(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err, _, _ = run_eval(capsys, "--ckpt_path", str(ckpt), "--tasks", " , ")
    assert "names no task" in err and TASK_NAME in err
    err, _, _ = run_eval(capsys, "--ckpt_path", str(tmp_path / "none.ckpt"), "--tasks", TASK_NAME)
    assert "No checkpoint at" in err
    err, _, _ = run_eval(capsys, "--ckpt_path", str(ckpt), "--tasks", TASK_NAME, "--limit", "0")
    assert "--limit 0" in err


def test_unknown_task(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("lm_eval")
    err, _, _ = run_eval(capsys, "--ckpt_path", str(ckpt), "--tasks", "hellaswagg")
    assert "no task, group or tag 'hellaswagg'" in err and "hellaswag" in err and "lm-eval ls tasks" in err


def test_without_lm_eval_the_error_names_the_extra(
    ckpt: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("lm_eval", "lm_eval.api", "lm_eval.api.model"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    monkeypatch.delitem(sys.modules, "lightning_llm.interop.lm_eval_adapter", raising=False)
    err, _, _ = run_eval(capsys, "--ckpt_path", str(ckpt), "--tasks", TASK_NAME)
    assert "pip install 'lightning-llm[eval]'" in err
