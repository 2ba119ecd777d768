"""A real HTTP server on 127.0.0.1 standing in for the Hugging Face Hub endpoints that publish and pull use.

Point huggingface_hub at it with ``HF_ENDPOINT=<url>``. It keeps dataset repos in memory as a list of commits
(each one a full snapshot of path -> bytes) and serves: repo creation, repo info (by branch or commit sha), the
recursive tree listing, card metadata validation, preupload (every file "regular", with its git blob oid so that
unchanged files are skipped), NDJSON commits (file / deletedFile / deletedFolder), and file downloads (HEAD and GET
on ``resolve``). ``token`` makes every write need ``Authorization: Bearer <token>``; ``reject_commits`` answers every
commit with 403, as the Hub does for a token without write access.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def blob_oid(content: bytes) -> str:
    """git's object id of a blob."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


REPO = r"/(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"/(?P<rev>[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/datasets{REPO}(?:/revision{REV})?$"), "info"),
    ("GET", re.compile(rf"^/api/datasets{REPO}/tree{REV}(?:/(?P<path>.+))?$"), "tree"),
    ("POST", re.compile(rf"^/api/datasets{REPO}/preupload{REV}$"), "preupload"),
    ("POST", re.compile(rf"^/api/datasets{REPO}/commit{REV}$"), "commit"),
    ("GET", re.compile(rf"^/datasets{REPO}/resolve{REV}/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/datasets{REPO}/resolve{REV}/(?P<path>.+)$"), "metadata"),
]
WRITES = {"create", "preupload", "commit"}


def route(method: str, path: str) -> tuple[str, re.Match]:
    for route_method, pattern, name in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return name, match
    raise HubError(404, f"no route for {method} {path}")


class LocalHub:
    def __init__(self, token: str | None = None, reject_commits: bool = False):
        self.token = token
        self.reject_commits = reject_commits
        self.repos: dict[str, list[Commit]] = {}
        self.private: dict[str, bool] = {}
        self.authorizations: list[str | None] = []
        self.downloads: list[str] = []  # paths served by GET resolve
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_route(self, method: str) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers: dict[str, str] = {}
                try:
                    name, match = route(method, unquote(url.path))
                    with hub.lock:
                        hub.authorizations.append(self.headers.get("Authorization"))
                        if name in WRITES and hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                            raise HubError(401, "Invalid credentials in Authorization header")
                        status, payload = getattr(hub, name)(
                            match.groupdict(), parse_qs(url.query), body, self.headers, headers
                        )
                except HubError as error:
                    status, payload = error.status, json.dumps({"error": str(error)}).encode()
                    if error.code:
                        headers["X-Error-Code"] = error.code
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self.handle_route("GET")

            def do_HEAD(self) -> None:
                self.handle_route("HEAD")

            def do_POST(self) -> None:
                self.handle_route("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # ---- repository state --------------------------------------------------------------------------------------
    def _add_commit(self, repo: str, message: str, files: dict[str, bytes]) -> Commit:
        history = self.repos.setdefault(repo, [])
        parent = history[-1].oid if history else ""
        digest = hashlib.sha1(
            json.dumps([parent, message, sorted((p, blob_oid(c)) for p, c in files.items())]).encode()
        ).hexdigest()
        commit = Commit(digest, message, files)
        history.append(commit)
        return commit

    def _commit_at(self, repo: str, revision: str) -> Commit:
        if repo not in self.repos:
            raise HubError(404, f"Repository Not Found for url: datasets/{repo}", "RepoNotFound")
        history = self.repos[repo]
        if revision == "main":
            return history[-1]
        for commit in history:
            if commit.oid == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def head(self, repo_id: str) -> Commit:
        return self.repos[repo_id][-1]

    def seed(self, repo_id: str, files: dict[str, bytes]) -> Commit:
        """A repo someone else published: an initial commit, then one holding ``files``."""
        self._add_commit(repo_id, "initial commit", {".gitattributes": GITATTRIBUTES})
        self.private[repo_id] = False
        return self._add_commit(repo_id, "upload", {".gitattributes": GITATTRIBUTES, **files})

    # ---- endpoints ---------------------------------------------------------------------------------------------
    def create(self, match, query, body, request_headers, headers):
        request = json.loads(body)
        if request.get("type") != "dataset":
            raise HubError(400, "this stand-in serves dataset repos only")
        repo = f"{request['organization']}/{request['name']}"
        if repo in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo}"}
        self._add_commit(repo, "initial commit", {".gitattributes": GITATTRIBUTES})
        self.private[repo] = request.get("visibility") == "private"
        return 200, {"url": f"{self.url}/datasets/{repo}", "name": repo}

    def validate_yaml(self, match, query, body, request_headers, headers):
        content = json.loads(body)["content"]
        try:
            metadata = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"YAML does not parse: {exc}"}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"warnings": [] if metadata else [{"message": "empty or missing yaml metadata"}]}

    def info(self, match, query, body, request_headers, headers):
        repo = match["repo"]
        commit = self._commit_at(repo, match["rev"] or "main")
        return 200, {
            "_id": repo,
            "id": repo,
            "sha": commit.oid,
            "private": self.private[repo],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def tree(self, match, query, body, request_headers, headers):
        commit = self._commit_at(match["repo"], match["rev"])
        prefix = f"{match['path'].rstrip('/')}/" if match["path"] else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            parts = rest.split("/")
            folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            content = commit.files[path]
            entries.append({"type": "file", "oid": blob_oid(content), "size": len(content), "path": path})
        return 200, [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries

    def preupload(self, match, query, body, request_headers, headers):
        commit = self._commit_at(match["repo"], match["rev"])
        files = []
        for item in json.loads(body)["files"]:
            remote = commit.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": blob_oid(remote) if remote is not None else None,
                }
            )
        return 200, {"files": files, "commitOid": commit.oid}

    def commit(self, match, query, body, request_headers, headers):
        repo = match["repo"]
        parent = self._commit_at(repo, match["rev"])
        if self.reject_commits:
            raise HubError(403, "You don't have the rights to create a commit in this repo")
        files = dict(parent.files)
        message = ""
        for line in body.decode().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value["summary"]
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"unsupported commit operation {item['key']!r}")
        commit = self._add_commit(repo, message, files)
        return 200, {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.url}/datasets/{repo}/commit/{commit.oid}",
        }

    def _file(self, match, headers) -> bytes:
        commit = self._commit_at(match["repo"], match["rev"])
        if match["path"] not in commit.files:
            raise HubError(404, f"Entry not found: {match['path']}", "EntryNotFound")
        content = commit.files[match["path"]]
        headers.update(
            {"X-Repo-Commit": commit.oid, "ETag": f'"{blob_oid(content)}"', "Content-Type": "application/octet-stream"}
        )
        return content

    def metadata(self, match, query, body, request_headers, headers):
        return 200, self._file(match, headers)

    def resolve(self, match, query, body, request_headers, headers):
        content = self._file(match, headers)
        self.downloads.append(match["path"])
        return 200, content

    def __enter__(self) -> LocalHub:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
