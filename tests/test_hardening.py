"""Bad inputs, as an attacker and a clumsy user would give them (issue 14): one parametrized test per class.

Every case ends as the README's "What happens when" says: a skippable corpus
problem is skipped, named and counted; anything else is one ``error:`` line
with the documented exit code and no traceback, and the previous index stays
live. The commands run as real processes on real files.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.build import build_index
from pipeline import Pipeline
from pipeline.config import load_config
from pipeline.store import CURRENT, VERSION_MARKER, current_version
from tests.conftest import ROOT, TINY_DOCS, write_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(command: str, *args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``scripts/<command>.py`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{command}.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=kwargs.pop("env", ENV), **kwargs,
    )


def assert_one_error(proc: subprocess.CompletedProcess, code: int, match: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), proc.stderr


def write_corpus(root: Path, docs: dict[str, str] = TINY_DOCS) -> Path:
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def world(tmp_path, tiny_embedder_dir):
    """A corpus, a config, and an index built from them (in-process), which must stay live."""
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(tmp_path / "c.yaml", str(tiny_embedder_dir), tmp_path / "index")
    version = build_index(corpus, load_config(config)).version_dir
    return {"tmp": tmp_path, "corpus": corpus, "config": config, "index": tmp_path / "index", "version": version}


def still_answers(world) -> None:
    assert current_version(world["index"]) == world["version"]
    assert Pipeline(load_config(world["config"]), world["index"]).ask("vitamin").retrieved


def build(world, *extra, corpus=None, **kwargs) -> subprocess.CompletedProcess:
    return cli("build_index", corpus or world["corpus"], "--config", world["config"], *extra, **kwargs)


def ask(world, *extra, **kwargs) -> subprocess.CompletedProcess:
    return cli("ask", "vitamin", "--config", world["config"], *extra, **kwargs)


# --- hang: special files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo-txt", "socket-md", "fifo-corpus-root"])
def test_special_files_never_block_a_build(world, kind):
    corpus = world["corpus"]
    if kind == "fifo-txt":
        os.mkfifo(corpus / "x.txt")
    elif kind == "socket-md":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(corpus / "x.md"))
    else:
        os.mkfifo(world["tmp"] / "fifo")
        corpus = world["tmp"] / "fifo"
    start = time.monotonic()
    proc = build(world, corpus=corpus, timeout=120)
    assert time.monotonic() - start < 120
    if kind == "fifo-corpus-root":
        assert_one_error(proc, 3, r"is a FIFO; give a folder or a regular file")
        still_answers(world)
        return
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"skipped x\.(txt|md): a (FIFO|socket), not a regular file", proc.stdout), proc.stdout
    build_index(corpus, load_config(world["config"]))  # the lock was released: a later build works too


# --- data loss: folders the build did not make ------------------------------------------------------------


FOREIGN = {  # folder name -> has a manifest.json; none carries the marker
    "v-2024-backup": False,
    "v-2025-backup": True,
    "v-20240101T000000000000-abcdef": False,  # our name pattern, but no manifest
    "v-notes.tmp": False,
    "v-20240101T000000000000-abcdef.tmp": True,  # a staging name, but not empty and unmarked
}


@pytest.mark.parametrize("legacy", [False, True])
def test_rebuild_removes_only_its_own_versions(world, legacy):
    for name, with_manifest in FOREIGN.items():
        (world["index"] / name).mkdir()
        (world["index"] / name / "precious.txt").write_text("user data", encoding="utf-8")
        if with_manifest:
            (world["index"] / name / "manifest.json").write_text("{}", encoding="utf-8")
    oldest = world["version"]
    if legacy:  # a version made before the marker existed: recognised by its name and manifest
        oldest = oldest.rename(oldest.with_name("v-20000101T000000000000-abcdef"))
        (oldest / VERSION_MARKER).unlink()
        (world["index"] / CURRENT).write_text(oldest.name + "\n", encoding="utf-8")
    build_index(world["corpus"], load_config(world["config"]))
    proc = build(world, "--no-reuse")
    assert proc.returncode == 0, proc.stderr
    for name in FOREIGN:
        assert (world["index"] / name / "precious.txt").read_text(encoding="utf-8") == "user data"
    assert not oldest.exists()
    assert f"removed old version {oldest}" in proc.stdout  # what was removed is said
    assert proc.stdout.count("removed old version") == 1
    marked = [p for p in world["index"].glob("v-*") if (p / VERSION_MARKER).is_file()]
    assert len(marked) == 2  # live + one previous


# --- file disclosure: symlinks that leave the corpus -------------------------------------------------------


@pytest.mark.parametrize(("link", "follow"), [("file", False), ("folder", False), ("jsonl", False), ("file", True)])
def test_links_leaving_the_corpus_are_not_followed(world, link, follow):
    secret = world["tmp"] / "secret"
    secret.mkdir()
    (secret / "passwd.txt").write_text("root:TOPSECRET:0:0 vitamin", encoding="utf-8")
    (secret / "c.jsonl").write_text(json.dumps({"_id": "s", "text": "TOPSECRET vitamin"}) + "\n", encoding="utf-8")
    name = {"file": "notes.txt", "folder": "docs", "jsonl": "more.jsonl"}[link]
    target = {"file": secret / "passwd.txt", "folder": secret, "jsonl": secret / "c.jsonl"}[link]
    (world["corpus"] / name).symlink_to(target)
    (world["corpus"] / "inside.txt").symlink_to(world["corpus"] / "iron.txt")  # inside the root: fine
    proc = build(world, *(["--follow-links"] if follow else []))
    assert proc.returncode == 0, proc.stderr
    result = Pipeline(load_config(world["config"]), world["index"]).ask("vitamin", top_k=50)
    texts = " ".join(hit.text for hit in result.retrieved)
    assert ("TOPSECRET" in texts) is follow
    assert "inside.txt" in {hit.doc_id for hit in result.retrieved}
    manifest = json.loads((current_version(world["index"]) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["links_not_followed"] == (0 if follow else 1)
    assert (f"skipped {name}: symlink to a path outside the corpus folder" in proc.stdout) is not follow


# --- paths that break storage -------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["#", "?", "%23"])
def test_index_paths_with_uri_characters_keep_the_store_inside(world, char):
    parent = world["tmp"] / "odd"
    parent.mkdir()
    index = parent / f"idx{char}x"
    proc = build(world, "--index", index)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in parent.iterdir()) == [index.name]  # nothing written beside it
    assert (current_version(index) / "chunks.sqlite").is_file()
    assert Pipeline(load_config(world["config"]), index).ask("vitamin").retrieved


# --- repair: a damaged CURRENT pointer -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["not-utf8", "folder", "missing-version", "fifo", "dotdot"])
def test_damaged_pointer_is_reported_and_a_build_replaces_it(world, damage):
    pointer = world["index"] / CURRENT
    pointer.unlink()
    if damage == "not-utf8":
        pointer.write_bytes(b"\xff\xfe v-\x80")
    elif damage == "folder":
        pointer.mkdir()
    elif damage == "missing-version":
        pointer.write_text("v-20990101T000000000000-000000\n", encoding="utf-8")
    elif damage == "fifo":
        os.mkfifo(pointer)
    else:
        pointer.write_text("..\n", encoding="utf-8")
    proc = ask(world, timeout=60)
    assert_one_error(proc, 3, rf"the index at {re.escape(str(world['index']))} is damaged .*; rebuild it")
    build_index(world["corpus"], load_config(world["config"]))  # a build replaces the broken pointer
    assert Pipeline(load_config(world["config"]), world["index"]).ask("vitamin").retrieved


# --- tracebacks where one error line belongs ----------------------------------------------------------------


def _wrong_manifest_types(world):
    path = world["version"] / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["counts"] = {"chunks": "seven"}
    path.write_text(json.dumps(data), encoding="utf-8")


def _damaged_model(world, how):
    model = world["tmp"] / "model"
    shutil.copytree(load_config(world["config"]).embedder.params.model, model)
    weights = next(model.rglob("model.safetensors"))
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:  # weights as a pickle of arbitrary Python objects, which torch rightly refuses
        import torch

        weights.unlink()
        torch.save({"payload": print}, weights.with_name("pytorch_model.bin"))
    return ["--set", f"embedder.model={model}", "--index", str(world["tmp"] / "other-index")]


@pytest.mark.parametrize(
    ("case", "code", "match"),
    [
        ("max-file-mb-nan", 2, "--max-file-mb must be a positive number, got nan"),
        ("max-file-mb-inf", 2, "--max-file-mb must be a positive number, got inf"),
        ("build-index-is-a-file", 2, "is a file, not an index folder"),
        ("ask-index-is-a-file", 2, "is a file, not an index folder"),
        ("manifest-wrong-types", 3, r"manifest .* is unreadable \(counts.chunks must be an integer"),
        ("manifest-not-an-object", 3, r"manifest .* is unreadable \(expected a JSON object"),
        ("ivf-more-lists-than-vectors", 2, r"needs at least 4096 vectors to train, but there are \d+ chunks"),
        ("truncated-safetensors", 3, "are damaged or truncated"),
        ("pickle-only-bin", 3, "torch refuses to load the pytorch_model.bin"),
        ("index-under-a-file", 1, "cannot write the index at"),
    ],
)
def test_bad_input_is_one_error_line_and_the_index_stays(world, case, code, match):
    a_file = world["tmp"] / "a-file"
    a_file.write_text("not a folder", encoding="utf-8")
    if case.startswith("max-file-mb"):
        proc = build(world, "--max-file-mb", case.rpartition("-")[2])
    elif case == "build-index-is-a-file":
        proc = build(world, "--index", a_file)
    elif case == "ask-index-is-a-file":
        proc = ask(world, "--index", a_file)
    elif case == "index-under-a-file":
        proc = build(world, "--index", a_file / "index")
    elif case == "manifest-wrong-types":
        _wrong_manifest_types(world)
        proc = ask(world)
    elif case == "manifest-not-an-object":
        (world["version"] / "manifest.json").write_text("[1, 2]", encoding="utf-8")
        proc = ask(world)
    elif case == "ivf-more-lists-than-vectors":
        proc = build(world, "--set", "index.factory=IVF4096,Flat")
    else:
        proc = build(world, *_damaged_model(world, case.partition("-")[0]))
    assert_one_error(proc, code, match)
    if not case.startswith("manifest"):
        still_answers(world)


@pytest.mark.parametrize(
    ("name", "content", "where", "why", "kept"),
    [
        (os.fsdecode(b"bad-\xff.txt"), b"fine text", r"bad-\\xff\.txt", "not valid UTF-8: rename it", 0),
        ("s.jsonl", b'{"_id": "a", "text": "lone \\ud800 surrogate"}\n{"_id": "b", "text": "ok"}\n', r"s\.jsonl:1",
         "lone surrogate", 1),
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n" + b'{"_id": "b", "text": "ok"}\n', r"deep\.jsonl:1",
         "nested too deeply|malformed JSON", 1),
        ("d.jsonl", b'{"_id": "n", "text": "a\\u0000b"}\n', r"d\.jsonl:1", "NUL", 0),
        ("late-nul.md", b"# T\n" + b"x " * 5000 + b"\x00\x00", r"late-nul\.md", "NUL byte at offset 10004", 0),
        ("big-line.jsonl", b'{"_id": "x", "text": "' + b"y" * 1_100_000 + b'"}\n{"_id": "z", "text": "ok"}\n',
         r"big-line\.jsonl:1", "over the 1 MB limit", 1),
        ("corrupt.jsonl.gz", None, r"corrupt\.jsonl\.gz:\d+", "corrupt or truncated stream", 30),
    ],
)
def test_bad_corpus_entries_are_skipped_named_and_counted(world, name, content, where, why, kept):
    if content is None:  # a gzip stream cut short: the lines before the cut are kept
        records = ({"_id": f"g{i}", "text": f"line {i} " + os.urandom(40).hex()} for i in range(300))
        lines = "".join(json.dumps(record) + "\n" for record in records)
        data = gzip.compress(lines.encode("utf-8"))
        content = data[: len(data) // 2]
    path = os.path.join(os.fsencode(world["corpus"]), os.fsencode(name))
    with open(path, "wb") as handle:
        handle.write(content)
    proc = build(world, "--max-file-mb", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(rf"skipped {where}: .*({why})", proc.stdout), proc.stdout
    manifest = json.loads((current_version(world["index"]) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["skipped"] >= 1
    if content is not None and name.endswith(".jsonl") or name.endswith(".gz"):
        assert manifest["counts"]["documents"] >= len(TINY_DOCS) + (kept and 1)


def _fill_disk(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.parametrize("which", ["first-write", "faiss-index"])
def test_disk_filling_up_while_writing_keeps_the_old_index(world, which):
    docs = {f"d{i}.txt": f"document {i} about vitamin tea " * 8 for i in range(150)}
    corpus = write_corpus(world["tmp"] / "big", docs)
    big = build_index(corpus, load_config(world["config"])).version_dir  # how large each file of a version is
    sizes = {p.name: p.stat().st_size for p in big.iterdir()}
    world["version"] = big
    limit = sizes["index.faiss"] // 2 if which == "faiss-index" else 1
    proc = build(world, "--no-reuse", corpus=corpus, preexec_fn=_fill_disk(limit))
    assert_one_error(proc, 1, r"cannot write (the index at|the FAISS index to) .*(disk full|too large)")
    still_answers(world)
    assert not list(world["index"].glob("*.tmp"))


# --- read-only folders and unreadable sub-folders: as a user who cannot override permissions --------------


def _without_permission_override():
    """preexec_fn that drops the capabilities to override file permissions (we may run as root).

    Dropped from the bounding set, so they stay dropped across exec; None when not root (they then apply).
    """
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def preexec():
        for cap in (cap_dac_override, cap_dac_read_search):
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    probe = subprocess.run(["true"], preexec_fn=preexec, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE to test permissions")
    return preexec


@pytest.mark.parametrize("case", ["read-only-index", "unreadable-sub-folder"])
def test_permission_problems_without_the_capability_to_override_them(world, case):
    w = world
    preexec = _without_permission_override()
    if case == "read-only-index":
        for folder, _dirs, _files in os.walk(w["index"]):
            os.chmod(folder, 0o555)
        proc = build(w, preexec_fn=preexec)
        assert_one_error(proc, 1, rf"cannot write the index at {re.escape(str(w['index']))} \(Permission denied\)")
        proc = ask(w, "--json", preexec_fn=preexec)  # the old index still answers
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["retrieved"]
        assert current_version(w["index"]) == w["version"]
        for folder, _dirs, _files in os.walk(w["index"]):
            os.chmod(folder, 0o755)
    else:
        (w["corpus"] / "zh").chmod(0o000)
        index = w["tmp"] / "index2"
        proc = build(w, "--index", index, preexec_fn=preexec)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"skipped zh/: unreadable folder \(Permission denied\)", proc.stdout), proc.stdout
        manifest = json.loads((current_version(index) / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["counts"]["skipped"] == 1 and manifest["counts"]["documents"] == len(TINY_DOCS) - 1
        (w["corpus"] / "zh").chmod(0o755)


# --- closed stdout, and the last-resort handler ------------------------------------------------------------


@pytest.mark.parametrize("how", ["head", "closed-at-once"])
def test_a_closed_stdout_is_not_an_error(world, how):
    args = [sys.executable, str(ROOT / "scripts" / "ask.py"), "vitamin", "--json", "--config", str(world["config"])]
    if how == "head":
        command = " ".join(f"'{a}'" for a in args) + " | head -c 1; echo; echo \"rc=${PIPESTATUS[0]}\" >&2"
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=ENV, timeout=180)
        assert proc.stdout == "{\n" and proc.stderr.strip().endswith("rc=0"), proc.stderr
        return
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and err == "", err


def test_unforeseen_errors_are_one_line_with_a_hint(capsys):
    from commands.common import run

    def main(argv):
        raise ValueError("something nobody foresaw\nsecond line")

    assert run(main, []) == 1
    err = capsys.readouterr().err
    assert err == "error: unexpected ValueError: something nobody foresaw second line; run with --debug for details\n"
    with pytest.raises(ValueError):
        run(main, ["--debug"])
