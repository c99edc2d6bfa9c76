"""A small in-memory Hugging Face Hub for tests: enough of the HTTP API for the real `huggingface_hub` client.

No machine here reaches huggingface.co, so the Hub round trips of `peft_transfer.hub` run against this server
on 127.0.0.1. It implements what the client (checked against huggingface_hub 1.x and 2.x) calls for creating
repos, committing (regular files inline in the NDJSON commit, large files through the LFS batch API), listing
and downloading files, and model card validation. It does NOT speak Xet: files answered "lfs" by `preupload`
travel through Xet whenever `hf_xet` is importable, so a test either sets `HF_HUB_DISABLE_XET=1` (LFS path) or
sets `lfs_mode = "all_regular"` (Xet on: every file inline, and `upload_folder` takes its pipelined path).

Behaviour that matters to tests:
- every commit gets a new sha and history is kept, so older revisions (by sha) stay downloadable;
- private repos answer `RepoNotFound` to anyone but their owner's token, as the Hub does;
- `requests` logs (method, path, user) for each request; tokens themselves are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class HubError(Exception):
    """An HTTP error answer; `code` goes into `X-Error-Code`, which the client turns into typed errors."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Blob:
    """File content with the two hashes the Hub reports: git blob sha1 (`oid`) and sha256 (LFS oid)."""

    def __init__(self, data: bytes, lfs: bool):
        self.data, self.lfs = data, lfs
        self.sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.sha256 = hashlib.sha256(data).hexdigest()

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.sha1, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


class HubServer:
    """The server and its state. Use as a context manager; `url` is the value for `HF_ENDPOINT`.

    Args:
        users (`dict[str, str]`, *optional*): token -> user name; defaults to one user `tester`.
        lfs_mode (`str`): `"all_regular"` (every file inline) or `"by_size"` (files of at least
            `lfs_threshold` bytes answered `"lfs"`).
    """

    def __init__(self, users: dict[str, str] | None = None, lfs_mode: str = "by_size", lfs_threshold: int = 1024):
        self.users = users or {"hf_test_token_tester": "tester"}
        self.lfs_mode, self.lfs_threshold = lfs_mode, lfs_threshold
        self.repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo_id) -> repo
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content uploaded through the LFS batch API
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def token(self) -> str:
        return next(iter(self.users))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state helpers (also for test assertions)
    def repo(self, repo_id: str, repo_type: str = "model") -> dict:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, Blob]:
        repo = self.repo(repo_id, repo_type)
        return repo["commits"][self._resolve(repo, revision)]["files"]

    def all_blobs(self):
        """Every file of every commit of every repo, and every LFS object: for 'was X ever uploaded' checks."""
        for repo in self.repos.values():
            for commit in repo["commits"].values():
                yield from commit["files"].items()
        for oid, data in self.lfs_objects.items():
            yield f"lfs:{oid}", Blob(data, lfs=True)

    def _new_sha(self) -> str:
        return hashlib.sha1(f"commit-{next(self._counter)}-{id(self)}".encode()).hexdigest()

    def _resolve(self, repo: dict, rev: str) -> str:
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if rev in repo["commits"]:
            return rev
        matches = [sha for sha in repo["commits"] if len(rev) >= 7 and sha.startswith(rev)]
        if len(matches) == 1:
            return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _get_repo(self, repo_type: str, repo_id: str, user: str | None, write: bool = False) -> dict:
        repo = self.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo["private"] or user == repo_id.split("/")[0])
        if not visible:
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and user != repo_id.split("/")[0]:
            raise HubError(403, "You don't have the rights to write to this repo")
        return repo


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, *args) -> None:  # silence the default stderr log
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        self.body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict:
        body = self._body()
        if "application/x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            return {k: v if len(v) > 1 or k == "paths" else v[0] for k, v in parse_qs(body.decode()).items()}
        return json.loads(body or b"{}")

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None, head=False) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        user = self.hub.users.get(auth[len("Bearer ") :])
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]  # split BEFORE unquoting: revs carry %2F
        self.body_consumed = False
        try:
            user = self._user()
            with self.hub.lock:
                self.hub.requests.append((method, url.path, user))
            self._route(method, parts, user)
        except HubError as e:
            if not self.body_consumed:
                self._body()  # drain the request so the kept-alive connection stays in sync
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, {"error": e.message}, headers, head=method == "HEAD")

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    # ------------------------------------------------------------------ routes
    def _route(self, method: str, parts: list[str], user: str | None) -> None:
        hub = self.hub
        if parts[:2] == ["api", "whoami-v2"]:
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            return self._send(200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(user)
        if parts[:3] == ["api", "repos", "delete"] and method == "DELETE":
            payload = self._json_body()
            repo_id = f"{payload.get('organization') or user}/{payload['name']}"
            with hub.lock:
                hub._get_repo(payload.get("type") or "model", repo_id, user, write=True)
                del hub.repos[(payload.get("type") or "model", repo_id)]
            return self._send(200, {})
        if parts[0] == "lfs-upload" and method == "PUT":
            data = self._body()
            if hashlib.sha256(data).hexdigest() != parts[1]:
                raise HubError(400, "sha256 mismatch")
            with hub.lock:
                hub.lfs_objects[parts[1]] = data
            return self._send(200, {})
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in _PREFIXES:
            return self._repo_api(method, _PREFIXES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:], user)
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = _PREFIXES[parts[0]], parts[1:]
        if len(parts) >= 2 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][: -len('.git')]}", user)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(method, repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), user)
        raise HubError(404, f"no route for {method} /{'/'.join(parts)}")

    def _validate_yaml(self) -> None:
        import yaml

        content = self._json_body().get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as e:
                return self._send(400, {"errors": [{"message": str(e)}], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def _create_repo(self, user: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = self._json_body()
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, "You don't have the rights to create a repo in this namespace")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._send(409, {"error": "You already created this repo", "url": url})
            private = payload.get("visibility", "public") == "private" if "visibility" in payload else bool(
                payload.get("private")
            )
            sha = self.hub._new_sha()
            files = {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}
            self.hub.repos[(repo_type, repo_id)] = {
                "id": repo_id,
                "type": repo_type,
                "private": private,
                "refs": {"main": sha},
                "commits": {sha: {"files": files, "parent": None, "message": "initial commit"}},
            }
        self._send(200, {"url": url, "name": repo_id})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], user: str | None) -> None:
        hub = self.hub
        action = rest[0] if rest else None
        write = action in ("preupload", "commit", "branch", "settings")
        with hub.lock:
            repo = hub._get_repo(repo_type, repo_id, user, write=write)
        if method == "GET" and action in (None, "revision"):
            with hub.lock:
                sha = hub._resolve(repo, rest[1] if action else "main")
                files = repo["commits"][sha]["files"]
            return self._send(
                200,
                {
                    "id": repo_id,
                    "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                    "author": repo_id.split("/")[0],
                    "sha": sha,
                    "private": repo["private"],
                    "gated": False,
                    "disabled": False,
                    "tags": [],
                    "siblings": [{"rfilename": path} for path in sorted(files)],
                },
            )
        if method == "GET" and action == "tree":
            with hub.lock:
                files = repo["commits"][hub._resolve(repo, rest[1])]["files"]
            prefix = "/".join(rest[2:])
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send(200, _tree(files, prefix, recursive))
        if method == "POST" and action == "paths-info":
            with hub.lock:
                files = repo["commits"][hub._resolve(repo, rest[1])]["files"]
            paths = self._json_body().get("paths", [])
            paths = [paths] if isinstance(paths, str) else paths
            return self._send(200, [files[p].tree_entry(p) for p in paths if p in files])
        if method == "POST" and action == "preupload":
            with hub.lock:
                hub._resolve(repo, rest[1])
            answers = []
            for f in self._json_body()["files"]:
                lfs = hub.lfs_mode == "by_size" and f["size"] >= hub.lfs_threshold
                answers.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            return self._send(200, {"files": answers, "commitOid": repo["refs"].get(rest[1])})
        if method == "POST" and action == "commit":
            return self._commit(repo, rest[1])
        if method == "POST" and action == "branch":
            start = self._json_body().get("startingPoint") or "main"
            with hub.lock:
                if rest[1] in repo["refs"]:
                    raise HubError(409, "Reference already exists")
                repo["refs"][rest[1]] = hub._resolve(repo, start)
            return self._send(200, {})
        if method == "PUT" and action == "settings":
            payload = self._json_body()
            with hub.lock:
                if "visibility" in payload:
                    repo["private"] = payload["visibility"] == "private"
                elif "private" in payload:
                    repo["private"] = bool(payload["private"])
            return self._send(200, {})
        raise HubError(404, f"no route for {method} {action}")

    def _commit(self, repo: dict, branch: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        hub = self.hub
        with hub.lock:
            if branch not in repo["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["refs"][branch]
            files = dict(repo["commits"][head]["files"])
            message = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    message = value.get("summary", "")
                    parent = value.get("parentCommit")
                    if parent is not None and not head.startswith(parent):
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs_objects:
                        raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = Blob(hub.lfs_objects[value["oid"]], lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            sha = hub._new_sha()
            repo["commits"][sha] = {"files": files, "parent": head, "message": message}
            repo["refs"][branch] = sha
        prefix = "" if repo["type"] == "model" else f"{repo['type']}s/"
        url = f"{hub.url}/{prefix}{repo['id']}/commit/{sha}"
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def _lfs_batch(self, repo_type: str, repo_id: str, user: str | None) -> None:
        with self.hub.lock:
            self.hub._get_repo(repo_type, repo_id, user, write=True)
        objects = []
        for obj in self._json_body()["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs_objects:  # no "actions": already uploaded, the client skips it
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _resolve_file(self, method: str, repo_type: str, repo_id: str, rev: str, path: str, user) -> None:
        with self.hub.lock:
            repo = self.hub._get_repo(repo_type, repo_id, user)
            sha = self.hub._resolve(repo, rev)
            blob = repo["commits"][sha]["files"].get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        etag = blob.sha256 if blob.lfs else blob.sha1
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(blob.data))})
        self._send(200, blob.data, headers, head=method == "HEAD")


def _tree(files: dict[str, Blob], prefix: str, recursive: bool) -> list[dict]:
    """Tree listing under `prefix`: files and folders, immediate children only unless `recursive`."""
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    if prefix and prefix in files:
        return [files[prefix].tree_entry(prefix)]
    out, folders = [], set()
    for path in sorted(files):
        if not path.startswith(base):
            continue
        rest = path[len(base) :].split("/")
        for depth in range(1, len(rest)):
            if recursive or depth == 1:
                folders.add(base + "/".join(rest[:depth]))
        if recursive or len(rest) == 1:
            out.append(files[path].tree_entry(path))
    if prefix and not out and not folders:
        raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
    dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in folders]
    return sorted(dirs, key=lambda d: d["path"]) + out
