"""The test Hub server: real clients, in subprocesses with the server as HF_ENDPOINT, push to it and pull from it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from hub_fixtures import SERVER_SCRIPT, running_hub_server
from safetensors.numpy import save_file


def run_client(hub_server, code: str, *args: str, extra: dict | None = None, cwd: Path | None = None):
    """Run Python code against the server in a fresh process; returns the JSON its last output line holds."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=hub_server.env(extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- server log ---\n{hub_server.log_tail()}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


def http(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


PUSH_FILES = """
    import json, sys
    from huggingface_hub import HfApi

    api, (v1, v2) = HfApi(), sys.argv[1:]
    api.create_repo("hubtest/files")
    first = api.upload_folder(folder_path=v1, repo_id="hubtest/files", commit_message="first")
    second = api.upload_folder(folder_path=v2, repo_id="hubtest/files", commit_message="second")
    unchanged = api.upload_folder(folder_path=v2, repo_id="hubtest/files", commit_message="unchanged")
    print(json.dumps({"first": first.oid, "second": second.oid, "unchanged": unchanged.oid}))
"""


@pytest.fixture(scope="module")
def pushed_files(hub_server, tmp_path_factory) -> dict:
    """hubtest/files after two pushes: a 6 MB safetensors file and a config.json that changes in the second."""
    root = tmp_path_factory.mktemp("pushed-files")
    weights = {"weight": np.random.default_rng(0).standard_normal((1536, 1024)).astype(np.float32)}
    for version in ("v1", "v2"):
        (root / version).mkdir()
        save_file(weights, root / version / "weights.safetensors")
        (root / version / "config.json").write_text(json.dumps({"version": version}))
    commits = run_client(hub_server, PUSH_FILES, str(root / "v1"), str(root / "v2"))
    return {"root": root, **commits}


def test_large_file_is_stored_through_lfs(hub_server, pushed_files):
    weights = pushed_files["root"] / "v1" / "weights.safetensors"
    assert weights.stat().st_size > 5 * 1024 * 1024
    repo = hub_server.repo_path("hubtest/files")
    pointer = git(repo, "cat-file", "blob", f"{pushed_files['first']}:weights.safetensors").decode()
    oid = sha256(weights)
    assert pointer == f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {weights.stat().st_size}\n"
    assert (repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid).read_bytes() == weights.read_bytes()
    config = git(repo, "cat-file", "blob", f"{pushed_files['first']}:config.json")
    assert json.loads(config) == {"version": "v1"}


def test_unchanged_upload_makes_no_commit(pushed_files):
    assert pushed_files["first"] != pushed_files["second"]
    assert pushed_files["unchanged"] == pushed_files["second"]


SNAPSHOTS = """
    import hashlib, json, os, sys
    from huggingface_hub import snapshot_download

    hashes = {}
    for revision in sys.argv[1:]:
        folder = snapshot_download("hubtest/files", revision=revision)
        hashes[revision] = {
            name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))
        }
    print(json.dumps(hashes))
"""


def test_snapshot_download_of_branch_and_older_commit(hub_server, pushed_files):
    first = pushed_files["first"]
    hashes = run_client(hub_server, SNAPSHOTS, "main", first)
    for revision, version in (("main", "v2"), (first, "v1")):
        folder = pushed_files["root"] / version
        expected = {name: sha256(folder / name) for name in ("config.json", "weights.safetensors")}
        assert {name: hashes[revision][name] for name in expected} == expected
        assert ".gitattributes" in hashes[revision]


HISTORY = """
    import json
    from huggingface_hub import HfApi

    commits = HfApi().list_repo_commits("hubtest/files")
    print(json.dumps([[commit.commit_id, commit.title] for commit in commits]))
"""


def test_commit_history_lists_every_push(hub_server, pushed_files):
    history = run_client(hub_server, HISTORY)
    assert history[:2] == [[pushed_files["second"], "second"], [pushed_files["first"], "first"]]
    assert [title for _, title in history[2:]] == ["initial commit"]


MISSING = """
    import json
    from huggingface_hub import HfApi, hf_hub_download

    attempts = {
        "file": lambda: hf_hub_download("hubtest/files", "missing.json"),
        "repo": lambda: hf_hub_download("hubtest/nothing", "config.json"),
        "revision": lambda: hf_hub_download("hubtest/files", "config.json", revision="no-such-branch"),
        "repo_info": lambda: HfApi().model_info("hubtest/nothing"),
        "folder": lambda: HfApi().list_repo_tree("hubtest/files", path_in_repo="no-such-folder"),
    }
    raised = {}
    for name, attempt in attempts.items():
        try:
            list(attempt() or [])
        except Exception as error:
            raised[name] = type(error).__name__
    print(json.dumps(raised))
"""


def test_missing_entries_raise_the_hub_errors(hub_server, pushed_files):
    assert run_client(hub_server, MISSING) == {
        "file": "RemoteEntryNotFoundError",
        "repo": "RepositoryNotFoundError",
        "revision": "RevisionNotFoundError",
        "repo_info": "RepositoryNotFoundError",
        "folder": "RemoteEntryNotFoundError",
    }


def test_range_requests_get_the_requested_bytes(hub_server, pushed_files):
    content = (pushed_files["root"] / "v1" / "weights.safetensors").read_bytes()
    url = f"{hub_server.endpoint}/hubtest/files/resolve/{pushed_files['first']}/weights.safetensors"
    status, headers, body = http(url, {"Range": "bytes=100-199"})
    assert (status, body, headers["content-range"]) == (206, content[100:200], f"bytes 100-199/{len(content)}")
    status, _, body = http(url, {"Range": "bytes=-16"})
    assert (status, body) == (206, content[-16:])
    assert http(url, {"Range": f"bytes={len(content)}-"})[0] == 416


COMMIT_OPERATIONS = """
    import json
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api, repo = HfApi(), "hubtest/operations"
    outcome = {"created": api.create_repo(repo).repo_id}
    try:
        api.create_repo(repo)
    except Exception as error:
        outcome["created_again"] = error.response.status_code
    outcome["exist_ok"] = api.create_repo(repo, exist_ok=True).repo_id
    outcome["own_namespace"] = api.create_repo("solo").repo_id
    outcome["whoami"] = api.whoami()["name"]

    add = api.create_commit(repo, [
        CommitOperationAdd("keep.txt", b"keep"), CommitOperationAdd("sub/a.txt", b"a"),
        CommitOperationAdd("sub/b.txt", b"b"), CommitOperationAdd("gone.txt", b"gone"),
    ], commit_message="add")
    delete = api.create_commit(
        repo, [CommitOperationDelete("gone.txt"), CommitOperationDelete("sub/")],
        commit_message="delete", parent_commit=add.oid,
    )
    outcome["files"] = sorted(api.list_repo_files(repo))
    attempts = {
        "stale_parent": lambda: api.create_commit(
            repo, [CommitOperationAdd("x.txt", b"x")], commit_message="x", parent_commit=add.oid),
        "missing_branch": lambda: api.create_commit(
            repo, [CommitOperationAdd("x.txt", b"x")], commit_message="x", revision="no-such-branch"),
        "missing_file": lambda: api.create_commit(
            repo, [CommitOperationDelete("never-there.txt")], commit_message="x"),
        "bad_card": lambda: api.create_commit(
            repo, [CommitOperationAdd("README.md", b"---\\n- a list\\n---\\n")], commit_message="x"),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except Exception as error:
            outcome[name] = [type(error).__name__, getattr(getattr(error, "response", None), "status_code", None)]
    outcome["head_unchanged"] = api.model_info(repo).sha == delete.oid
    print(json.dumps(outcome))
"""


def test_repo_creation_and_commit_operations(hub_server):
    assert run_client(hub_server, COMMIT_OPERATIONS) == {
        "created": "hubtest/operations",
        "created_again": 409,
        "exist_ok": "hubtest/operations",
        "own_namespace": "hub-tester/solo",
        "whoami": "hub-tester",
        "files": [".gitattributes", "keep.txt"],
        "stale_parent": ["HfHubHTTPError", 412],
        "missing_branch": ["RevisionNotFoundError", 404],
        "missing_file": ["RemoteEntryNotFoundError", 404],
        "bad_card": ["ValueError", None],
        "head_unchanged": True,
    }


def test_writes_need_a_token(hub_server):
    payload = json.dumps({"name": "anonymous", "organization": "hubtest"}).encode()
    status, _, _ = http(f"{hub_server.endpoint}/api/repos/create", {"Content-Type": "application/json"}, payload)
    assert status == 401
    assert not hub_server.repo_path("hubtest/anonymous").exists()


REMOTE_CODE = """
from transformers import SegformerConfig, SegformerForSemanticSegmentation


class TinySegConfig(SegformerConfig):
    model_type = "tiny-seg"


class TinySegForSemanticSegmentation(SegformerForSemanticSegmentation):
    config_class = TinySegConfig
"""

PUSH_MODEL = """
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    from tiny_seg import TinySegConfig, TinySegForSemanticSegmentation

    TinySegConfig.register_for_auto_class()
    TinySegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    config = TinySegConfig(
        num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], patch_sizes=[3], strides=[2],
        num_attention_heads=[1], mlp_ratios=[1], decoder_hidden_size=8, num_labels=3,
    )
    torch.manual_seed(0)
    model = TinySegForSemanticSegmentation(config).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.save({"pixels": pixels, "logits": model(pixel_values=pixels).logits}, sys.argv[2])
    print(json.dumps(model.push_to_hub("hubtest/tiny-seg")))
"""

PULL_MODEL = """
    import json, sys, torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained("hubtest/tiny-seg", trust_remote_code=True).eval()
    reference = torch.load(sys.argv[1])
    with torch.no_grad():
        logits = model(pixel_values=reference["pixels"]).logits
    print(json.dumps({
        "module": type(model).__module__,
        "equal": torch.equal(logits, reference["logits"]),
        "card_library": ModelCard.load("hubtest/tiny-seg").data.library_name,
    }))
"""


@pytest.mark.slow
def test_push_to_hub_and_remote_code_from_pretrained(hub_server, tmp_path):
    code, reference, elsewhere = tmp_path / "code", tmp_path / "reference.pt", tmp_path / "elsewhere"
    code.mkdir()
    elsewhere.mkdir()
    (code / "tiny_seg.py").write_text(REMOTE_CODE)
    commit_url = run_client(hub_server, PUSH_MODEL, str(code), str(reference))
    assert commit_url.startswith(f"{hub_server.endpoint}/hubtest/tiny-seg/commit/")

    # A fresh process and cache, away from the code folder: the classes can only come from the repository.
    pulled = run_client(hub_server, PULL_MODEL, str(reference), cwd=elsewhere, extra={"PYTHONPATH": None})
    assert pulled["module"].startswith("transformers_modules.") and pulled["module"].endswith(".tiny_seg")
    assert pulled["equal"] is True
    assert pulled["card_library"] == "transformers"


PUSH_DATASET = """
    import json, sys
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("hubtest/aras400k-mini", repo_type="dataset")
    commit = api.upload_folder(folder_path=sys.argv[1], repo_id="hubtest/aras400k-mini", repo_type="dataset")
    print(json.dumps(commit.oid))
"""

PULL_DATASET = """
    import hashlib, json, os
    import datasets
    from huggingface_hub import snapshot_download

    def sha(data):
        return hashlib.sha256(data).hexdigest()

    def rows(split):
        # The PNG bytes as stored, not decoded pixels: the round trip must keep them byte for byte.
        split = split.cast_column("image", datasets.Image(decode=False))
        split = split.cast_column("label", datasets.Image(decode=False))
        return sorted(
            [row["name"], sha(row["image"]["bytes"]), sha(row["label"]["bytes"]), row["tile"], row["patch_row"],
             row["patch_col"]]
            for row in split
        )

    folder = snapshot_download("hubtest/aras400k-mini", repo_type="dataset")
    files = {}
    for top, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(top, name)
            files[os.path.relpath(path, folder)] = sha(open(path, "rb").read())
    loaded = datasets.load_dataset("hubtest/aras400k-mini")
    streamed = datasets.load_dataset("hubtest/aras400k-mini", streaming=True)
    print(json.dumps({
        "files": files,
        "loaded": {split: rows(loaded[split]) for split in loaded},
        "streamed": {split: rows(streamed[split]) for split in streamed},
    }))
"""

# Real patches renamed as ARAS400k names `{tile}_{row}_{col}` (parsed into the tile/patch_row/patch_col columns),
# with one name of another form, whose columns are null.
ROUND_TRIP_NAMES = {
    "train": {
        "N45E010_003_004": ("N45E010", 3, 4),
        "N45E010_003_005": ("N45E010", 3, 5),
        "S03W060_120_007": ("S03W060", 120, 7),
        "N12E123_000_099": ("N12E123", 0, 99),
        "s2glc_00001": (None, None, None),
    },
    "validation": {"N51W002_017_018": ("N51W002", 17, 18), "S33E018_001_000": ("S33E018", 1, 0)},
}


@pytest.mark.slow
def test_dataset_repo_round_trip(hub_server, tmp_path, s2glc_sample):
    """A converted dataset of real patches, pushed and pulled: the same files, and in every row (loaded and streamed)
    the same image PNG bytes as the source files, the same label bytes and the same tile/row/col."""
    import datasets

    from lale_hf.data import convert_aras400k

    source_folders = {"train": "train", "validation": "val"}
    sources = tmp_path / "sources"
    expected = {}
    for split, names in ROUND_TRIP_NAMES.items():
        real = sorted((s2glc_sample / source_folders[split] / "images").glob("*.png"))[: len(names)]
        for kind in ("images", "masks"):
            (sources / source_folders[split] / kind).mkdir(parents=True)
        for path, (name, columns) in zip(real, names.items(), strict=True):
            image_png = path.read_bytes()
            (sources / source_folders[split] / "images" / f"{name}.png").write_bytes(image_png)
            mask_png = (path.parent.parent / "masks" / path.name).read_bytes()
            (sources / source_folders[split] / "masks" / f"{name}.png").write_bytes(mask_png)
            expected.setdefault(split, {})[name] = (hashlib.sha256(image_png).hexdigest(), *columns)
    folder = tmp_path / "dataset"
    convert_aras400k(sources, folder, num_proc=1)
    run_client(hub_server, PUSH_DATASET, str(folder))

    pulled = run_client(hub_server, PULL_DATASET)
    local = {str(path.relative_to(folder)): sha256(path) for path in folder.rglob("*") if path.is_file()}
    assert any(name.endswith(".parquet") for name in local)
    assert {name: pulled["files"].get(name) for name in local} == local
    # The labels as the local folder holds them (the converter writes them; image bytes are the source files').
    local_splits = datasets.load_dataset(str(folder)).cast_column("label", datasets.Image(decode=False))
    label_sha = {
        row["name"]: hashlib.sha256(row["label"]["bytes"]).hexdigest()
        for split in local_splits.values()
        for row in split
    }
    want = {
        split: sorted([name, image_sha, label_sha[name], *columns] for name, (image_sha, *columns) in rows.items())
        for split, rows in expected.items()
    }
    assert pulled["loaded"] == want
    assert pulled["streamed"] == want


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition, what: str) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_server_stops_on_exit_and_with_its_parent(tmp_path):
    with running_hub_server(tmp_path / "own") as server:
        assert not gone(psutil.Process(server.pid))
    assert not psutil.pid_exists(server.pid)

    # A parent killed outright runs no teardown: the server notices it is orphaned and exits by itself.
    root = tmp_path / "orphan"
    root.mkdir()
    port_file, log = root / "port", root / "server.log"
    launcher = (
        "import subprocess, sys, time\n"
        "with open(sys.argv[1], 'wb') as log:\n"
        "    print(subprocess.Popen(sys.argv[2:], stdout=log, stderr=log).pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    server_command = [sys.executable, str(SERVER_SCRIPT), "--root", str(root), "--port-file", str(port_file)]
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(log), *server_command], stdout=subprocess.PIPE)
    orphan = psutil.Process(int(parent.stdout.readline()))
    parent.stdout.close()
    try:
        wait_for(lambda: port_file.exists() or gone(orphan), "the server to start")
        assert not gone(orphan), log.read_text()
        parent.kill()
        parent.wait()
        wait_for(lambda: gone(orphan), "the orphaned server to exit")
    finally:
        if not gone(orphan):
            orphan.kill()
