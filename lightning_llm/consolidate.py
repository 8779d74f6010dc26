"""A distributed checkpoint directory (FSDP2 / tensor parallel) as one checkpoint dictionary, in one process.

Lightning's ``ModelParallelStrategy`` saves a checkpoint as a directory: ``torch.distributed.checkpoint``
shard files (``__<rank>_0.distcp``), their index ``.metadata`` (where each chunk of each tensor lies), and
``meta.pt`` (everything that is not a tensor of the model or optimizer: step, loops, callbacks, schedulers,
``hyper_parameters``, ``model_config``, ``tokenizer``; written by rank 0). ``consolidate_checkpoint`` reads
them back without a process group: every tensor is assembled at its full (global) shape from the chunks
that the ranks wrote, straight from the files, so the result holds plain tensors, never DTensors, whatever
the data/tensor-parallel layout of the run was and on any number of processes.

The result has the shape of a single-file Lightning checkpoint: ``state_dict`` (``model.``-prefixed),
``optimizer_states`` (a list, one per optimizer), and the keys of ``meta.pt``. The optimizer state stays
keyed by parameter name (what ``get_optimizer_state_dict(full_state_dict=True)`` gives and
``set_optimizer_state_dict`` takes); ``torch.optim.Optimizer.load_state_dict`` accepts it too, since it
matches the saved and current parameters by their order in the parameter groups. So a consolidated file
resumes ``lightning-llm fit --ckpt_path FILE``; ``weights_only=True`` leaves the optimizer, scheduler and
callback states out (a smaller file for generate, export and ``--model.init_weights``).

Nothing is unpickled beyond what the checkpoint format needs: ``.metadata`` is read by an unpickler that
admits only ``torch.distributed.checkpoint``'s own metadata classes, and the non-tensor items and ``meta.pt``
are checked with ``torch.load(weights_only=True)``; anything else is refused with a ``UserError``.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lightning_llm.cli import UserError

METADATA_FILE = ".metadata"
"""``torch.distributed.checkpoint``'s index of the shard files: what marks a directory as a checkpoint."""
LIGHTNING_META_FILE = "meta.pt"
"""Lightning's file of non-tensor state next to the shards (``lightning.fabric.utilities.load``)."""
WEIGHTS_ONLY_DROPS = ("optimizer_states", "lr_schedulers", "callbacks")
"""What ``weights_only=True`` leaves out: what Lightning's ``save_weights_only`` checkpoints leave out."""

_TORCH_TYPES = (torch.dtype, torch.layout, torch.memory_format)


def is_distributed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``torch.distributed.checkpoint`` (it has a ``.metadata``)."""
    return Path(path).is_dir() and (Path(path) / METADATA_FILE).is_file()


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickled reference to a Python object that a checkpoint index has no business holding."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a ``.metadata`` file: ``torch.distributed.checkpoint``'s metadata classes, torch dtypes,
    sizes and layouts, and paths; any other global (a function to call, a class of another module) is
    refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (
            module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo"
        ):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        elif module == "torch":
            found = getattr(torch, name, None)
            if name == "Size" or isinstance(found, _TORCH_TYPES):
                return found
        elif (module, name) == ("torch.serialization", "_get_layout"):  # a layout by name, like torch.load
            return super().find_class(module, name)
        elif module.split(".")[0] == "pathlib" and name.endswith("Path"):
            return super().find_class(module, name)
        elif (module, name) in (("collections", "OrderedDict"), ("builtins", "set")):
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def _read_metadata(directory: Path) -> Any:
    """The ``Metadata`` of the checkpoint in ``directory`` (see ``_MetadataUnpickler``)."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = directory / METADATA_FILE
    try:
        with path.open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _RefusedGlobal as err:
        raise UserError(
            f"{path} is refused: it refers to {err}, which is not part of a torch.distributed.checkpoint "
            "index; unpickling it could run arbitrary code. Consolidate only checkpoint directories written "
            "by lightning-llm fit (FSDP2 / tensor parallel)."
        ) from None
    except PermissionError as err:
        raise UserError(f"{path} cannot be read: {err.strerror or err}.") from None
    except Exception as err:  # truncated or not a pickle at all: EOFError, ValueError, ...
        raise UserError(
            f"{path} is not a readable torch.distributed.checkpoint index ({type(err).__name__}: {err}): the "
            "checkpoint was not saved completely (an interrupted run or copy) or is corrupt. Use another "
            "checkpoint of the run (checkpoints/ keeps last.ckpt and the periodic ones)."
        ) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise UserError(
            f"{path} is not a torch.distributed.checkpoint index (it holds {type(metadata).__name__})."
        )
    return metadata


def _check_shard_files(directory: Path, metadata: Any) -> None:
    """Every shard file the index points to must be there (an interrupted save or copy leaves some out)."""
    files = {getattr(info, "relative_path", None) for info in (metadata.storage_data or {}).values()}
    missing = sorted(str(f) for f in files if f and not (directory / f).is_file())
    if missing:
        raise UserError(
            f"{directory} is an incomplete distributed checkpoint: its index lists shard file(s) "
            f"{', '.join(missing)} that are not in the directory (a save or copy that did not finish). Copy "
            "the whole directory, or use another checkpoint of the run."
        )


def torch_load_checked(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only; failures become one paragraph."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL ([A-Za-z_][\w.]*)", str(err))
        if found:  # a pickled reference to a Python object/function: refused, never executed
            raise UserError(
                f"{path} is refused: besides tensors and plain data it contains pickled Python objects "
                f"({', '.join(dict.fromkeys(found))}), which could run arbitrary code when loaded. "
                "lightning-llm loads checkpoints with torch.load(weights_only=True) only; a checkpoint written "
                "by lightning-llm fit holds tensors and plain data alone. Use a checkpoint you trained, "
                "or re-save only its tensors from a trusted environment."
            ) from None
        detail = "not a PyTorch file"
    except PermissionError as err:
        raise UserError(f"{path} cannot be read: {err.strerror or err}.") from None
    except EOFError:
        detail = "the file is empty" if path.stat().st_size == 0 else "it ends too early"
    except (RuntimeError, OSError) as err:  # torch's zip reader on a truncated or foreign archive
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        detail = f"torch.load: {first[:160]}"
    except Exception:  # the legacy reader on a text file or random bytes: KeyError, IndexError, ...
        detail = "not a PyTorch file"
    raise UserError(
        f"{path} is not a readable PyTorch checkpoint ({detail}): it is truncated (e.g. an interrupted copy "
        "or download), corrupt, or not a checkpoint at all. Point --ckpt_path at a .ckpt file written by "
        "lightning-llm fit (e.g. runs/<name>/checkpoints/last.ckpt)."
    )


def _load_lightning_meta(directory: Path) -> dict[str, Any]:
    """``meta.pt``: the non-tensor state Lightning saves next to the shards."""
    path = directory / LIGHTNING_META_FILE
    if not path.is_file():
        raise UserError(
            f"{directory} is a torch.distributed.checkpoint directory but not a Lightning checkpoint: it has no "
            f"{LIGHTNING_META_FILE} (Lightning's ModelParallelStrategy writes one with the step, model_config "
            "and tokenizer). Point --ckpt_path at a checkpoint directory written by lightning-llm fit."
        )
    meta = torch_load_checked(path)
    if not isinstance(meta, dict):
        raise UserError(
            f"{path} holds a {type(meta).__name__}, not Lightning's dictionary of checkpoint state."
        )
    return meta


def _restore_tied(state: dict[str, torch.Tensor], model_config: dict[str, Any]) -> None:
    """Make a tied head the embedding's tensor again (one copy in memory and in a saved file)."""
    wte, head = state.get("model.wte.weight"), state.get("model.lm_head.weight")
    if model_config.get("tie_embeddings") and wte is not None and head is not None and torch.equal(wte, head):
        state["model.lm_head.weight"] = wte


def _planner(keys: set[str] | None, directory: Path) -> Any:
    """torch's planner that rebuilds the state dict from the index alone (``_EmptyStateDictLoadPlanner``,
    limited to the top-level ``keys``), checking each non-tensor item with ``torch.load(weights_only=True)``
    before torch loads it."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                torch.load(value, weights_only=True)
            except pickle.UnpicklingError:
                raise UserError(
                    f"{directory} is refused: its item {read_item.dest_index.fqn!r} holds pickled Python "
                    "objects besides plain data, which could run arbitrary code when loaded. lightning-llm "
                    "loads checkpoints with torch.load(weights_only=True) only."
                ) from None
            value.seek(0)
            super().load_bytes(read_item, value)

    return Planner(keys=keys)


def consolidate_checkpoint(directory: str | Path, weights_only: bool = False) -> dict[str, Any]:
    """The distributed checkpoint in ``directory`` as one single-file-style Lightning checkpoint dictionary.

    Args:
        directory: A checkpoint directory written by ``lightning-llm fit`` under ``ModelParallelStrategy``
            (e.g. ``runs/fsdp2/checkpoints/last.ckpt``).
        weights_only: Read the model weights and the non-tensor state only: no optimizer states (whose
            tensors are twice the size of the weights for AdamW), learning-rate schedulers or callback
            states. Enough for generate, export and ``--model.init_weights``; not for resuming a run.

    Returns:
        ``state_dict`` (full plain tensors, ``model.``-prefixed names), ``optimizer_states`` (unless
        ``weights_only``) and everything in ``meta.pt`` (``global_step``, ``model_config``, ``tokenizer``,
        ``hyper_parameters``, ...). Everything is on the CPU.

    Raises:
        UserError: ``directory`` is not a directory, not a distributed checkpoint, incomplete, unsafe to
            load, or not a lightning-llm checkpoint.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    directory = Path(directory)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is a file, not a directory"
        raise UserError(
            f"{directory} {what}: consolidate reads a distributed checkpoint directory (one written by an "
            "FSDP2 / tensor-parallel run, e.g. runs/fsdp2/checkpoints/last.ckpt). A .ckpt file is already "
            "consolidated: pass it to generate or export as it is."
        )
    if not (directory / METADATA_FILE).is_file():
        raise UserError(
            f"{directory} is a directory but not a distributed checkpoint: it has no {METADATA_FILE} file "
            "(torch.distributed.checkpoint's index, written last when a save completes). Point --ckpt_path at "
            "a checkpoint directory written by an FSDP2 / tensor-parallel run of lightning-llm fit."
        )
    metadata = _read_metadata(directory)
    meta = _load_lightning_meta(directory)
    if "model_config" not in meta:
        raise UserError(
            f"{directory} is a Lightning checkpoint but not a lightning-llm one: its {LIGHTNING_META_FILE} has "
            "no model_config (lightning-llm fit saves the model's architecture with every checkpoint)."
        )
    groups = {key.split(".", 1)[0] for key in metadata.state_dict_metadata}
    if "state_dict" not in groups:
        raise UserError(
            f"{directory} holds no model weights (its index has no state_dict entries, only "
            f"{', '.join(sorted(groups)) or 'nothing'}): it was not written by lightning-llm fit."
        )
    _check_shard_files(directory, metadata)

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:  # the index read (safely) above
            if metadata.storage_meta is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    keys = {"state_dict"} if weights_only else None
    state: dict[str, Any] = {}
    try:
        _load_state_dict(
            state,
            storage_reader=Reader(directory),
            planner=_planner(keys, directory),
            no_dist=True,
        )
    except UserError:
        raise
    except Exception as err:  # a shard file shorter than its index says, unreadable, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{directory}: its shard files cannot be read ({first[:200]}): the checkpoint is corrupt or was not "
            "copied completely. Use another checkpoint of the run."
        ) from None

    ckpt: dict[str, Any] = dict(meta)
    ckpt["state_dict"] = state.pop("state_dict")
    _restore_tied(ckpt["state_dict"], meta["model_config"])
    optimizers = sorted((k for k in state if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if weights_only:
        for key in WEIGHTS_ONLY_DROPS:
            ckpt.pop(key, None)
    else:
        ckpt["optimizer_states"] = [state.pop(k) for k in optimizers]
    return ckpt


def describe(ckpt: dict[str, Any]) -> str:
    """One line on a consolidated checkpoint: tensors, parameters, step, and whether it can resume."""
    weights = ckpt["state_dict"]
    unique = {id(t): t for t in weights.values() if torch.is_tensor(t)}
    params = sum(t.numel() for t in unique.values())
    resumable = "with optimizer state: resumable" if ckpt.get("optimizer_states") else "weights only"
    return f"{len(weights)} tensors, {params:,} numbers, step {ckpt.get('global_step', '?')}, {resumable}"
