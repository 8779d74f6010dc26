"""Run a ``lightning-llm`` subcommand in-process and split what it says (shared by the CLI tests).

A subprocess pays ~10-15 s of Python, torch and Lightning start-up per command; in-process runs of
``fit``/``validate``/... go inside ``isolated_process_state()`` so that what they change in this process does
not reach the tests that follow (keep 2-process runs and anything that needs a fresh process as subprocesses).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lightning_llm.cli import main

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
"""Loggers with their own stream handler (bound to the stderr of when Lightning was imported)."""


def run_command(
    capsys: pytest.CaptureFixture, command: str, *args: str, logs: bool = False
) -> tuple[str | None, str, str]:
    """``lightning-llm COMMAND ARGS``: (its one-paragraph error message or None, stdout, stderr).

    ``logs``: Lightning's log lines (``rank_zero_info``: "Restored all states ...") are part of stderr, as in
    a subprocess; otherwise they go to the stream Lightning's handlers were created with.
    """
    with _lightning_logs_to(sys.stderr) if logs else contextlib.nullcontext():
        try:
            main([command, *args])
            code = None
        except SystemExit as exc:
            code = exc.code
            assert isinstance(code, str), f"exit {code!r}: expected a one-paragraph error message"
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap.out, cap.err


def _stream_handlers(loggers) -> list[logging.StreamHandler]:
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


def _point(handler: logging.StreamHandler, stream) -> object:
    """Point ``handler`` at ``stream``; returns its old stream (not flushed: it may be a closed capture)."""
    with handler.lock:
        old, handler.stream = handler.stream, stream
    return old


@contextlib.contextmanager
def _lightning_logs_to(stream) -> Iterator[None]:
    handlers = _stream_handlers(logging.getLogger(name) for name in LIGHTNING_LOGGERS)
    old = [_point(h, stream) for h in handlers]
    try:
        yield
    finally:
        for h, s in zip(handlers, old, strict=True):
            h.flush()
            _point(h, s)


@contextlib.contextmanager
def isolated_process_state() -> Iterator[dict[str, str]]:
    """In-process runs leave no trace in this process; yields the environment from before them.

    Inside, ``LIGHTNING_LLM_MALLOC=system``: fit would put the allocator in 'cache' mode for good (a later
    run asking for 'system' could not go back). Restored afterwards: ``os.environ`` (Lightning leaves
    MASTER_PORT, LOCAL_RANK, PL_GLOBAL_SEED, ... there: later 2-process runs would all inherit that one port,
    and a child that sees LOCAL_RANK thinks it was launched and waits for its peers), torch's default dtype,
    deterministic and matmul settings, thread count and grad mode, the random generators that
    ``seed_everything`` seeds, and the level, handlers and propagation of the loggers that exist already
    (but the root logger's, where pytest adds and removes its own handlers per test phase). Stream handlers that modules imported inside add (Lightning's, torchmetrics', ...) would write to the
    test's captured stderr, closed after the test: they write to the process's stderr instead.
    """
    saved_env = dict(os.environ)
    torch_state = (
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_float32_matmul_precision(),
        torch.get_num_threads(),
        torch.is_grad_enabled(),
    )
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    log_state = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    handlers_before = set(map(id, _stream_handlers([logging.getLogger(), *loggers])))
    os.environ["LIGHTNING_LLM_MALLOC"] = "system"
    try:
        yield dict(saved_env)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        dtype, deterministic, warn_only, matmul, threads, grad = torch_state
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_float32_matmul_precision(matmul)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        for lg, level, handlers, propagate, disabled in log_state:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        every_logger = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
        for h in _stream_handlers(lg for lg in every_logger if isinstance(lg, logging.Logger)):
            if id(h) not in handlers_before:
                _point(h, sys.__stderr__)
