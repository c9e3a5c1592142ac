"""The package's floors (ARCHITECTURE.md): import-linter's contracts in pyproject.toml, and the
size limits that keep each module and function readable."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# A longer function says why in a comment of its own that starts like this.
LONG_REASON = re.compile(r"#\s*long:", re.IGNORECASE)


def test_import_contracts_hold():
    """Layers, 'model is the network alone' and no import circles (inside functions too)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is missing: pip install 'lstm-asr[dev]' (bash scripts/setup.sh does)")
    result = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path: Path):
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path}: {len(lines)} lines (split it by what its parts do)"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            assert length <= MAX_FUNCTION_LINES or LONG_REASON.search(body), (
                f"{path}:{node.lineno}: {node.name} has {length} lines; split it, or say why in a '# long: ...' comment")


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc and "TODO" not in doc, f"{init}: a one-line docstring saying what it holds and imports"
