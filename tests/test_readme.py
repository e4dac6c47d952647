"""The README's commands and examples stay true."""
import re
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_two_commands_ci_runs():
    bash = "\n".join(_blocks("bash"))
    assert "pip install . && ember train" in bash
    assert 'pip install ".[test]" && python -m pytest' in bash
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest" in ci


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {}
    for block in _blocks("python"):
        if "cupy" in block:
            continue  # needs a GPU; the CuPy path is covered by the gpu-marked tests
        # fewer epochs, same code
        exec(block.replace("epochs=50", "epochs=2").replace("range(10)", "range(2)"), ns)
    assert (tmp_path / "curves.png").exists()


def test_readme_cupy_example_is_valid_python():
    blocks = [b for b in _blocks("python") if "cupy" in b]
    assert blocks
    for b in blocks:
        compile(b, "README", "exec")
