"""The LightningModule: next-token loss, optimizer (AdamW or Muon + AdamW), LR schedule, perplexity, NaN guard.

Batches are token windows ``(B, T + 1)`` (pretraining: every next token is a target) or
``{"input_ids": (B, T), "labels": (B, T)}`` (instruction tuning: labels already shifted, ``-100`` where no
loss is taken, e.g. the prompt and padding). Checkpoint hooks live in ``checkpoint_hooks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any, Literal, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lightning_llm.chat import IGNORE_INDEX
from lightning_llm.checkpoint_hooks import CheckpointHooks
from lightning_llm.checkpointing import check_disk_space
from lightning_llm.config import GPTConfig, pad_vocab_size
from lightning_llm.model import GPT
from lightning_llm.nonfinite import NonFiniteLossError, NonFiniteTracker
from lightning_llm.optim import OptimizerConfig, ScheduleConfig
from lightning_llm.optimization_hooks import OptimizationHooks
from lightning_llm.parallel import data_parallel_size
from lightning_llm.precision import fsdp_param_dtype, training_dtype


@runtime_checkable
class TokenData(Protocol):
    """What ``LitGPT`` reads from the trainer's datamodule (``TokenDataModule`` is one).

    ``vocab_size`` is checked against the model's embedding table, ``batch_size`` turns a global batch into
    gradient accumulation, and ``tokenizer`` (with ``to_dict()``) is stored in every checkpoint so that
    ``generate`` needs nothing else. Any other datamodule trains too; the module says once what it skips.
    """

    batch_size: int
    vocab_size: int
    tokenizer: Any


class LitGPT(CheckpointHooks, OptimizationHooks, L.LightningModule):
    """Trains a ``GPT`` on batches of token windows (B, T + 1), or of inputs and labels (instruction tuning).

    Args:
        config: The model architecture and its components.
        optimizer: The optimizer (AdamW, or Muon with AdamW) and its settings.
        schedule: Learning-rate schedule.
        global_batch_size: Sequences per optimizer step across all devices; sets gradient accumulation
            (must be a multiple of data.batch_size x world size). None: no accumulation beyond the trainer's.
        global_batch_tokens: The same in tokens (global_batch_size x block_size); only one of the two.
        compile: true or "blocks": torch.compile each transformer block (regional, fast to compile);
            "model": the whole model, vocabulary head and fused loss included, in one graph (nanoGPT's
            way; single device or DDP only); false: eager.
        activation_checkpointing: Recompute each block's activations in the backward pass to save memory.
        tensor_parallel: With ModelParallelStrategy, shard linear layers over the tensor-parallel mesh dim.
        on_nonfinite_loss: "stop" raises at the first NaN/inf loss (the last checkpoint stays intact);
            "skip" drops that step's update and continues (single process only).
        max_skipped_steps: With "skip", stop the run once more steps than this were skipped in all, or
            3 in a row (a model that keeps producing NaN is not recovering).
        init_weights: Start from the weights of this checkpoint (e.g. made by ``lightning-llm import``, or
            another run's), at step 0 with a fresh optimizer; its architecture and tokenizer must match this
            run's. Ignored when resuming with --ckpt_path (the run's own checkpoint wins, and says so).
        freeze_embeddings: Train everything but the token (and learned position) embeddings. With tied
            embeddings this freezes the output head too, and new special tokens keep their initial rows.
    """

    def __init__(
        self,
        config: GPTConfig,
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 - frozen-in-use default, never mutated
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        global_batch_size: int | None = None,
        global_batch_tokens: int | None = None,
        compile: bool | Literal["blocks", "model"] = False,
        activation_checkpointing: bool = False,
        tensor_parallel: bool = False,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
        max_skipped_steps: int = 20,
        init_weights: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if global_batch_size is not None and global_batch_tokens is not None:
            raise ValueError("Give global_batch_size (sequences) or global_batch_tokens, not both.")
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = GPTConfig.from_dict(config)
        config.check_components()  # unknown names / options fail here, before any data is touched
        self.config = config
        self.optim_cfg = (
            OptimizerConfig(**optimizer) if isinstance(optimizer, dict) else optimizer or OptimizerConfig()
        )
        self.sched_cfg = (
            ScheduleConfig(**schedule) if isinstance(schedule, dict) else schedule or ScheduleConfig()
        )
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "optimizer": asdict(self.optim_cfg),
                "schedule": asdict(self.sched_cfg),
                "global_batch_size": global_batch_size,
                "global_batch_tokens": global_batch_tokens,
                "compile": compile,
                "activation_checkpointing": activation_checkpointing,
                "tensor_parallel": tensor_parallel,
                "on_nonfinite_loss": on_nonfinite_loss,
                "max_skipped_steps": max_skipped_steps,
                "init_weights": init_weights,
                "freeze_embeddings": freeze_embeddings,
            }
        )
        self.global_batch_size = global_batch_size
        self.global_batch_tokens = global_batch_tokens
        self.compile = compile
        self.activation_checkpointing = activation_checkpointing
        self.tensor_parallel = tensor_parallel
        self.on_nonfinite_loss = on_nonfinite_loss
        self.max_skipped_steps = max_skipped_steps
        self.init_weights = init_weights
        self.freeze_embeddings = freeze_embeddings
        self._warm_started = False
        self.skipped_in_a_row = 0
        self.model: GPT | None = None
        self.token_data: TokenData | None = None  # the trainer's datamodule, if it is one (set in ``setup``)
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_exact = MeanMetric()  # conversations: replies the model reproduces exactly (greedy)
        self._chat_eval = False
        self.skipped_steps = 0
        self.nonfinite = NonFiniteTracker()

    # -- model construction -------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the GPT (on the meta device under FSDP2) and apply parallelism from the outside."""
        if self.model is None:
            self.model = self.build_gpt(
                self.activation_checkpointing, freeze_embeddings=self.freeze_embeddings
            )

    def build_gpt(
        self, activation_checkpointing: bool, *, freeze_embeddings: bool = False, frozen: bool = False
    ) -> GPT:
        """A GPT of ``self.config`` on the trainer's device and precision, parallelised like the run
        (FSDP2 / tensor parallel mesh, compile); ``LitDPO`` builds its reference with it too."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        from lightning_llm.parallel import parallelize

        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        precision = str(trainer.precision) if trainer is not None else "32-true"
        model = GPT(self.config, device_type=device.type, dtype=training_dtype(precision))
        if freeze_embeddings:
            self._freeze_embeddings(model)
        if frozen:  # before sharding, so FSDP2 plans no gradient reduction for it
            model.requires_grad_(False)
        strategy = trainer.strategy if trainer is not None else None
        mesh = self.device_mesh if isinstance(strategy, ModelParallelStrategy) else None
        parallelize(
            model,
            device=device,
            mesh=mesh,
            tensor_parallel=self.tensor_parallel,
            # FSDP1 checkpoints activations itself (activation_checkpointing_policy in its preset)
            activation_checkpointing=activation_checkpointing and not isinstance(strategy, FSDPStrategy),
            compile=self.compile,
            param_dtype=fsdp_param_dtype(precision) if mesh is not None else None,
        )
        return model

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        self.token_data = dm if isinstance(dm, TokenData) else None
        if self.token_data is not None:
            self._check_vocab(self.token_data)
            self._link_eot_id(self.token_data)
        elif stage == "fit":
            rank_zero_info(
                f"The datamodule ({type(dm).__name__}) has no batch_size, vocab_size and tokenizer "
                "(lightning_llm.module.TokenData): token ids are not checked against the model's vocabulary "
                "and checkpoints carry no tokenizer (generate will need one)."
            )
        if stage == "fit":
            self._set_accumulation()

    def _check_vocab(self, data: TokenData) -> None:
        """Every token id of the data must have a row in the embedding table."""
        if data.vocab_size > self.config.vocab_size:
            raise ValueError(
                f"The dataset's tokenizer ({getattr(data.tokenizer, 'name', type(data.tokenizer).__name__)}) "
                f"has {data.vocab_size} ids, but model.config.vocab_size is {self.config.vocab_size}. Set "
                f"model.config.vocab_size to at least {data.vocab_size} (e.g. {pad_vocab_size(data.vocab_size)}, "
                "padded for speed), or leave it out: the CLI links it from the dataset."
            )

    def _link_eot_id(self, data: TokenData) -> None:
        """``document_mask`` splits packed sequences at the dataset's ``<|endoftext|>``: take its id from the
        tokenizer (before the model is built, and into the saved hyper-parameters), or refuse a different one."""
        eot = getattr(data.tokenizer, "eot_id", None)
        if not self.config.document_mask or eot is None or self.config.eot_id == eot:
            return
        if self.config.eot_id is not None:
            raise ValueError(
                f"model.config.eot_id={self.config.eot_id}, but the dataset's tokenizer has <|endoftext|> = {eot}: "
                "document_mask would split documents at the wrong token. Leave model.config.eot_id out (it is "
                "taken from the dataset) or set it to the dataset's id."
            )
        self.config = replace(self.config, eot_id=eot)
        self.hparams["config"] = self.config.to_dict()

    def _set_accumulation(self) -> None:
        target = self.global_batch_size
        if self.global_batch_tokens is not None:
            if self.global_batch_tokens % self.config.block_size:
                raise ValueError(
                    f"global_batch_tokens={self.global_batch_tokens} is not a multiple of block_size="
                    f"{self.config.block_size}; use a multiple, or global_batch_size in sequences."
                )
            target = self.global_batch_tokens // self.config.block_size
        if target is None:
            return
        if self.token_data is None:
            raise ValueError(
                "global_batch_size / global_batch_tokens need a datamodule with a batch_size "
                "(lightning_llm.module.TokenData, e.g. TokenDataModule)."
            )
        micro = self.token_data.batch_size
        replicas = data_parallel_size(self.trainer.strategy)  # tensor-parallel ranks share a batch
        per_step = micro * replicas
        if target % per_step:
            raise ValueError(
                f"global batch of {target} sequences is not a multiple of data.batch_size ({micro}) x data-parallel "
                f"size ({replicas}) = {per_step}. Choose a global batch that is, e.g. "
                f"{max(1, target // per_step) * per_step}."
            )
        self.trainer.accumulate_grad_batches = target // per_step

    # -- steps --------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)  # type: ignore[misc]

    def _freeze_embeddings(self, model: GPT) -> None:
        frozen = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        for name in frozen:
            model.get_submodule(name).requires_grad_(False)
        tied = " (tied: the output head too)" if self.config.tie_embeddings else ""
        rank_zero_info(
            f"freeze_embeddings: {', '.join(frozen)} frozen{tied}; they get no gradient or update."
        )

    def _inputs_targets(
        self, batch: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of a batch: a (B, T + 1) window, or ``{"input_ids", "labels"}`` (labels shifted)."""
        if isinstance(batch, Mapping):
            x, y = batch["input_ids"], batch["labels"]
        else:
            x, y = batch[:, :-1], batch[:, 1:]
        if x.shape[1] > self.config.block_size:
            raise ValueError(
                f"The data yields sequences of {x.shape[1]} tokens but the model's block_size is "
                f"{self.config.block_size}; set data.block_size <= model.config.block_size."
            )
        return x, y

    def training_step(
        self, batch: torch.Tensor | Mapping[str, torch.Tensor], batch_idx: int
    ) -> torch.Tensor | None:
        x, y = self._inputs_targets(batch)
        loss = self.model(x, y)  # type: ignore[misc]
        if self.drop_nonfinite(loss):
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def drop_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether to drop this step's update. ``on_nonfinite_loss=stop`` never drops and never reads the loss
        on the host (the flag stays on the device, read at logging intervals and before every save, see
        ``_raise_if_nonfinite``); ``skip`` reads it each step (one synchronisation, said once at fit start)."""
        if self.on_nonfinite_loss != "skip":
            self.nonfinite.record(loss, self.global_step)
            return False
        if torch.isfinite(loss):
            self.skipped_in_a_row = 0
            return False
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self.skipped_in_a_row >= 3 or self.skipped_steps > self.max_skipped_steps:
            raise NonFiniteLossError(
                f"{self.skipped_steps} steps skipped for a non-finite loss ({self.skipped_in_a_row} in a "
                f"row, at optimizer step {self.global_step}): the model is not recovering "
                f"(limit: model.max_skipped_steps={self.max_skipped_steps}, 3 in a row). The last "
                "checkpoint is intact; resume it with a lower --model.optimizer.lr or gradient clipping."
            )
        return True

    def on_fit_start(self) -> None:
        self._check_disk_space()
        self._warm_start()
        if self.on_nonfinite_loss == "skip" and self.device.type != "cpu":
            rank_zero_info(
                "on_nonfinite_loss=skip reads every step's loss on the host (one synchronisation per step); "
                "'stop' checks at logging intervals and before each save instead."
            )

    def _check_disk_space(self) -> None:
        """Refuse to start when the checkpoint directory cannot hold one checkpoint."""
        dirpath = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if dirpath and self.trainer.is_global_zero:
            # fp32 weights + AdamW's exp_avg and exp_avg_sq: the bulk of the file
            check_disk_space(dirpath, 12 * sum(p.numel() for p in self.parameters()))

    def on_train_end(self) -> None:
        if self.skipped_steps:
            rank_zero_warn(
                f"{self.skipped_steps} training steps were skipped for a non-finite loss "
                "(on_nonfinite_loss=skip); their batches did not update the model."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = max(1, self.trainer.log_every_n_steps)
        if self.trainer.global_step % every == 0:
            self._raise_if_nonfinite()

    def on_test_start(self) -> None:
        self._warm_start()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "validate":
            self._warm_start()
        self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        step = self.nonfinite.first_step()
        if step is None:
            return
        raise NonFiniteLossError(
            f"Non-finite training loss at optimizer step {step} (found at step {self.global_step}). "
            "The run stopped; no checkpoint was written after that step, so the last one is intact and can "
            "be resumed with --ckpt_path last. Try a lower learning rate (--model.optimizer.lr), more warmup "
            "(--model.schedule.warmup_steps), gradient clipping (--trainer.gradient_clip_val 1.0), "
            "32-true or bf16-mixed precision instead of a 16-bit one, or --model.on_nonfinite_loss skip."
        )

    def validation_step(self, batch: torch.Tensor | Mapping[str, torch.Tensor], batch_idx: int) -> None:
        x, y = self._inputs_targets(batch)
        logits = self.model(x)  # type: ignore[misc]
        counted = y != IGNORE_INDEX  # all of them for token windows
        n = counted.sum()
        total = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        self.val_loss.update(total / n.clamp(min=1), weight=n)
        self.val_ppl.update(logits.float(), y)
        if isinstance(batch, Mapping):
            # a reply is reproduced exactly by greedy decoding iff each of its tokens (and <|end|>) is the
            # argmax given the true tokens before it: one forward pass, no generation
            self._chat_eval = True
            hit = ((logits.argmax(-1) == y) | ~counted).all(dim=-1)
            self.val_exact.update(hit.float(), weight=counted.any(dim=-1).float())

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """The validation computation on the test loader (``lightning-llm test``)."""
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        # the metrics sync over ranks in compute(); Lightning need not reduce them again
        self.log(f"{prefix}/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/ppl", self.val_ppl.compute(), prog_bar=True, sync_dist=False)
        if self._chat_eval:
            self.log(f"{prefix}/exact_match", self.val_exact.compute(), prog_bar=True, sync_dist=False)
            self.val_exact.reset()
        self.val_loss.reset()
        self.val_ppl.reset()
