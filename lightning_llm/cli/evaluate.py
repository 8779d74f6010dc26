"""``lightning-llm eval``: score a checkpoint on lm-evaluation-harness tasks and write lm-eval's results.

``classics_continuation`` (``lightning_llm.interop.classics_task``) is always available: it is generated
from the classics corpus into a local directory on first use and read from there, with Hugging Face's
hub and datasets set offline when it is the only task. Any other task name goes to lm-eval as it is,
and such tasks download their data from the Hugging Face Hub unless it is cached. The model is wrapped by
``lightning_llm.interop.lm_eval_adapter``; lm-eval itself is the optional ``eval`` extra.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning_llm.cli import UserError

LOCAL_TASK = "classics_continuation"  # lightning_llm.interop.classics_task.TASK_NAME (checked by a test)
DTYPE_CHOICES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def _say(line: str) -> None:
    print(f"eval: {line}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-llm eval",
        description="Score a lightning-llm checkpoint on lm-evaluation-harness tasks (pip install "
        "'lightning-llm[eval]'), print lm-eval's results table and write its results as JSON.",
        epilog=f"{LOCAL_TASK} (a multiple-choice task generated from the classics corpus: which of four "
        "lines comes next after a passage) is always available and runs offline. Any other name is an "
        "lm-eval task, group or tag (list them with `lm-eval ls tasks`, e.g. hellaswag, arc_easy, "
        "lambada_openai, wikitext): those download their data from the Hugging Face Hub unless it is "
        "already in its cache.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint file written by lightning-llm fit")
    parser.add_argument(
        "--tasks",
        required=True,
        help=f"comma-separated task names, e.g. {LOCAL_TASK} or {LOCAL_TASK},hellaswag",
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=None,
        help="score only the first N items of each task (a number below 1: that fraction of them)",
    )
    parser.add_argument(
        "--num_fewshot",
        type=int,
        default=None,
        help="solved examples put before each item (default: the task's)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass (default 16)")
    parser.add_argument(
        "--max_gen_toks",
        type=int,
        default=256,
        help="tokens to generate for generation tasks that do not say (default 256)",
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="precision: auto is bfloat16 on a GPU that has it, else float16 on a GPU; float32 on the CPU",
    )
    parser.add_argument(
        "--seed", type=int, default=1234, help="seed of lm-eval and of sampling (default 1234)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="results JSON to write (default: next to the checkpoint, <checkpoint name>.eval.json)",
    )
    parser.add_argument(
        "--task_dir",
        default=None,
        help=f"where {LOCAL_TASK} is generated and kept "
        "(default: $LIGHTNING_LLM_CACHE/eval_tasks/classics_continuation, cache ~/.cache/lightning_llm)",
    )
    return parser


def _task_names(spec: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise UserError(
            f"--tasks {spec!r} names no task. Give one or more comma-separated task names, e.g. "
            f"--tasks {LOCAL_TASK} (local, offline) or --tasks {LOCAL_TASK},hellaswag."
        )
    return names


def _limit(value: float | None) -> int | float | None:
    if value is None:
        return None
    if not value > 0:
        raise UserError(f"--limit {value:g}: give a number of items (>= 1) or a fraction between 0 and 1.")
    if value >= 1:
        if value != int(value):
            raise UserError(f"--limit {value:g}: a number of items is a whole number.")
        return int(value)
    return value


def _device(name: str) -> Any:
    """``--device`` as a torch device: ``auto`` picks the GPU when there is one."""
    import torch

    from lightning_llm.cli.generate import resolve_device

    if name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: eval runs on cpu or cuda; use --device auto, cpu, cuda or cuda:N.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: PyTorch finds no CUDA GPU here. Use --device cpu (or auto).")
    return resolve_device(name)


def _task_manager(names: list[str], task_dir: Path | None) -> Any:
    """lm-eval's TaskManager that knows every name in ``names`` (only our directory when that is enough),
    or a UserError listing those it does not know."""
    from lm_eval.tasks import TaskManager

    others = [n for n in names if n != LOCAL_TASK]
    if others:
        _say("indexing lm-eval's task catalogue (thousands of task files: 10-30 s)")
    manager = TaskManager(include_path=str(task_dir) if task_dir else None, include_defaults=bool(others))
    known = set(manager.all_tasks)
    unknown = [n for n in others if n not in known and not Path(n).is_file()]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
        raise UserError(
            f"--tasks: lm-eval has no task, group or tag {', '.join(hints)}. List the tasks lm-eval knows "
            f"with `lm-eval ls tasks`; {LOCAL_TASK} is the local task of lightning-llm."
        )
    return manager


def _default_output(ckpt_path: str) -> Path:
    path = Path(ckpt_path)
    return path.with_name(f"{path.stem}.eval.json")


def _write_json(path: Path, results: dict[str, Any]) -> None:
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(
            f"Cannot write the results to {path} ({err.strerror or err}); choose another file with --output."
        ) from None


def evaluate_main(argv: list[str]) -> None:
    """Entry point of ``lightning-llm eval``."""
    args = _parser().parse_args(argv)
    names = _task_names(args.tasks)
    limit = _limit(args.limit)
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: score at least 1 sequence at a time.")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num_fewshot {args.num_fewshot}: give 0 or more examples.")
    if args.max_gen_toks < 1:
        raise UserError(f"--max_gen_toks {args.max_gen_toks}: generate at least 1 token.")
    from lightning_llm.cli.generate import _check_local_file, dtype_name, load_checkpoint, resolve_dtype

    _check_local_file(args.ckpt_path)  # before the slow part: a missing file is said at once
    device = _device(args.device)
    dtype, why = resolve_dtype(args.dtype, device)
    if names == [LOCAL_TASK]:  # nothing to download: make sure nothing is tried (read when datasets loads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from lightning_llm.interop.lm_eval_adapter import GPTEvalLM  # UserError when lm_eval is missing

    task_dir = None
    if LOCAL_TASK in names:
        from lightning_llm.interop.classics_task import default_task_dir, ensure_task

        target = Path(args.task_dir) if args.task_dir else default_task_dir()
        if not (target / "task.json").is_file():
            _say(f"generating {LOCAL_TASK} from the classics corpus into {target} (once)")
        task_dir, _ = ensure_task(target)
    manager = _task_manager(names, task_dir)

    _say(f"reading {args.ckpt_path} ({dtype_name(dtype)} on {device}; {why})")
    model, tokenizer = load_checkpoint(args.ckpt_path, device, dtype)
    lm = GPTEvalLM(
        model, tokenizer, batch_size=args.batch_size, max_gen_toks=args.max_gen_toks, seed=args.seed
    )

    from lm_eval import simple_evaluate
    from lm_eval.utils import make_table

    try:
        results = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            device=str(device),
            limit=limit,
            task_manager=manager,
            log_samples=False,
            random_seed=args.seed,
            numpy_random_seed=args.seed,
            torch_random_seed=args.seed,
            fewshot_random_seed=args.seed,
        )
    except OSError as err:  # a dataset that could not be downloaded or read (datasets, huggingface_hub)
        raise UserError(
            f"lm-eval could not load the data of {', '.join(names)}: {str(err).strip().splitlines()[0]}. "
            f"Tasks other than {LOCAL_TASK} download their data from the Hugging Face Hub on first use: "
            "run once where the Hub can be reached (the data is then cached), or evaluate on "
            f"{LOCAL_TASK} alone, which runs offline."
        ) from None
    assert results is not None  # one process: rank 0
    results["lightning_llm"] = {
        "ckpt_path": str(Path(args.ckpt_path).resolve()),
        "device": str(device),
        "dtype": dtype_name(dtype),
        "tasks": names,
        "local_task_dir": str(task_dir) if task_dir else None,
    }
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    output = Path(args.output) if args.output else _default_output(args.ckpt_path)
    _write_json(output, results)
    _say(f"wrote {output}")
