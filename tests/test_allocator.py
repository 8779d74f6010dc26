"""``lightning_llm.allocator``: cache mode stops the per-step page faults of large allocations."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from lightning_llm.allocator import configure_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MiB tensor five times per round; count the minor page faults of the
# last round. The first rounds pay for first touches in every mode, and in cache mode the heap takes a
# round or two to settle (small blocks of lazily started threads land between the big ones).
CHURN = """
import resource, sys, torch
from lightning_llm.allocator import configure_allocator
print(configure_allocator(sys.argv[1]))
def churn():
    for _ in range(5):
        t = torch.empty(16 * 2**20)
        t.fill_(1.0)
        del t
for _ in range(3):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are for Linux/glibc")
def test_cache_mode_reuses_freed_memory_without_page_faults() -> None:
    mode, system = _faults("system")
    assert mode == "system"
    if system < 1000:
        pytest.skip(f"glibc's default faulted only {system} pages here (huge pages?): nothing to compare")
    mode, cached = _faults("cache")
    assert mode == "cache"
    assert cached < system / 10, (system, cached)


def test_unknown_mode_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="cache, system"):
        configure_allocator("jemalloc")
    monkeypatch.setenv("LIGHTNING_LLM_MALLOC", "Fast")
    with pytest.raises(ValueError, match="LIGHTNING_LLM_MALLOC='fast'"):
        configure_allocator()


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are for Linux/glibc")
def test_system_after_cache_is_an_error_not_a_silent_no_op() -> None:
    code = (
        "from lightning_llm.allocator import configure_allocator as c\n"
        "assert c('cache') == 'cache' and c('cache') == 'cache'\n"
        "try:\n    c('system')\nexcept RuntimeError as e:\n    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused:") and "cannot go back" in out
