"""`python -m function` and the function's start-up, run as a person runs them: every error is one
line on stderr that names the file, catalog or setting, never a traceback, with a non-zero exit;
an answer the webhook would not give says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from function.engine.decode import decode_file
from function.webhook.naming import NAME_AT

ROOT = Path(__file__).resolve().parent.parent
MUSIC = ROOT / "tests" / "data" / "music"
SONG = MUSIC / "Emxx52 - Humanitarian.ogg"
OTHER_SONG = MUSIC / "Emxx52 - Proton Ame.ogg"


def cli_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CATALOG_URI", "STORAGE_EMULATOR_HOST")}
    env.update(overrides)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=ROOT,
        env=env or cli_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    """The command failed with exactly one line on stderr, naming each of `names`."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("cli") / "catalog")
    result = run_cli("register", str(SONG), str(OTHER_SONG), "--catalog", uri, "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return uri


def song_at(rate: int) -> np.ndarray:
    samples, native = decode_file(SONG)
    return resample_poly(samples, rate, native).astype(np.float32)


def raw_pcm(path: Path, samples: np.ndarray) -> Path:
    (np.clip(samples, -1, 1) * 32767).astype("<i2").tofile(path)
    return path


# --- one-line errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope.raw", "nope.wav"])
def test_recognising_a_missing_file_says_no_such_file(catalog: str, tmp_path: Path, name: str) -> None:
    missing = tmp_path / name

    result = run_cli("recognise", str(missing), "--sample-rate", "16000", "--catalog", catalog)

    line = one_line_error(result, str(missing), "no such file")
    assert result.returncode == 1
    assert "System error" not in line and "cannot decode" not in line


def test_registering_a_missing_file_fails_first_saying_no_such_file_and_writes_nothing(tmp_path: Path) -> None:
    missing, uri = tmp_path / "nope.ogg", tmp_path / "catalog"

    result = run_cli("register", str(SONG), str(missing), "--catalog", str(uri))

    line = one_line_error(result, str(missing), "no such file")
    assert str(SONG) not in line
    assert result.returncode == 2
    assert "registering [" not in result.stderr, "it drew a progress bar first"
    assert not uri.exists()


def test_registering_a_folder_without_audio_says_so_and_which_files_it_reads(tmp_path: Path) -> None:
    folder, uri = tmp_path / "notes", tmp_path / "catalog"
    folder.mkdir()
    (folder / "readme.txt").write_text("no music here\n")

    result = run_cli("register", str(folder), "--catalog", str(uri))

    one_line_error(result, str(folder), "no audio files", ".ogg", ".wav", ".mp3", ".flac")
    assert result.returncode == 2
    assert not uri.exists()


def test_a_cloud_path_to_register_is_named_with_both_its_slashes(tmp_path: Path) -> None:
    result = run_cli("register", "gs://nobucket/song.ogg", "--catalog", str(tmp_path / "catalog"))

    one_line_error(result, "gs://nobucket/song.ogg", "local")
    assert "gs:/nobucket" not in result.stderr.replace("gs://", "")


@pytest.mark.parametrize("uri, says", [("gs:/nobucket", "gs://BUCKET/PREFIX"), ("gs:///prefix", "names no bucket")])
def test_a_mistyped_cloud_catalog_is_refused_as_typed(tmp_path: Path, uri: str, says: str) -> None:
    command = [sys.executable, "-m", "function", "register", str(SONG), "--catalog", uri, "--quiet"]

    # Run from an empty folder, so that a URL taken for a local path would show up in it.
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)

    one_line_error(result, f"--catalog {uri}:", says)
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == [], "it made a local folder of the URL"


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    uri = str(tmp_path / "catalog")

    registered = run_cli("register", str(SONG), "--catalog", uri, "--quiet", "--workers", "1")
    listed = run_cli("catalog", "--catalog", uri)
    removed = run_cli("remove", json.loads(run_cli("catalog", "--catalog", uri, "--json").stdout)["song_id"], "--catalog", uri)

    assert registered.returncode == listed.returncode == removed.returncode == 0, registered.stderr + listed.stderr
    assert "1 file in" in registered.stderr and ": 1 song (1 recording)" in registered.stderr, registered.stderr
    assert "1 added, 0 duplicates, 0 errors" in registered.stderr, registered.stderr
    summary = listed.stdout.splitlines()[-1]
    assert summary.startswith("1 song (1 recording),") and summary.endswith(" in 1 segment"), summary
    assert "removed 1 song; 0 songs left" in removed.stderr, removed.stderr


def test_a_wrong_option_prints_the_subcommands_usage(catalog: str) -> None:
    result = run_cli("recognise", "--wrong-flag", str(SONG), "--catalog", catalog)

    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m function recognise"), result.stderr
    assert "--sample-rate" in result.stderr
    assert "unrecognized arguments: --wrong-flag" in result.stderr


def link_env(**settings: str) -> dict[str, str]:
    names = ("USER_LINK_SECRET", "OMI_APP_SECRET", "OMI_APP_ID", "PUBLIC_URL", "STORAGE_BACKEND")
    env = {k: v for k, v in cli_env().items() if k not in names}
    env.update(settings)
    return env


def test_link_prints_ones_own_history_link() -> None:
    from function.webhook.user_links import user_key

    local = run_cli("link", "--uid", "alice", env=link_env(USER_LINK_SECRET="link-secret"))
    public = run_cli("link", "--uid", "alice", env=link_env(USER_LINK_SECRET="link-secret", PUBLIC_URL="https://songs.example"))
    given = run_cli("link", "--uid", "alice", "--base-url", "https://x.test/", env=link_env(USER_LINK_SECRET="link-secret"))

    key = user_key("link-secret", "alice")
    assert local.returncode == public.returncode == given.returncode == 0, local.stderr + public.stderr + given.stderr
    assert local.stdout == f"http://localhost:8080/me/alice?key={key}\n"
    assert public.stdout == f"https://songs.example/me/alice?key={key}\n"
    assert given.stdout == f"https://x.test/me/alice?key={key}\n"


def test_link_is_keyed_like_the_deployment_whose_secret_it_is_given() -> None:
    """Without USER_LINK_SECRET the deployment keys links with a secret derived from the app's."""
    from function.config import Settings
    from function.webhook.user_links import user_key

    result = run_cli("link", "--uid", "bob", env=link_env(OMI_APP_ID="app", OMI_APP_SECRET="app-secret"))

    derived = Settings.from_env({"OMI_APP_ID": "app", "OMI_APP_SECRET": "app-secret"}).link_secret
    assert result.stdout.strip().endswith(f"/me/bob?key={user_key(derived, 'bob')}")


@pytest.mark.parametrize(
    "args, env, names",
    [
        (["--uid", "alice"], {}, ["USER_LINK_SECRET", "OMI_APP_SECRET"]),
        (["--uid", "al ice"], {"USER_LINK_SECRET": "s"}, ["--uid", "al ice"]),
        (["--uid", "alice", "--base-url", "songs.example"], {"USER_LINK_SECRET": "s"}, ["--base-url", "songs.example"]),
    ],
)
def test_link_refuses_what_would_make_a_link_that_does_not_open(args: list[str], env: dict[str, str], names: list[str]) -> None:
    result = run_cli("link", *args, env=link_env(**env))

    one_line_error(result, *names)
    assert result.returncode == 2
    assert result.stdout == ""


@pytest.mark.parametrize("below", ["", "sub"], ids=["the-file", "a-path-through-it"])
def test_a_catalog_path_that_is_a_file_is_refused_before_fingerprinting(tmp_path: Path, below: str) -> None:
    not_a_directory = tmp_path / "README.md"
    not_a_directory.write_text("# not a catalog\n")
    uri = str(not_a_directory / below) if below else str(not_a_directory)
    songs = [str(p) for p in sorted(MUSIC.glob("*.ogg"))]

    started = time.monotonic()
    result = run_cli("register", *songs, "--catalog", uri, "--workers", "1")
    elapsed = time.monotonic() - started

    one_line_error(result, str(not_a_directory), "not a")
    assert result.returncode == 2
    assert "registering" not in result.stderr, "it fingerprinted the files first"
    assert elapsed < 15
    assert not_a_directory.read_text() == "# not a catalog\n"


@pytest.mark.parametrize("command", [["catalog"], ["recognise", str(SONG)], ["remove", "55c419bf59176e4f"]])
def test_every_command_refuses_a_catalog_path_that_is_a_file(tmp_path: Path, command: list[str]) -> None:
    not_a_directory = tmp_path / "catalog.txt"
    not_a_directory.write_text("x")

    result = run_cli(*command, "--catalog", str(not_a_directory))

    one_line_error(result, str(not_a_directory))
    assert result.returncode == 2


def test_a_cloud_catalog_without_credentials_says_how_to_log_in(tmp_path: Path) -> None:
    # No credentials anywhere google-auth looks: no variable, no gcloud configuration in an
    # empty home, and no GCE metadata server probe.
    env = cli_env(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)

    result = run_cli("catalog", "--catalog", "gs://b/c", env=env)

    one_line_error(result, "gs://b/c", "gcloud auth application-default login")
    assert result.returncode == 2


def test_a_reader_that_stops_reading_ends_the_command_quietly(catalog: str) -> None:
    # `catalog --json | head -2` once head has exited: every write to stdout fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = run_cli("catalog", "--catalog", catalog, "--json", stdout=write_end)
    finally:
        os.close(write_end)

    assert result.returncode == 0
    assert result.stderr == ""


def test_head_of_the_catalog_in_a_shell_pipeline(catalog: str) -> None:
    command = f'set -o pipefail; "{sys.executable}" -m function catalog --catalog "{catalog}" --json | head -1'

    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["song_id"]


def test_a_bad_setting_stops_the_function_with_one_log_line_naming_it(tmp_path: Path) -> None:
    env = cli_env(MIN_AUDIO_SECONDS="abc", DATA_DIR=str(tmp_path), CATALOG_URI=str(tmp_path / "catalog"))
    command = [sys.executable, "-m", "functions_framework", "--target", "omi_webhook", "--source", "main.py"]
    command += ["--host", "127.0.0.1", "--port", "0"]

    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    output = (result.stdout + result.stderr).splitlines()
    assert len(output) == 1, output
    line = json.loads(output[0])
    assert line["severity"] == "CRITICAL"
    assert line["setting"] == "MIN_AUDIO_SECONDS"
    assert "MIN_AUDIO_SECONDS must be a number, got 'abc'" in line["message"]


# --- answers that say what they mean ---------------------------------------------------------


def test_a_raw_file_at_the_wrong_rate_says_which_rate_it_was_read_at(catalog: str, tmp_path: Path) -> None:
    query = raw_pcm(tmp_path / "clip.raw", song_at(16000))

    right = run_cli("recognise", str(query), "--sample-rate", "16000", "--catalog", catalog)
    # 22050, not 8000: read at exactly half its rate, a song's peaks land on exactly half its
    # bins and twice its gaps, and the surprise rule can name the right song from that lattice.
    wrong = run_cli("recognise", str(query), "--sample-rate", "22050", "--catalog", catalog)

    assert right.returncode == wrong.returncode == 0
    assert "Humanitarian" in right.stdout and "--sample-rate" not in right.stdout
    assert "no match" in wrong.stdout
    assert "read as 22050 Hz raw PCM" in wrong.stdout and "--sample-rate" in wrong.stdout


def test_a_song_that_starts_inside_the_file_is_not_given_a_negative_offset(catalog: str, tmp_path: Path) -> None:
    song = song_at(16000)
    query = tmp_path / "lead-in.wav"
    soundfile.write(query, np.concatenate([np.zeros(2 * 16000, np.float32), song[: 18 * 16000]]), 16000)

    text = run_cli("recognise", str(query), "--catalog", catalog)
    answer = json.loads(run_cli("recognise", str(query), "--catalog", catalog, "--json").stdout)

    assert answer["match"]["title"] == "Humanitarian"
    assert answer["match"]["offset_seconds"] == pytest.approx(-2.0, abs=0.15)
    assert "starting 2.0s into the file" in text.stdout
    assert " at -" not in text.stdout


def test_a_match_says_whether_the_webhook_would_name_it(catalog: str, tmp_path: Path) -> None:
    # Raw audio read a little fast or slow gives matches on both sides of the webhook's threshold.
    queries = [str(raw_pcm(tmp_path / f"clip-{rate}.raw", song_at(rate))) for rate in (16000, 16200, 15900, 15800)]

    text = run_cli("recognise", *queries, "--sample-rate", "16000", "--catalog", catalog).stdout.splitlines()
    answers = [json.loads(line) for line in run_cli("recognise", *queries, "--sample-rate", "16000", "--catalog", catalog, "--json").stdout.splitlines()]

    assert len(text) == len(answers) == len(queries)
    named = []
    for line, answer in zip(text, answers):
        if answer["match"] is None:
            continue
        named.append(answer["match"]["confidence"] >= NAME_AT)
        assert answer["webhook_would_name"] is named[-1]
        assert ("below the webhook's naming threshold" in line) is not named[-1], line
    assert True in named


def test_the_below_threshold_note_names_the_webhooks_threshold(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, catalog: str) -> None:
    from function import cli
    from function.engine.recogniser import Match, Recogniser

    unsure = Match("id", "Humanitarian", "Emxx52", "", 12.0, round(NAME_AT - 0.05, 2), 30)
    monkeypatch.setattr(Recogniser, "recognise", lambda self, samples, rate: unsure)

    assert cli.main(["recognise", str(SONG), "--catalog", catalog]) == 0

    out = capsys.readouterr().out
    assert f"below the webhook's naming threshold {NAME_AT:g}: the webhook would not name it" in out


def test_progress_into_a_log_is_lines_not_carriage_returns(tmp_path) -> None:
    """Registration's progress, written to a file (a log, CI), is one plain line per update."""
    import subprocess
    import sys
    from pathlib import Path

    music = sorted((Path(__file__).parent / "data" / "music").glob("*.ogg"))[:2]
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        subprocess.run(
            [sys.executable, "-m", "function", "register", *map(str, music), "--catalog", str(tmp_path / "c"), "--workers", "1"],
            stderr=err,
            stdout=subprocess.DEVNULL,
            check=True,
        )

    text = log.read_text()
    assert "\r" not in text
    assert any(line.startswith("registering [") and "2/2" in line for line in text.splitlines())
