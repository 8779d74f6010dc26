"""``LitGPT``'s checkpoint hooks: what a checkpoint carries, what is refused on save and load, warm starts.

A mixin of ``module.LitGPT`` (kept apart so the module holds the training computation only). On save: no
checkpoint of a diverged model replaces the last good one; the model config, the tokenizer and, for a
conversational tokenizer, the chat template's name travel in every checkpoint. On load: a different
architecture is refused, changed optimizer settings win and are said once, a weights-only file is not a run
to resume. ``init_weights`` (a new run from another checkpoint's weights) is loaded once the model is built.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_llm.chat import TEMPLATE_NAME, has_chat_tokens
from lightning_llm.config import GPTConfig
from lightning_llm.nonfinite import NonFiniteLossError, nonfinite_tensors
from lightning_llm.optim import apply_optimizer_settings, apply_settings_to_groups


class CheckpointHooks:
    """Save / load hooks and the warm start of ``LitGPT`` (expects its attributes: ``config``, ``model``,
    ``token_data``, ``init_weights``, ``hparams``, ``optim_cfg``, ``_raise_if_nonfinite``)."""

    _warm_started = False

    def _warm_start(self) -> None:
        """Load ``init_weights`` once, after the model is built and sharded, unless a checkpoint was restored."""
        if self.init_weights is None or self._warm_started:
            return
        self._warm_started = True
        if self.trainer.ckpt_path is not None:
            rank_zero_info(
                f"init_weights ({self.init_weights}) is not loaded: the weights come from --ckpt_path "
                f"{self.trainer.ckpt_path}."
            )
            return
        from lightning_llm.warm_start import load_initial_weights

        tokenizer = self.token_data.tokenizer if self.token_data is not None else None
        rank_zero_info(load_initial_weights(self.model, self.init_weights, tokenizer))

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint of a diverged model must never replace the last good one
        self._raise_if_nonfinite()
        self._check_finite_weights(checkpoint.get("state_dict", {}))
        checkpoint["model_config"] = self.config.to_dict()
        if self.token_data is not None:
            tokenizer = self.token_data.tokenizer
            checkpoint["tokenizer"] = tokenizer.to_dict()
            if has_chat_tokens(tokenizer):  # generate --chat renders prompts with this template
                checkpoint["chat_template"] = TEMPLATE_NAME

    def _check_finite_weights(self, state: dict[str, Any]) -> None:
        """Refuse to save non-finite weights (one host read per save; every rank takes part)."""
        finite, bad = nonfinite_tensors(state)
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        raise NonFiniteLossError(
            f"The weights became non-finite ({len(bad)} tensors, e.g. {', '.join(bad[:3]) or 'on another rank'})"
            f" at step {self.global_step}; no checkpoint was written, so the last one is intact. "
            "Resume with --ckpt_path last and a lower learning rate (--model.optimizer.lr) or gradient "
            "clipping (--trainer.gradient_clip_val 1.0)."
        )

    def on_train_start(self) -> None:
        """FSDP2 and FSDP1 load a checkpoint's optimizer state straight into the optimizer (FSDP1 from a file
        too), before ``on_load_checkpoint`` can rewrite it: the configured settings are set on the live groups
        here (where the checkpoint's groups were rewritten and then loaded, this changes nothing)."""
        if self.trainer.ckpt_path is None:
            return
        for optimizer in self.trainer.optimizers:
            apply_settings_to_groups(optimizer.param_groups, self.optim_cfg)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        # a checkpoint directory's optimizer state is loaded by the strategy: the hook sees meta.pt only
        directory = fitting and Path(str(self.trainer.ckpt_path)).is_dir()
        if fitting and not directory and "optimizer_states" not in checkpoint:
            raise ValueError(
                "--ckpt_path resumes a run, but this checkpoint holds weights only (no optimizer state or "
                "step), e.g. one made by lightning-llm import. To train from its weights, start a new run "
                "with --model.init_weights <that file> instead of --ckpt_path."
            )
        saved = checkpoint.get("model_config")
        if saved is None:
            return
        current = self.config.to_dict()
        # a field newer than the checkpoint takes its default there (e.g. qk_norm: false), not None
        defaults = {f.name: f.default for f in fields(GPTConfig) if f.default is not MISSING}
        saved = {**defaults, **saved}
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
            hint = (
                " vocab_size follows the dataset's tokenizer (padded to a multiple of 64): resume on the "
                "dataset the checkpoint was trained on (--data.path)."
                if "vocab_size" in diff
                else ""
            )
            raise ValueError(
                f"Cannot resume: the checkpoint was trained with a different model config ({lines}). "
                "Resume with the config the run was started with, or start a new run without --ckpt_path."
                + hint
            )
        self._apply_changed_settings(checkpoint)

    def _apply_changed_settings(self, checkpoint: dict[str, Any]) -> None:
        """Settings that may change on resume (optimizer, schedule, NaN policy, batch) win over the
        checkpoint's, and each change is said once. The optimizer's saved state would otherwise restore
        the old learning rate, weight decay and betas."""
        old = checkpoint.get("hyper_parameters", {})
        new = dict(self.hparams)
        changes = []
        for key in sorted(set(new) - {"config"}):
            before, after = old.get(key), new[key]
            if isinstance(before, dict) and isinstance(after, dict):
                changes += [  # a field newer than the checkpoint is not a change
                    f"{key}.{k}: {before[k]!r} -> {v!r}"
                    for k, v in after.items()
                    if k in before and before[k] != v
                ]
            elif key in old and before != after:
                changes.append(f"{key}: {before!r} -> {after!r}")
        if changes:
            rank_zero_info("Resuming with changed settings (the command line wins): " + "; ".join(changes))
        apply_optimizer_settings(checkpoint, self.optim_cfg)
