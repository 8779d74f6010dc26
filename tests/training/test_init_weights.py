"""``--model.init_weights``: a new run starts from another checkpoint's weights (e.g. an imported model)."""

from __future__ import annotations

import re

import pytest
import torch
from test_cli import ROOT, TINY, fit_args, succeeds

from lightning_llm.config import GPTConfig
from lightning_llm.data.tokenizer import Tokenizer, gpt2_tokenizer
from lightning_llm.warm_start import WarmStartError, check_config, check_tokenizer, grow_vocab


def test_grow_vocab_keeps_old_rows_and_fills_new_ones_with_their_mean() -> None:
    wte = torch.randn(5, 3, dtype=torch.float64)
    head = torch.randn(5, 3, dtype=torch.float64)
    state = {"wte.weight": wte, "lm_head.weight": head, "norm_f.weight": torch.ones(3)}
    assert grow_vocab(state, 8) == 3
    for key, old in (("wte.weight", wte), ("lm_head.weight", head)):
        assert state[key].shape == (8, 3)
        assert torch.equal(state[key][:5], old)
        torch.testing.assert_close(state[key][5:], old.mean(0).expand(3, 3))
    assert grow_vocab(state, 8) == 0  # already that size


def test_an_architecture_change_is_refused_with_the_overrides_that_fit() -> None:
    saved = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, norm="rmsnorm", bias=False)
    # the kernel, dropout and a larger (padded) vocabulary are free to differ
    check_config(
        saved, GPTConfig(**{**saved.to_dict(), "attention": "naive", "dropout": 0.1, "vocab_size": 128}), "x"
    )
    with pytest.raises(
        WarmStartError, match=r"n_layer: checkpoint 2 vs this run 3.*--model.config.n_layer 2"
    ):
        check_config(saved, GPTConfig(**{**saved.to_dict(), "n_layer": 3}), "x")
    with pytest.raises(WarmStartError, match="vocab_size: checkpoint 64 vs this run 32"):
        check_config(saved, GPTConfig(**{**saved.to_dict(), "vocab_size": 32}), "x")


def test_a_dataset_with_another_tokenizer_is_refused(tiny_dataset) -> None:
    gpt2, bpe = gpt2_tokenizer(), Tokenizer.load(tiny_dataset / "tokenizer")
    check_tokenizer(gpt2.to_dict(), gpt2, "x.ckpt")
    with pytest.raises(WarmStartError, match="same ids would mean different text"):
        check_tokenizer(gpt2.to_dict(), bpe, "x.ckpt")


@pytest.mark.slow
def test_an_exported_then_imported_model_validates_like_the_original(
    tiny_dataset, tmp_path, in_process
) -> None:
    """fit -> export to transformers -> import -> validate/fit from init_weights: the same model (every command
    in this process: no step needs a process of its own)."""
    pytest.importorskip("transformers")
    run = in_process
    succeeds(
        run,
        "fit",
        *fit_args(
            tmp_path,
            tiny_dataset,
            "quickstart-baseline.yaml",
            "--trainer.max_steps=4",
            "--trainer.val_check_interval=4",
        ),
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    succeeds(run, "export", "--ckpt_path", str(last), "--to", "hf", "--out", str(tmp_path / "hf"))
    imported = tmp_path / "imported.ckpt"
    succeeds(run, "import", "--from", str(tmp_path / "hf"), "--out", str(imported))

    def validate(*extra: str) -> tuple[float, str]:
        out, err = succeeds(
            run,
            "validate",
            "--config",
            str(ROOT / "configs" / "quickstart-baseline.yaml"),
            f"--data.path={tiny_dataset}",
            *TINY,
            f"--trainer.default_root_dir={tmp_path / 'validate'}",
            *extra,
        )
        return float(re.search(r"val/loss\D+?([0-9]+\.[0-9]+)", out).group(1)), err

    original, _ = validate(f"--ckpt_path={last}")
    warm, log = validate(f"--model.init_weights={imported}")
    assert "Starting from the weights of" in log
    assert warm == pytest.approx(original, rel=1e-5)

    # fit starts from them (step 0), and a weights-only file given to --ckpt_path points to init_weights
    (tmp_path / "warm").mkdir(), (tmp_path / "bad").mkdir()
    _, err = succeeds(
        run,
        "fit",
        *fit_args(
            tmp_path / "warm",
            tiny_dataset,
            "quickstart-baseline.yaml",
            "--trainer.max_steps=1",
            f"--model.init_weights={imported}",
        ),
    )
    assert "Starting from the weights of" in err
    refused, _, _ = run(
        "fit",
        *fit_args(tmp_path / "bad", tiny_dataset, "quickstart-baseline.yaml", f"--ckpt_path={imported}"),
    )
    assert refused is not None and "--model.init_weights" in refused


def test_prepare_tokenizes_with_the_tokenizer_of_a_checkpoint(tiny_corpus, tiny_dataset, tmp_path) -> None:
    """Data for an imported model: ``prepare --tokenizer CKPT`` reuses the checkpoint's tokenizer."""
    from lightning_llm.data.clean import CleanConfig
    from lightning_llm.data.errors import ConfigError
    from lightning_llm.data.prepare import PrepareConfig, prepare

    tok = Tokenizer.load(tiny_dataset / "tokenizer")
    ckpt = tmp_path / "weights.ckpt"
    torch.save({"tokenizer": tok.to_dict(), "state_dict": {}}, ckpt)
    out = prepare(
        PrepareConfig(
            source=str(tiny_corpus),
            output_dir=str(tmp_path / "ds"),
            tokenizer=str(ckpt),
            num_workers=1,
            clean=CleanConfig(near_dedup=False),
        )
    )
    assert Tokenizer.load(out / "tokenizer").fingerprint() == tok.fingerprint()
    torch.save({"state_dict": {}}, tmp_path / "no_tokenizer.ckpt")
    with pytest.raises(ConfigError, match="holds no lightning-llm tokenizer"):
        prepare(
            PrepareConfig(
                source=str(tiny_corpus),
                output_dir=str(tmp_path / "x"),
                tokenizer=str(tmp_path / "no_tokenizer.ckpt"),
            )
        )
    with pytest.raises(ConfigError, match="neither one of bpe, gpt2 nor a checkpoint file"):
        PrepareConfig(source=str(tiny_corpus), output_dir=str(tmp_path / "y"), tokenizer="llama")
