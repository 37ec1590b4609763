"""A small Hugging Face Hub for tests: the HTTP routes the real ``huggingface_hub``, ``transformers`` and
``datasets`` clients use to create repos, upload (regular and LFS), commit, list and download, on 127.0.0.1.

    >>> hub = LocalHub(tmp_path).start()              # uvicorn in a thread, on a free port
    >>> env = hub.client_env(tmp_path / "hf-home")     # HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_DISABLE_XET=1
    >>> subprocess.run([sys.executable, "script.py"], env={**os.environ, **env})
    >>> hub.files("user/model")                       # {path: bytes} at main, straight from the store
    >>> hub.stop()

Storage: blobs are content-addressed files under ``<root>/objects/<sha256>``; each repo is a dict of
branches (name -> commit sha) and commits (sha -> parent, message, date, files). A file record holds its size,
sha256, git blob sha1 and whether it went through LFS. Commits are immutable and get a sha1 over their parent,
message and file table, so a revision is a branch name or a (full or >= 7 character prefix of a) commit sha,
as on the Hub. Repo state lives in memory (one lock); a fresh ``LocalHub`` starts empty.

Not implemented (the tested clients do not need them): Xet storage (clients must run with
``HF_HUB_DISABLE_XET=1``), multipart LFS, pull requests, tags, gating, pagination of tree listings.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

__all__ = ["LocalHub", "TEST_TOKEN", "TEST_USER", "run_client"]

REPO_ROOT = Path(__file__).resolve().parents[1]

TEST_USER = "clay-tester"
TEST_TOKEN = "hf_local_hub_test_token"  # not the shape of a real token (hf_ + 34 alphanumerics)
REPO_TYPES = ("model", "dataset", "space")
# What the real Hub writes into a new repo's .gitattributes (abridged): these paths always go through LFS.
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.parquet",
    "*.arrow",
    "*.npy",
    "*.npz",
    "*.h5",
    "*.onnx",
    "*.pkl",
    "*.zip",
    "*.gz",
    "*.tar",
    "*.tif",
    "*.tiff",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.msgpack",
    "*.zst",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # larger files go through LFS whatever their name
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _is_lfs(path: str, size: int, sample: bytes = b"") -> bool:
    name = path.rsplit("/", 1)[-1]
    return size > LFS_SIZE_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


@dataclasses.dataclass(frozen=True)
class FileRecord:
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    def oid(self) -> str:
        """What preupload answers as the remote oid (the client compares it with its local one)."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclasses.dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, FileRecord]


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)


class HubError(Exception):
    """An HTTP error answer with the Hub's ``X-Error-Code`` (what ``hf_raise_for_status`` maps to exceptions)."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubStore:
    """Repos, commits and blobs; every method is thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status): for debugging a failing test

    # ------------------------------------------------------------------ blobs
    def put_blob(self, data: bytes) -> FileRecord:
        sha = hashlib.sha256(data).hexdigest()
        target = self.objects / sha
        if not target.exists():
            tmp = self.objects / f".tmp-{secrets.token_hex(8)}"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return FileRecord(size=len(data), sha256=sha, git_sha1=_git_blob_sha1(data), lfs=False)

    def blob_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    # ------------------------------------------------------------------ repos
    def get(self, repo_type: str, repo_id: str) -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound")
        return repo

    def create(self, repo_type: str, repo_id: str, private: bool, sdk: str | None) -> tuple[Repo, bool]:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return self.repos[(repo_type, repo_id)], False
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, sdk=sdk, created=_now())
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", "initial commit", "", {".gitattributes": self.put_blob(GITATTRIBUTES)})
            return repo, True

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound")

    def resolve(self, repo: Repo, revision: str) -> Commit:
        with self.lock:
            if revision in repo.branches:
                return repo.commits[repo.branches[revision]]
            if len(revision) >= 7:
                matches = [sha for sha in repo.commits if sha.startswith(revision)]
                if len(matches) == 1:
                    return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _commit(self, repo: Repo, branch: str, title: str, description: str, files: dict[str, FileRecord]) -> Commit:
        parent = repo.branches.get(branch)
        table = json.dumps({p: dataclasses.asdict(r) for p, r in sorted(files.items())}, sort_keys=True)
        sha = hashlib.sha1(f"{parent}\n{title}\n{description}\n{time.time_ns()}\n{table}".encode()).hexdigest()
        commit = Commit(sha=sha, parent=parent, title=title, description=description, date=_now(), files=files)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    def commit(self, repo: Repo, branch: str, operations: list[dict[str, Any]]) -> Commit:
        """Apply NDJSON commit operations (header, file, lfsFile, deletedFile, deletedFolder) to ``branch``."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            files = dict(head.files)
            header: dict[str, Any] = {}
            for op in operations:
                key, value = op.get("key"), op.get("value") or {}
                if key == "header":
                    header = value
                    parent = value.get("parentCommit")
                    if parent and parent != head.sha:
                        raise HubError(412, f"parentCommit {parent} is not the head of {branch} ({head.sha})")
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                    files[self._clean(value["path"])] = self.put_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    oid = value["oid"]
                    if value.get("algo", "sha256") != "sha256" or not self.has_blob(oid):
                        raise HubError(422, f"LFS object {oid} for {value.get('path')} was never uploaded")
                    data = self.blob_path(oid).read_bytes()
                    files[self._clean(value["path"])] = FileRecord(len(data), oid, _git_blob_sha1(data), lfs=True)
                elif key == "deletedFile":
                    path = self._clean(value["path"])
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = self._clean(value["path"]).rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            summary = header.get("summary") or "Upload files"
            return self._commit(repo, branch, summary, header.get("description") or "", files)

    @staticmethod
    def _clean(path: str) -> str:
        parts = path.strip("/").split("/")
        if not path or any(p in ("", ".", "..") for p in parts):
            raise HubError(400, f"invalid path in repo: {path!r}")
        return "/".join(parts)


# --------------------------------------------------------------------------------------------------
# the HTTP layer
# --------------------------------------------------------------------------------------------------


def _card_data(data: bytes) -> dict[str, Any] | None:
    """The YAML front matter of a README, as the Hub's ``cardData``."""
    text = data.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    loaded = yaml.safe_load(text[3:end])
    return loaded if isinstance(loaded, dict) else None


def build_app(store: HubStore, token: str = TEST_TOKEN, user: str = TEST_USER):
    """The FastAPI application. Paths are parsed from the raw (still percent-encoded) path, because revisions
    such as ``refs/pr/1`` arrive as one ``%2F``-quoted segment."""
    app = FastAPI(title="local test Hub")
    lfs_nonces: dict[str, str] = {}  # nonce -> oid, so the unauthenticated PUT (like S3's) is not open to all

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {token}"

    def require_auth(request: Request) -> None:
        if not authorised(request):
            raise HubError(401, "Invalid credentials in Authorization header")

    def readable(request: Request, repo_type: str, repo_id: str) -> Repo:
        repo = store.get(repo_type, repo_id)
        if repo.private and not authorised(request):  # the Hub answers 404 to hide private repos
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound")
        return repo

    def repo_url(request: Request, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{base_url(request)}/{prefix}{repo_id}"

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, err: HubError):
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        return JSONResponse({"error": err.message, **err.extra}, status_code=err.status, headers=headers)

    @app.middleware("http")
    async def _log(request: Request, call_next):
        response = await call_next(request)
        store.requests.append((request.method, request.scope.get("raw_path", b"").decode(), response.status_code))
        return response

    # ------------------------------------------------------------------ account and repos
    @app.get("/api/whoami-v2")
    async def whoami(request: Request):
        require_auth(request)
        return {
            "type": "user",
            "id": "0" * 24,
            "name": user,
            "fullname": "Clay Tester",
            "email": None,
            "emailVerified": False,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        }

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        require_auth(request)
        body = await request.json()
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        if repo_type == "space" and not body.get("sdk"):
            raise HubError(400, "a Space needs an sdk")
        name, org = body.get("name"), body.get("organization") or user
        repo_id = f"{org}/{name}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        _, created = store.create(repo_type, repo_id, private, body.get("sdk"))
        url = repo_url(request, repo_type, repo_id)
        if not created:
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request):
        require_auth(request)
        body = await request.json()
        store.delete(body.get("type") or "model", f"{body.get('organization') or user}/{body['name']}")
        return Response(status_code=200)

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        body = await request.json()
        try:
            _card_data(body.get("content", "").encode())
        except yaml.YAMLError as err:
            raise HubError(400, f"Invalid YAML in README.md: {err}") from err
        return {"errors": [], "warnings": []}

    # ------------------------------------------------------------------ LFS (basic transfer)
    @app.post("/{full:path}.git/info/lfs/objects/batch")
    async def lfs_batch(request: Request, full: str):
        require_auth(request)
        repo_type, repo_id = _split_git_repo(full)
        store.get(repo_type, repo_id)
        body = await request.json()
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(400, "only the upload operation with the basic transfer is implemented")
        objects = []
        for obj in body.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not store.has_blob(obj["oid"], obj["size"]):
                nonce = secrets.token_urlsafe(16)
                lfs_nonces[nonce] = obj["oid"]
                entry["actions"] = {
                    "upload": {"href": f"{base_url(request)}/__lfs/{obj['oid']}?nonce={nonce}", "header": {}},
                    "verify": {"href": f"{base_url(request)}/__lfs/verify", "header": {}},
                }
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json")

    @app.put("/__lfs/{oid}")
    async def lfs_put(request: Request, oid: str, nonce: str):
        if lfs_nonces.get(nonce) != oid:
            raise HubError(403, "unknown or expired upload URL")
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        store.put_blob(data)
        lfs_nonces.pop(nonce, None)
        return Response(status_code=200)

    @app.post("/__lfs/verify")
    async def lfs_verify(request: Request):
        require_auth(request)
        body = await request.json()
        if not store.has_blob(body["oid"], body["size"]):
            raise HubError(404, f"LFS object {body['oid']} of size {body['size']} not found")
        return {"oid": body["oid"], "size": body["size"]}

    # ------------------------------------------------------------------ repo API: /api/{type}s/{id}/...
    @app.api_route("/api/{kind}/{rest:path}", methods=["GET", "POST"])
    async def repo_api(request: Request, kind: str, rest: str):
        if kind not in ("models", "datasets", "spaces"):
            raise HubError(404, f"no route /api/{kind}")
        repo_type = kind[:-1]
        raw = request.scope["raw_path"].decode().split("?")[0]
        segments = [unquote(s) for s in raw.split("/")[3:]]  # after "", "api", kind
        repo_id, action, args = _split_repo_action(segments)
        if action is None or (action == "revision" and request.method == "GET"):
            repo = readable(request, repo_type, repo_id)
            commit = store.resolve(repo, args[0] if args else "main")
            return _info(request, repo, commit)
        if action == "tree" and request.method == "GET":
            repo = readable(request, repo_type, repo_id)
            commit = store.resolve(repo, args[0])
            path = "/".join(args[1:]).strip("/")
            return _tree(repo, commit, path, request.query_params.get("recursive") in ("1", "true", "True"))
        if action == "paths-info" and request.method == "POST":
            repo = readable(request, repo_type, repo_id)
            commit = store.resolve(repo, args[0])
            form = await request.form()
            return _paths_info(commit, [str(p) for p in form.getlist("paths")])
        if action == "refs" and request.method == "GET":
            repo = readable(request, repo_type, repo_id)
            return {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
                ],
                "converts": [],
                "tags": [],
            }
        if action == "commits" and request.method == "GET":
            repo = readable(request, repo_type, repo_id)
            commit, out = store.resolve(repo, args[0]), []
            while commit is not None:
                out.append(
                    {
                        "id": commit.sha,
                        "title": commit.title,
                        "message": commit.description,
                        "date": commit.date,
                        "authors": [{"user": user}],
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return out
        require_auth(request)
        repo = store.get(repo_type, repo_id)
        if action == "preupload":
            commit = store.resolve(repo, args[0])
            body = await request.json()
            files = []
            for f in body.get("files", []):
                existing = commit.files.get(f["path"])
                lfs = _is_lfs(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
                files.append(
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": existing.oid() if existing else None,
                    }
                )
            return {"files": files, "commitOid": commit.sha}
        if action == "commit":
            branch = args[0]
            lines = (await request.body()).decode().splitlines()
            commit = store.commit(repo, branch, [json.loads(line) for line in lines if line.strip()])
            return {
                "success": True,
                "commitOid": commit.sha,
                "pullRequestUrl": None,
                "commitUrl": f"{repo_url(request, repo_type, repo_id)}/commit/{commit.sha}",
            }
        if action == "branch":
            branch = "/".join(args)
            body = await request.json() if (await request.body()) else {}
            with store.lock:
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                repo.branches[branch] = store.resolve(repo, body.get("startingPoint") or "main").sha
            return Response(status_code=200)
        raise HubError(404, f"no route {request.method} /api/{kind}/{rest}")

    def _info(request: Request, repo: Repo, commit: Commit) -> dict[str, Any]:
        readme = commit.files.get("README.md")
        card = _card_data(store.blob_path(readme.sha256).read_bytes()) if readme else None
        blobs = request.query_params.get("blobs") in ("1", "true", "True")
        siblings = []
        for path, rec in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=rec.size, blobId=rec.git_sha1)
                if rec.lfs:
                    sibling["lfs"] = {"sha256": rec.sha256, "size": rec.size, "pointerSize": 134}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": siblings,
            "cardData": card,
            "usedStorage": sum(r.size for r in commit.files.values()),
        }
        if repo.repo_type == "model":
            info.update(
                modelId=repo.repo_id,
                library_name=(card or {}).get("library_name"),
                pipeline_tag=(card or {}).get("pipeline_tag"),
            )
        if repo.repo_type == "space":
            info.update(
                sdk=repo.sdk or (card or {}).get("sdk"),
                subdomain=repo.repo_id.replace("/", "-"),
                runtime={"stage": "NO_APP_FILE", "hardware": {"current": None, "requested": None}},
            )
        return info

    def _entry(path: str, rec: FileRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": rec.git_sha1, "size": rec.size, "path": path}
        if rec.lfs:
            entry["lfs"] = {"oid": rec.sha256, "size": rec.size, "pointerSize": 134}
        return entry

    def _dir_entry(path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def _tree(repo: Repo, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        if path and path in commit.files:
            raise HubError(400, f"{path} is a file, not a folder")
        below = {p: r for p, r in commit.files.items() if p.startswith(prefix)}
        if path and not below:
            raise HubError(404, f"{path} does not exist at {commit.sha}", "EntryNotFound")
        entries, dirs = [], set()
        for p, rec in sorted(below.items()):
            rel = p[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(rel[:depth]))
            if recursive or len(rel) == 1:
                entries.append(_entry(p, rec))
        return sorted([_dir_entry(d) for d in dirs] + entries, key=lambda e: e["path"])

    def _paths_info(commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files) or path == "":
                out.append(_dir_entry(path))
        return out

    # ------------------------------------------------------------------ file downloads
    @app.api_route("/{full:path}", methods=["GET", "HEAD"])
    async def resolve(request: Request, full: str):
        raw = request.scope["raw_path"].decode().split("?")[0]
        segments = [unquote(s) for s in raw.strip("/").split("/")]
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type, segments = segments[0][:-1], segments[1:]
        if "resolve" not in segments:
            raise HubError(404, f"no route {request.method} {raw}")
        i = segments.index("resolve")
        repo_id, revision, path = "/".join(segments[:i]), segments[i + 1], "/".join(segments[i + 2 :])
        repo = readable(request, repo_type, repo_id)
        commit = store.resolve(repo, revision)
        rec = commit.files.get(path)
        if rec is None:
            raise HubError(404, f"Entry not found: {path} at {commit.sha}", "EntryNotFound")
        etag = f'"{rec.sha256 if rec.lfs else rec.git_sha1}"'
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if rec.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(rec.size)})
        start, end, status = 0, rec.size - 1, 200
        range_header = request.headers.get("range")
        if range_header and rec.size:
            start, end = _parse_range(range_header, rec.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{rec.size}"
        headers["Content-Length"] = str(max(0, end - start + 1))
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        with open(store.blob_path(rec.sha256), "rb") as f:
            f.seek(start)
            body = f.read(max(0, end - start + 1))
        return Response(content=body, status_code=status, headers=headers)

    return app


def _split_repo_action(segments: list[str]) -> tuple[str, str | None, list[str]]:
    """``[ns, name, action, *args]`` (or ``[name, action, ...]`` for a legacy id) -> (repo id, action, args)."""
    actions = {"revision", "tree", "paths-info", "preupload", "commit", "refs", "commits", "branch"}
    if len(segments) >= 2 and segments[1] in actions:
        return segments[0], segments[1], segments[2:]
    if len(segments) < 2:
        raise HubError(404, f"no repo in /{'/'.join(segments)}", "RepoNotFound")
    repo_id = "/".join(segments[:2])
    return repo_id, (segments[2] if len(segments) > 2 else None), segments[3:]


def _split_git_repo(full: str) -> tuple[str, str]:
    segments = full.strip("/").split("/")
    if segments[0] in ("datasets", "spaces"):
        return segments[0][:-1], "/".join(segments[1:])
    return "model", "/".join(segments)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` -> (first, last) inclusive; one range only."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.split(",")[0].strip().partition("-")
    if unit.strip() != "bytes":
        raise HubError(416, f"unsupported range unit in {header!r}")
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, f"range {header!r} outside a file of {size} bytes")
    return start, end


class LocalHub:
    """The server in a background thread (uvicorn) on 127.0.0.1 and a free port, storing under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None, token: str = TEST_TOKEN, user: str = TEST_USER):
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="local-hub-")
        self.root = Path(root if root is not None else self._tmp.name)
        self.token, self.user = token, user
        self.store = HubStore(self.root)
        self.url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> LocalHub:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; the server keeps this very socket
        port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.store, self.token, self.user), log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local Hub server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, hf_home: str | os.PathLike, token: bool = True) -> dict[str, str]:
        """Environment for a client process: this endpoint, an empty cache in ``hf_home``, no Xet, no telemetry."""
        hf_home = Path(hf_home)
        env = {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_DATASETS_CACHE": str(hf_home / "datasets"),
            "HF_MODULES_CACHE": str(hf_home / "modules"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_ETAG_TIMEOUT": "30",
            "HF_HUB_DOWNLOAD_TIMEOUT": "60",
            "HF_DATASETS_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
        }
        if token:
            env["HF_TOKEN"] = self.token
        return env

    # ------------------------------------------------------------------ inspection (no HTTP)
    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Every file of ``repo_id`` at ``revision`` with its content."""
        repo = self.store.get(repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        return {p: self.store.blob_path(r.sha256).read_bytes() for p, r in commit.files.items()}

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """The history of ``revision``, newest first."""
        repo = self.store.get(repo_type, repo_id)
        commit, out = self.store.resolve(repo, revision), []
        while commit is not None:
            out.append(commit)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return out

    def exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self.store.repos

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.store.get(repo_type, repo_id)


def quote_revision(revision: str) -> str:
    """A revision as it appears in a URL (``refs/pr/1`` -> ``refs%2Fpr%2F1``)."""
    return quote(revision, safe="")


def run_client(args: list[Any], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> str:
    """Run ``python *args`` with ``env``; return its stdout, or raise AssertionError with the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        env=env,
        cwd=cwd or REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout
