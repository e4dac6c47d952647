"""The examples in ember's docstrings run and show what they claim (doctest)."""
import doctest
import importlib
import pkgutil

import pytest

import ember

MODULES = sorted(m.name for m in pkgutil.walk_packages(ember.__path__, "ember.")
                 if not m.name.split(".")[-1].startswith("_"))


def test_the_modules_are_found():
    assert {"ember.trainer", "ember.checkpoint", "ember.sklearn", "ember.data"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    if name == "ember.sklearn":
        pytest.importorskip("sklearn")
    if name == "ember.export":
        pytest.importorskip("onnxruntime")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    if name in ("ember.checkpoint", "ember.data", "ember.sklearn", "ember.trainer"):
        assert result.attempted > 0, f"{name} should hold examples"
