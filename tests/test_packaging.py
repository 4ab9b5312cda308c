"""The repository root is the package `omnitok`: every code folder ships, nothing else does."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "build", "dist"}


def code_folders() -> set[str]:
    """Dotted names of every folder under the root that holds Python code."""
    found = set()
    for py in ROOT.rglob("*.py"):
        rel = py.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts)):
            continue
        if any(p.endswith(".egg-info") for p in rel.parts):
            continue
        found.add(".".join(("omnitok", *rel.parts)))
    return found


def test_every_code_folder_is_listed_in_packages():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert code_folders() <= listed, f"missing from packages: {code_folders() - listed}"


def test_no_stray_modules_at_the_root():
    assert {p.name for p in ROOT.glob("*.py")} <= {"__init__.py", "__main__.py", "cli.py",
                                                  "bench.py", "plot.py"}


def test_wheel_holds_only_omnitok(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True)
    (wheel,) = tmp_path.glob("omnitok-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"omnitok"}
    for folder in code_folders():
        path = folder.replace(".", "/")
        assert any(n.startswith(path + "/") and n.endswith(".py") for n in names), folder
    assert "omnitok/tokenizers/vocab.py" in names and "omnitok/cli.py" in names
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "default").rglob("*")
               if p.is_file()}
    assert "default/model.safetensors" in shipped and "default/audio/model.safetensors" in shipped
    assert {f"omnitok/{p}" for p in shipped} <= set(names)  # the built-in default ships


def test_hugging_face_tokenizers_is_not_shadowed():
    """From the repo root (cwd first on sys.path), `import tokenizers` is still Hugging Face's."""
    hf = pytest.importorskip("tokenizers")
    code = "import tokenizers, omnitok.tokenizers.vocab; print(tokenizers.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hf.__file__
