"""Registries: lookup errors, duplicates, options, and entry-point discovery (real and broken)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lightning_llm.registry import ATTENTION, POSITIONAL, ComponentError, Registry


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(ComponentError) as err:
        ATTENTION.get("flsh")
    msg = str(err.value)
    assert "Unknown attention 'flsh'" in msg
    for name in ("naive", "sdpa", "flash"):
        assert name in msg
    assert "lightning_llm.attention" in msg  # tells plugin authors where to register


def test_duplicates_raise_unless_override() -> None:
    reg: Registry[object] = Registry("widget", "lightning_llm.tests.no_such_group")
    first, second = object(), object()
    reg.register("a", first)
    reg.register("a", first)  # the same object again (a re-import) is harmless
    with pytest.raises(ComponentError, match="override=True"):
        reg.register("a", second)
    assert reg.get("a") is first
    reg.register("a", second, override=True)
    assert reg.get("a") is second


def test_decorator_registration() -> None:
    reg: Registry[type] = Registry("widget", "lightning_llm.tests.no_such_group")

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing and reg.names() == ["thing"]


def test_bad_option_lists_the_valid_ones() -> None:
    with pytest.raises(ComponentError) as err:
        POSITIONAL.build("rope", 32, 4, 8, 64, bse=10.0)
    msg = str(err.value)
    assert "'bse'" in msg and "base=10000.0" in msg and "scaling='none'" in msg and "factor=1.0" in msg


def test_installed_plugin_is_discovered_through_its_entry_point() -> None:
    entry = POSITIONAL.entry("alibi")
    assert entry.source.split()[0] == "lightning-llm-alibi"
    assert "alibi" in POSITIONAL.names()


def test_a_broken_entry_point_does_not_break_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real (fake) distribution on sys.path with one good and one broken entry point."""
    dist = tmp_path / "fake_llm_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-llm-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [lightning_llm.tests.fake_group]
            good = fake_llm_plugin_mod:Good
            broken = fake_llm_plugin_missing_mod:Nope
            """
        )
    )
    (tmp_path / "fake_llm_plugin_mod.py").write_text("class Good:\n    description = 'fine'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("widget", "lightning_llm.tests.fake_group")
    assert reg.names() == ["good"]
    assert reg.entry("good").source == "fake-llm-plugin 0.3"
    assert reg.get("good").description == "fine"
    with pytest.raises(ComponentError, match="installed but fake-llm-plugin 0.3: failed to import"):
        reg.get("broken")
    assert "broken" in reg.entry_point_errors()
