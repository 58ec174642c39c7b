"""A newcomer's first steps, as the README gives them: scripts/quickstart.sh outside a virtual
environment (it makes ./.venv), with port 8080 already taken (it serves on a free port and streams
to its own server, never to the other one), with a PORT that is taken (refused at once, in one
line) and with a music folder of M4A and Opus files only (it plays one of them).

Each run works on a copy of what the script needs, so ./.venv and ./data of this checkout are
never touched; the copy's ".venv" is this test environment (no download), made by a stand-in for
`python3 -m venv` on the PATH."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
MUSIC = ROOT / "tests" / "data" / "music"
SONG = MUSIC / "Emxx52 - Humanitarian.ogg"
NOTIFICATION = re.compile(r"^notification: 🎵 (?P<title>.+) by (?P<artist>.+?)  \(confidence", re.MULTILINE)

# python3 as a system Python is (in no virtual environment), except that `-m venv DIR` makes DIR
# this test environment instead of downloading the requirements into a new one.
PYTHON3 = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    ln -s "{prefix}" "$3"
    exit 0
fi
exec "{base}" "$@"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What the quick start uses, copied: the script, the function, the test audio."""
    root = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("scripts", "function"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    for name in ("music", "noise"):
        shutil.copytree(ROOT / "tests" / "data" / name, root / "tests" / "data" / name)
    for name in ("main.py", "requirements.txt"):
        shutil.copy2(ROOT / name, root / name)
    return root


@pytest.fixture
def system_python(tmp_path: Path) -> dict[str, str]:
    """An environment whose python3 is outside any virtual environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    base = getattr(sys, "_base_executable", sys.executable)
    script = bin_dir / "python3"
    script.write_text(PYTHON3.format(prefix=sys.prefix, base=base))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PORT", "CATALOG_URI", "DATA_DIR", "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def port_8080_taken() -> Iterator[socket.socket | None]:
    """Another program listening on 8080 (this test, unless something already does)."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 8080))
    except OSError:
        listener.close()
        yield None
        return
    listener.listen(16)
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def quickstart(checkout: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "quickstart.sh"), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_outside_a_venv_with_8080_taken_it_makes_a_venv_and_streams_to_its_own_server(
    checkout: Path, system_python: dict[str, str], port_8080_taken: socket.socket | None
) -> None:
    result = quickstart(checkout, system_python)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "creating a virtual environment in .venv" in result.stdout
    assert f"installing the requirements ({checkout}/.venv/bin/python)" in result.stdout
    chosen = re.search(r"port 8080 is taken by another program: using (\d+)", result.stdout)
    assert chosen, result.stdout
    assert f"serving the function on http://127.0.0.1:{chosen.group(1)}" in result.stdout
    notification = NOTIFICATION.search(result.stdout)
    assert notification and notification.group("artist") == "Emxx52", result.stdout[-2000:]
    if port_8080_taken is not None:
        with pytest.raises(BlockingIOError):
            port_8080_taken.accept()  # nothing was sent to the other program


def test_a_taken_port_it_was_given_is_refused_at_once_in_one_line(
    checkout: Path, system_python: dict[str, str]
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]

        result = quickstart(checkout, {**system_python, "PORT": str(port)}, timeout=60)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"quickstart: port {port} is taken by another program: stop it, choose another PORT, or leave PORT unset to pick a free one"
    ]
    assert "registering" not in result.stdout
    assert not (checkout / "data").exists()


def _encode(source: Path, target: Path, *codec: str) -> None:
    command = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-t", "20", *codec, str(target)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def test_a_folder_of_m4a_and_opus_files_plays_one_of_them(
    checkout: Path, system_python: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "phone music"
    folder.mkdir()
    if shutil.which("ffmpeg") is None:
        # Without ffmpeg these formats do not register: the script stops and says why.
        (folder / "Emxx52 - Humanitarian.opus").write_bytes(b"OggS")
        result = quickstart(checkout, system_python, str(folder))
        assert result.returncode == 1
        assert "ffmpeg" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("quickstart: nothing in")
        return
    _encode(SONG, folder / "Emxx52 - Humanitarian.opus", "-c:a", "libopus", "-b:a", "96k")
    _encode(MUSIC / "Emxx52 - Proton Ame.ogg", folder / "Emxx52 - Proton Ame.m4a", "-c:a", "aac", "-b:a", "128k")

    result = quickstart(checkout, system_python, str(folder))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"streaming '{folder}/Emxx52 - Humanitarian.opus'" in result.stdout
    notification = NOTIFICATION.search(result.stdout)
    assert notification and notification.group("title") == "Humanitarian", result.stdout[-2000:]


# --- the README's first steps ------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize("section", ["Quick start", "Tests"])
def test_the_readme_makes_a_venv_before_anything_is_installed(section: str) -> None:
    commands = re.findall(r"```bash\n(.*?)```", readme_section(section), flags=re.DOTALL)[0]

    venv = commands.index("python3 -m venv .venv && . .venv/bin/activate")
    assert venv < min(i for i in (commands.find("pip install"), commands.find("quickstart.sh")) if i != -1)


def test_the_readme_names_what_the_tests_need_beside_python() -> None:
    tests = readme_section("Tests")

    for needed in ("Java", "Chromium", "/usr/bin/chromium", "ffmpeg", "cloud_firestore_emulator"):
        assert needed in tests, needed
