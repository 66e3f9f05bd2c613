"""The house rules of README *Architecture*, checked on the source: gradio only in tab files, the
core never imports a feature, and no module keeps per-studio state in a global keyed by studio."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dreamshot", "labeling", "training")
FEATURES = ("dreamshot.generate", "dreamshot.survey", "dreamshot.evaluate", "dreamshot.video",
            "labeling", "training")


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_tab_files_and_the_ui_helpers_import_gradio():
    offenders = [str(path.relative_to(ROOT)) for path, tree in _sources()
                 if any(n == "gradio" or n.startswith("gradio.") for n in _imported(tree))
                 and not path.name.startswith("tab") and path.relative_to(ROOT) != Path("dreamshot/ui.py")]
    assert not offenders, f"gradio imported outside tab files: {offenders}"


def test_the_core_never_imports_a_feature():
    offenders = []
    for path, tree in _sources():
        if path.parent != ROOT / "dreamshot":
            continue
        bad = {n for n in _imported(tree) if any(n == f or n.startswith(f + ".") for f in FEATURES)}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, "the core imports features:\n" + "\n".join(offenders)


def test_taxonomy_and_template_settings_are_read_and_written_only_by_shots():
    offenders = []
    for path, tree in _sources():
        if path.relative_to(ROOT) == Path("dreamshot/shots.py"):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get_setting", "set_setting") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in ("taxonomy", "prompt_template")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"taxonomy/template settings touched outside dreamshot/shots.py: {offenders}"
