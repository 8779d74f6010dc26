"""``lightning-llm generate`` on simple mistakes and unsafe input (issue #11 items 9 and 11).

Each case ends as correct behaviour or one clear paragraph (no traceback): bad or foreign checkpoint files,
URLs, pickled Python objects (refused by ``torch.load(weights_only=True)``), and sampling settings that used
to be clamped or ignored silently (``--max_new_tokens``, ``--temperature``, ``--top_p``, ``--top_k``).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_llm.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_generate_cli import train_tiny_checkpoint  # noqa: E402

BLOCK = 32
PROMPT = "The "


@pytest.fixture(scope="module")
def ckpt(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a real 1-step fit of a tiny model (block size 32) on the CPU."""
    out = tmp_path_factory.mktemp("reliability_ckpt")
    return train_tiny_checkpoint(tiny_dataset, out)


def generate(capsys: pytest.CaptureFixture, *args: str) -> tuple[str | None, str]:
    """``lightning-llm generate ARGS`` through ``cli.main``: (the error paragraph or None, stdout)."""
    try:
        main(["generate", *args])
        err = None
    except SystemExit as exc:
        assert isinstance(exc.code, str), f"exit {exc.code!r}: expected a one-paragraph error message"
        err = exc.code
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    if err is not None:
        assert err.startswith("error: ") and err.endswith("(set LIGHTNING_LLM_DEBUG=1 to see the traceback)")
        assert err.count("\n") == 1  # the paragraph, then the debug hint
        assert cap.out == ""  # nothing sampled
    return err, cap.out


# -- checkpoint files -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url", ["https://example.com/last.ckpt", "http://host/m.ckpt", "s3://bucket/last.ckpt"]
)
def test_url_ckpt_path_is_refused(capsys, url: str) -> None:
    err, _ = generate(capsys, "--ckpt_path", url)
    assert f"--ckpt_path {url} is a URL; generate only reads local checkpoint files" in err
    assert "Download it first" in err


@pytest.mark.parametrize("keep", [100, 5000, 0.5], ids=["100-bytes", "5000-bytes", "half"])
def test_truncated_checkpoint(ckpt: Path, tmp_path: Path, capsys, keep: float) -> None:
    """Cut anywhere (torch fails with a RuntimeError or an OSError depending on where): one paragraph."""
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: int(keep * len(data)) if keep < 1 else int(keep)])
    err, _ = generate(capsys, "--ckpt_path", str(cut))
    assert f"{cut} is not a readable PyTorch checkpoint (torch.load: " in err
    assert (
        "it is truncated (e.g. an interrupted copy or download), corrupt, or not a checkpoint at all" in err
    )


def test_unreadable_file(ckpt: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    err, _ = generate(capsys, "--ckpt_path", str(ckpt))
    assert f"error: {ckpt} cannot be read: Permission denied." in err


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (random.Random(0).randbytes(4096), "(not a PyTorch file)"),
        (b"", "(the file is empty)"),
        (b"step,loss\n1,4.2\n", "(not a PyTorch file)"),
        (b"PK\x03\x04" + bytes(100), "(torch.load: PytorchStreamReader failed reading zip archive"),
    ],
    ids=["random-bytes", "empty", "text", "broken-zip"],
)
def test_garbage_file(tmp_path: Path, capsys, content: bytes, detail: str) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    err, _ = generate(capsys, "--ckpt_path", str(bad))
    assert f"{bad} is not a readable PyTorch checkpoint {detail}" in err
    assert "Point --ckpt_path at a .ckpt file written by lightning-llm fit" in err


def test_pytorch_files_that_are_not_lightning_llm_checkpoints(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, weights)
    err, _ = generate(capsys, "--ckpt_path", str(weights))
    assert f"{weights} has no model_config: it was not written by lightning-llm fit." in err
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    err, _ = generate(capsys, "--ckpt_path", str(tensor))
    assert f"{tensor} is a PyTorch file but not a lightning-llm checkpoint: it holds a Tensor" in err


def test_weights_that_do_not_match_the_config(ckpt: Path, tmp_path: Path, capsys) -> None:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["model_config"]["n_embd"] = 64
    bad = tmp_path / "mismatch.ckpt"
    torch.save(raw, bad)
    err, _ = generate(capsys, "--ckpt_path", str(bad))
    assert f"{bad}: its weights do not match its model_config (Error(s) in loading state_dict" in err


def test_directory_and_missing_file_keep_their_messages(tmp_path: Path, capsys) -> None:
    err, _ = generate(capsys, "--ckpt_path", str(tmp_path))
    assert f"--ckpt_path {tmp_path} is a directory but not a distributed checkpoint" in err
    err, _ = generate(capsys, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert f"No checkpoint at {tmp_path / 'nope.ckpt'}. Train one with `lightning-llm fit" in err


class Payload:
    """Creates ``path`` when unpickled: proof that loading ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_a_pickled_object_is_refused(ckpt: Path, tmp_path: Path, capsys) -> None:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    raw["callbacks"]["evil"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(raw, evil)
    err, _ = generate(capsys, "--ckpt_path", str(evil))
    assert f"{evil} is refused: besides tensors and plain data it contains pickled Python objects" in err
    assert "open)" in err and "could run arbitrary code" in err  # io.open, named by torch
    assert "torch.load(weights_only=True)" in err
    assert not marker.exists()


def test_checkpoints_load_with_weights_only(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_llm.cli.generate import load_checkpoint

    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(ckpt)
    assert seen == [True]


# -- sampling settings: errors instead of silent clamping ---------------------------------------------------
def test_max_new_tokens_beyond_the_block_size_names_the_limit(ckpt: Path, capsys) -> None:
    err, _ = generate(capsys, "--ckpt_path", str(ckpt), "--prompt", PROMPT, "--max_new_tokens", "100000")
    assert "--max_new_tokens 100000 does not fit: the model's block size is 32 tokens and the prompt " in err
    room = int(err.split("at most ")[1].split()[0])
    assert 0 < room < BLOCK and f"Use --max_new_tokens {room} or less" in err
    ok, out = generate(capsys, "--ckpt_path", str(ckpt), "--prompt", PROMPT, "--max_new_tokens", str(room))
    assert ok is None and out.startswith(PROMPT)


def test_default_max_new_tokens_fills_the_block(ckpt: Path, capsys) -> None:
    """The default (200) is cut to the room the prompt leaves: a default never fails on a small model."""
    err, out = generate(
        capsys, "--ckpt_path", str(ckpt), "--prompt", PROMPT, "--stop_at_eot", "false", "--temperature", "0"
    )
    assert err is None and out.startswith(PROMPT) and len(out) > len(PROMPT)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max_new_tokens", "0", "--max_new_tokens 0: generate at least 1 token."),
        ("--temperature", "-1", "temperature -1.0 is out of range: use 0 for greedy decoding"),
        ("--top_p", "1.5", "top_p 1.5 is outside (0, 1]"),
        ("--top_p", "0", "top_p 0.0 is outside (0, 1]"),
        ("--top_p", "-0.2", "top_p -0.2 is outside (0, 1]"),
        ("--top_k", "0", "top_k 0 is out of range: it must be at least 1 (1 is greedy), or null (None)"),
        ("--top_k", "-5", "top_k -5 is out of range"),
    ],
)
def test_out_of_range_sampling_settings(ckpt: Path, capsys, flag: str, value: str, message: str) -> None:
    err, _ = generate(capsys, "--ckpt_path", str(ckpt), "--prompt", PROMPT, flag, value)
    assert message in err


def test_temperature_zero_is_greedy_and_edge_values_work(ckpt: Path, capsys) -> None:
    base = ("--ckpt_path", str(ckpt), "--prompt", PROMPT, "--max_new_tokens", "10", "--stop_at_eot", "false")
    greedy = {generate(capsys, *base, "--temperature", "0", "--seed", s)[1] for s in ("1", "2", "3")}
    assert len(greedy) == 1  # the seed does not matter: always the most likely token
    top_k_1 = generate(capsys, *base, "--temperature", "1.3", "--top_k", "1")[1]
    assert {top_k_1} == greedy
    for extra in (("--top_p", "1"), ("--top_p", "0.5"), ("--top_k", "null")):
        err, out = generate(capsys, *base, *extra)
        assert err is None and out.startswith(PROMPT)


def test_simple_mistakes_in_the_real_console_script(ckpt: Path, tmp_path: Path) -> None:
    """The installed script, end to end: exit status 1, the paragraph on stderr, no traceback."""
    script = Path(sys.executable).with_name("lightning-llm")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_llm"]
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    cases = [
        (["--ckpt_path", str(cut)], f"error: {cut} is not a readable PyTorch checkpoint"),
        (["--ckpt_path", str(ckpt), "--temperature", "-1"], "error: temperature -1.0 is out of range"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [*cmd, "generate", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
