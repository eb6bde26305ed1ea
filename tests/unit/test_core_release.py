"""The code's fingerprint (``app/core/release.py``): what names the answers a release stores in
Valkey, so that it must change with any Python file of the package and with nothing else."""

from __future__ import annotations

from pathlib import Path

from app.core.release import code_fingerprint


def package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_same_code_has_the_same_fingerprint_wherever_it_lies(tmp_path: Path) -> None:
    files = {"a.py": "A = 1\n", "domains/verbs.py": "LEFT = '{actor} left {project}'\n"}
    assert code_fingerprint(package(tmp_path / "one", files)) == code_fingerprint(
        package(tmp_path / "two", files)
    )


def test_a_changed_renamed_added_or_removed_module_changes_it(tmp_path: Path) -> None:
    root = package(tmp_path, {"a.py": "A = 1\n", "domains/verbs.py": "LEFT = '{actor} removed {actor}'\n"})
    seen = {code_fingerprint(root)}
    (root / "domains/verbs.py").write_text("LEFT = '{actor} left {project}'\n")
    seen.add(code_fingerprint(root))
    (root / "a.py").rename(root / "b.py")
    seen.add(code_fingerprint(root))
    (root / "db").mkdir()
    (root / "db/queries.py").write_text("")
    seen.add(code_fingerprint(root))
    (root / "b.py").unlink()
    seen.add(code_fingerprint(root))
    assert len(seen) == 5


def test_compiled_files_and_other_files_do_not_count(tmp_path: Path) -> None:
    root = package(tmp_path, {"a.py": "A = 1\n"})
    before = code_fingerprint(root)
    package(root, {"__pycache__/a.cpython-311.pyc": "compiled", "notes.txt": "x", "a.pyi": "A: int\n"})
    assert code_fingerprint(root) == before
