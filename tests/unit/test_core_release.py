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


def test_caches_beside_their_sources_and_other_files_do_not_count(tmp_path: Path) -> None:
    root = package(tmp_path, {"a.py": "A = 1\n"})
    before = code_fingerprint(root)
    package(root, {"__pycache__/a.cpython-311.pyc": "compiled", "notes.txt": "x", "a.pyi": "A: int\n"})
    package(root, {"a.pyc": "compiled beside its source"})
    assert code_fingerprint(root) == before


def test_an_install_without_sources_is_told_apart_by_its_compiled_modules(tmp_path: Path) -> None:
    """Review: with ``.py`` files only, every sourceless release (``compileall -b``, sources
    deleted) had the same fingerprint, and read the other's answers."""
    one = code_fingerprint(package(tmp_path / "one", {"a.pyc": "release one"}))
    two = code_fingerprint(package(tmp_path / "two", {"a.pyc": "release two"}))
    assert one != two


def test_a_file_that_cannot_be_read_is_passed_over(tmp_path: Path) -> None:
    """Review: an editor's lock (``.#db.py``, a link to nowhere) stopped every process at import."""
    root = package(tmp_path, {"a.py": "A = 1\n"})
    before = code_fingerprint(root)
    (root / ".#a.py").symlink_to(root / "nowhere")
    assert code_fingerprint(root) == before
