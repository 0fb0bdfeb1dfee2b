"""A Hugging Face Hub look-alike for tests, on 127.0.0.1 only.

olah (offline mode) serves the read API from local git repositories; this app adds the write side that
huggingface_hub needs (create repo, preupload, LFS batch and upload, commit), turning each Hub commit into a git
commit that olah then serves, and corrects the olah answers that break clients (401 where the Hub says 404,
Range requests answered with the whole file, a commit list clients cannot parse).

Run: ``python tests/hub_server.py --root DIR --port-file FILE``. Repositories live in
``DIR/repos/{models,datasets,spaces}/ORG/NAME`` (olah's mirror layout); the port is written to FILE once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import fnmatch
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


USER = "hub-tester"
KINDS = {"model": "models", "dataset": "datasets", "space": "spaces"}
URL_PREFIX = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}
# The Hub stores files of 10 MB and more in LFS whatever their name.
LFS_THRESHOLD = 10 * 1024 * 1024
# What the Hub writes into every new repository.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz"
        " *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar"
        " *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
LFS_POINTER_RE = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Keys of a plain ASGI HTTP scope: what olah gets, without the routing state of the outer app.
ASGI_SCOPE_KEYS = {
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
    "state",
    "extensions",
}


class HubError(Exception):
    """An error answered the way the Hub does: status, X-Error-Code and message."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> Response:
        headers = {"X-Error-Message": self.message}
        if self.code:
            headers["X-Error-Code"] = self.code
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


class GitRepos:
    """The git repositories olah serves; writes are serialized by one lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()

    def path(self, kind: str, repo_id: str) -> Path:
        return self.root / kind / repo_id

    def lfs_object(self, repo: Path, oid: str) -> Path:
        # Where olah's LocalMirrorRepo looks for LFS content.
        return repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def git(self, repo: Path, *args: str, input: bytes | None = None, env: dict | None = None) -> bytes:
        result = subprocess.run(["git", *args], cwd=repo, input=input, env=env, capture_output=True)
        if result.returncode != 0:
            raise HubError(400, None, f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def existing(self, kind: str, repo_id: str) -> Path:
        repo = self.path(kind, repo_id)
        if not (repo / ".git").is_dir():
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        return repo

    def resolve(self, repo: Path, revision: str) -> str:
        """The commit id of a branch, tag or commit id, or a Hub RevisionNotFound error."""
        if not revision or revision.startswith("-"):
            raise HubError(400, None, f"Invalid rev id: {revision!r}")
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], cwd=repo, capture_output=True
        )
        if result.returncode != 0:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return result.stdout.decode().strip()

    def object_type(self, repo: Path, commit: str, path: str) -> str | None:
        result = subprocess.run(["git", "cat-file", "-t", f"{commit}:{path}"], cwd=repo, capture_output=True)
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def entries(self, repo: Path, commit: str) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob id) of every file in a commit."""
        out = self.git(repo, "ls-tree", "-r", "-z", commit)
        entries = {}
        for record in filter(None, out.split(b"\0")):
            meta, path = record.split(b"\t", 1)
            mode, _, sha = meta.decode().split()
            entries[path.decode()] = (mode, sha)
        return entries

    def blob(self, repo: Path, sha: str) -> bytes:
        return self.git(repo, "cat-file", "blob", sha)

    def create(self, kind: str, repo_id: str) -> bool:
        """Create the repository with the Hub's initial commit; False if it already exists."""
        repo = self.path(kind, repo_id)
        with self.lock:
            if (repo / ".git").is_dir():
                return False
            repo.mkdir(parents=True, exist_ok=True)
            self.git(repo, "init", "--quiet", "--initial-branch=main")
            blob = self.git(repo, "hash-object", "-w", "--stdin", input=GITATTRIBUTES.encode()).decode().strip()
            self._commit_tree(repo, "main", None, {".gitattributes": ("100644", blob)}, "initial commit")
            return True

    def commit(self, kind: str, repo_id: str, branch: str, lines: list[dict]) -> str:
        """Apply the NDJSON operations of a Hub commit on top of a branch; returns the new commit id."""
        repo = self.existing(kind, repo_id)
        header = lines[0]["value"] if lines and lines[0].get("key") == "header" else {}
        with self.lock:
            # Commits go to existing branches only, like on the Hub.
            head = self.resolve(repo, f"refs/heads/{branch}")
            if header.get("parentCommit") not in (None, head):
                raise HubError(412, None, f"Parent commit {header['parentCommit']} is not the head of {branch}")
            files = self.entries(repo, head)
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key in ("file", "lfsFile") and not valid_path(path):
                    raise HubError(400, None, f"Invalid path in repo: {path!r}")
                if key == "file":
                    content = base64.b64decode(value["content"])
                    files[path] = ("100644", self._hash(repo, content))
                elif key == "lfsFile":
                    oid = value["oid"]
                    lfs_file = self.lfs_object(repo, oid) if SHA256_RE.fullmatch(oid) else None
                    if lfs_file is None or not lfs_file.is_file():
                        raise HubError(400, None, f"LFS object {oid} of {path} was never uploaded")
                    pointer = LFS_POINTER.format(oid=oid, size=lfs_file.stat().st_size).encode()
                    files[path] = ("100644", self._hash(repo, pointer))
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, "EntryNotFound", f"A folder with this name doesn't exist: {path}")
                    for p in doomed:
                        del files[p]
                elif key != "header":
                    raise HubError(400, None, f"Unsupported commit operation {key!r}")
            message = header.get("summary") or "Upload files"
            if header.get("description"):
                message += "\n\n" + header["description"]
            return self._commit_tree(repo, branch, head, files, message)

    def _hash(self, repo: Path, content: bytes) -> str:
        return self.git(repo, "hash-object", "-w", "--stdin", input=content).decode().strip()

    def _commit_tree(self, repo: Path, branch: str, parent: str | None, files: dict, message: str) -> str:
        # A throwaway index builds the tree: the repository has no checkout, olah reads objects only.
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "GIT_INDEX_FILE": os.path.join(tmp, "index")}
            index_info = "".join(f"{mode} {sha}\t{path}\n" for path, (mode, sha) in sorted(files.items()))
            self.git(repo, "update-index", "--add", "--index-info", input=index_info.encode(), env=env)
            tree = self.git(repo, "write-tree", env=env).decode().strip()
        parents = ["-p", parent] if parent else []
        commit = self.git(repo, "commit-tree", tree, *parents, "-m", message).decode().strip()
        self.git(repo, "update-ref", f"refs/heads/{branch}", commit, parent or "")
        return commit

    def lfs_patterns(self, repo: Path, commit: str) -> list[str]:
        if self.object_type(repo, commit, ".gitattributes") != "blob":
            return []
        text = self.git(repo, "cat-file", "blob", f"{commit}:.gitattributes").decode(errors="replace")
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line.split()[1:]]


def valid_path(path: str) -> bool:
    # Newlines and tabs would corrupt the index listing that git update-index reads.
    parts = path.split("/")
    return bool(path) and "" not in parts and not {".", "..", ".git"} & set(parts) and not set("\n\t\0") & set(path)


def lfs_matches(path: str, patterns: list[str]) -> bool:
    # gitattributes: a pattern without a slash matches the file name at any depth.
    return any(fnmatch.fnmatch(path if "/" in p else path.rsplit("/", 1)[-1], p) for p in patterns)


def parse_range(header: str, total: int) -> tuple[int, int] | None:
    """First and last byte of a single `bytes=` range; None when unsatisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(total - int(last), 0), total - 1
    else:
        start, end = int(first), min(int(last), total - 1) if last else total - 1
    return (start, end) if start <= end and start < total else None


class ToOlah(Response):
    """Hands the request to olah, at another path if given; a Range GET gets the requested slice (206)."""

    def __init__(self, olah, path: str | None = None, byte_range: str | None = None) -> None:
        super().__init__()
        self.olah, self.path, self.byte_range = olah, path, byte_range

    async def __call__(self, scope, receive, send) -> None:
        scope = {key: value for key, value in scope.items() if key in ASGI_SCOPE_KEYS}
        if self.path is not None:
            scope["path"], scope["raw_path"] = self.path, self.path.encode()
        if self.byte_range is None:
            await self.olah(scope, receive, send)
            return
        messages = []

        async def keep(message):
            messages.append(message)

        await self.olah(scope, receive, keep)
        if messages[0]["status"] != 200:
            for message in messages:
                await send(message)
            return
        body = b"".join(message.get("body", b"") for message in messages[1:])
        headers = {k.decode(): v.decode() for k, v in messages[0]["headers"] if k.lower() != b"content-length"}
        span = parse_range(self.byte_range, len(body))
        if span is None:
            response = Response(b"", 416, {"Content-Range": f"bytes */{len(body)}"})
        else:
            first, last = span
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
            response = Response(body[first : last + 1], 206, headers)
        await response(scope, receive, send)


def make_app(root: Path, olah_app) -> FastAPI:
    """The Hub API: write endpoints and corrected reads here, everything else mounted from olah."""
    repos = GitRepos(root)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(HubError)
    async def hub_error(_, exc: HubError):
        return exc.response()

    def kind_of(kind: str) -> str:
        if kind not in URL_PREFIX:
            raise HubError(404, None, f"Unknown repository type {kind!r}")
        return kind

    def require_token(request: Request) -> None:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def repo_url(request: Request, kind: str, repo_id: str) -> str:
        return f"{str(request.base_url).rstrip('/')}/{URL_PREFIX[kind]}{repo_id}"

    @app.get("/api/whoami-v2")
    def whoami(request: Request):
        require_token(request)
        return {"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": {"type": "access_token"}}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        content = (await request.json()).get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, flags=re.S)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("the metadata block is not a mapping")
        except yaml.YAMLError as error:
            return JSONResponse({"errors": [{"message": str(error)}], "warnings": []}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        require_token(request)
        payload = await request.json()
        kind = KINDS.get(payload.get("type") or "model")
        if kind is None or not re.fullmatch(r"[\w.-]+", payload.get("name") or ""):
            raise HubError(400, None, f"Invalid repository name or type: {payload}")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = repo_url(request, kind, repo_id)
        if not await asyncio.to_thread(repos.create, kind, repo_id):
            return JSONResponse({"error": f"You already created this {kind[:-1]} repo", "url": url}, 409)
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.post("/api/{kind}/{org}/{name}/preupload/{revision}")
    async def preupload(kind: str, org: str, name: str, revision: str, request: Request):
        require_token(request)
        repo = repos.existing(kind_of(kind), f"{org}/{name}")
        payload = await request.json()

        def modes():
            commit = repos.resolve(repo, revision)
            patterns, entries = repos.lfs_patterns(repo, commit), repos.entries(repo, commit)
            answer = []
            for item in payload["files"]:
                path, sample = item["path"], base64.b64decode(item.get("sample", ""))
                lfs = lfs_matches(path, patterns) or item.get("size", 0) >= LFS_THRESHOLD or b"\0" in sample
                oid = entries[path][1] if path in entries else None
                if oid is not None and lfs:
                    # The client compares an LFS file by its sha256: the oid in the stored pointer.
                    pointer = LFS_POINTER_RE.fullmatch(repos.blob(repo, oid))
                    oid = pointer.group(1).decode() if pointer else None
                mode = "lfs" if lfs else "regular"
                answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return {"files": answer, "commitOid": commit}

        return await asyncio.to_thread(modes)

    async def lfs_batch(kind: str, repo_id: str, request: Request):
        require_token(request)
        repo = repos.existing(kind, repo_id)
        payload = await request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, None, "Only the LFS upload operation is served")
        base = str(request.base_url).rstrip("/")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], item["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not SHA256_RE.fullmatch(oid):
                entry["error"] = {"code": 422, "message": f"Invalid oid {oid!r}"}
            elif not repos.lfs_object(repo, oid).is_file():
                entry["actions"] = {"upload": {"href": f"{base}/lfs-upload/{kind}/{repo_id}/{oid}"}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json")

    @app.post("/{org}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_model(org: str, name: str, request: Request):
        return await lfs_batch("models", f"{org}/{name}", request)

    @app.post("/{kind}/{org}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_other(kind: str, org: str, name: str, request: Request):
        return await lfs_batch(kind_of(kind), f"{org}/{name}", request)

    @app.put("/lfs-upload/{kind}/{org}/{name}/{oid}")
    async def lfs_upload(kind: str, org: str, name: str, oid: str, request: Request):
        repo = repos.existing(kind_of(kind), f"{org}/{name}")
        if not SHA256_RE.fullmatch(oid):
            raise HubError(400, None, f"Invalid oid {oid!r}")
        target = repos.lfs_object(repo, oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        part = tempfile.NamedTemporaryFile(dir=target.parent, delete=False)
        try:
            with part:
                async for chunk in request.stream():
                    digest.update(chunk)
                    part.write(chunk)
            if digest.hexdigest() != oid:
                raise HubError(400, None, f"Uploaded content has sha256 {digest.hexdigest()}, not {oid}")
            os.replace(part.name, target)
        finally:
            # Nothing half-written stays behind: olah would serve it as content.
            if os.path.exists(part.name):
                os.unlink(part.name)
        return Response(status_code=200)

    @app.post("/api/{kind}/{org}/{name}/commit/{revision}")
    async def commit(kind: str, org: str, name: str, revision: str, request: Request):
        require_token(request)
        kind, repo_id = kind_of(kind), f"{org}/{name}"
        if request.query_params.get("create_pr"):
            raise HubError(400, None, "Pull requests are not served")
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        oid = await asyncio.to_thread(repos.commit, kind, repo_id, revision, lines)
        commit_url = f"{repo_url(request, kind, repo_id)}/commit/{oid}"
        return {"commitUrl": commit_url, "commitOid": oid, "pullRequestUrl": None}

    def checked(kind: str, repo_id: str, revision: str, path: str = "", want: str = "tree") -> None:
        """Raise the Hub's 404 for a missing repository, revision or path (olah answers 401 RepoNotFound)."""
        repo = repos.existing(kind, repo_id)
        commit = repos.resolve(repo, revision)
        if path and repos.object_type(repo, commit, path) != want:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision!r}")

    @app.api_route("/api/{kind}/{org}/{name}", methods=["GET", "HEAD"])
    def repo_info(kind: str, org: str, name: str):
        # olah looks the default branch up in its upstream cache only; ask it for "main" explicitly.
        checked(kind_of(kind), f"{org}/{name}", "main")
        return ToOlah(olah_app, f"/api/{kind}/{org}/{name}/revision/main")

    @app.api_route("/api/{kind}/{org}/{name}/revision/{revision}", methods=["GET", "HEAD"])
    def revision_info(kind: str, org: str, name: str, revision: str):
        checked(kind_of(kind), f"{org}/{name}", revision)
        return ToOlah(olah_app)

    @app.api_route("/api/{kind}/{org}/{name}/tree/{revision}", methods=["GET", "HEAD"])
    @app.api_route("/api/{kind}/{org}/{name}/tree/{revision}/{path:path}", methods=["GET", "HEAD"])
    def tree(kind: str, org: str, name: str, revision: str, path: str = ""):
        checked(kind_of(kind), f"{org}/{name}", revision, path.strip("/"))
        # olah only routes the form with a path, even an empty one.
        return ToOlah(olah_app, f"/api/{kind}/{org}/{name}/tree/{revision}/{path}")

    @app.get("/api/{kind}/{org}/{name}/commits/{revision}")
    def commits(kind: str, org: str, name: str, revision: str):
        # Served here: olah's list lacks the authors' "user" field that clients read.
        repo = repos.existing(kind_of(kind), f"{org}/{name}")
        log = repos.git(repo, "log", "-z", "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b", repos.resolve(repo, revision))
        items = []
        for record in filter(None, log.decode().split("\0")):
            oid, author, stamp, title, body = record.split("\x1f")
            date = datetime.datetime.fromtimestamp(int(stamp), datetime.timezone.utc)
            items.append(
                {
                    "id": oid,
                    "title": title,
                    "message": body.strip(),
                    "authors": [{"user": author, "avatar": None}],
                    "date": date.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                }
            )
        return items

    def resolve_file(kind: str, repo_id: str, revision: str, path: str, request: Request):
        checked(kind, repo_id, revision, path, want="blob")
        byte_range = request.headers.get("range") if request.method == "GET" else None
        return ToOlah(olah_app, byte_range=byte_range)

    @app.api_route("/{kind}/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_other(kind: str, org: str, name: str, revision: str, path: str, request: Request):
        return resolve_file(kind_of(kind), f"{org}/{name}", revision, path, request)

    @app.api_route("/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_model(org: str, name: str, revision: str, path: str, request: Request):
        return resolve_file("models", f"{org}/{name}", revision, path, request)

    app.mount("/", olah_app)
    return app


def make_olah(repos_root: Path, cache: Path, upstream: str, port: int):
    """olah's app in offline mode over the local mirrors; its upstream is a port nobody listens on."""
    from olah import server as olah_server
    from olah.configs import OlahConfig

    config = OlahConfig()
    config.offline = True
    config.mirrors_path = [str(repos_root)]
    config.repos_path = str(cache)
    config.hf_scheme, config.hf_netloc, config.hf_lfs_netloc = "http", upstream, upstream
    config.mirror_netloc = config.mirror_lfs_netloc = f"127.0.0.1:{port}"
    olah_server.app.state.app_settings = olah_server.AppSettings(config=config)
    olah_server.app.state.logger = logging.getLogger("olah")
    return olah_server.app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    parent = os.getppid()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # Git must not depend on the user's configuration (identity, signing, hooks): CI machines differ.
    os.environ.update(
        {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": USER,
            "GIT_AUTHOR_EMAIL": f"{USER}@127.0.0.1",
            "GIT_COMMITTER_NAME": USER,
            "GIT_COMMITTER_EMAIL": f"{USER}@127.0.0.1",
        }
    )

    # Bound but never listening: connections to it are refused at once, so olah cannot reach any real Hub.
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    repos_root = args.root / "repos"
    repos_root.mkdir(parents=True, exist_ok=True)
    olah_app = make_olah(repos_root, args.root / "olah-cache", f"127.0.0.1:{upstream.getsockname()[1]}", port)
    app = make_app(repos_root, olah_app)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=2))

    async def serve() -> None:
        async def exit_with_parent() -> None:
            # Never outlive the test session, even when pytest is killed before its teardown runs.
            while os.getppid() == parent:
                await asyncio.sleep(0.5)
            server.should_exit = True

        watcher = asyncio.create_task(exit_with_parent())
        await server.serve(sockets=[listener])
        watcher.cancel()

    partial = args.port_file.with_suffix(".partial")
    partial.write_text(str(port))
    partial.replace(args.port_file)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
