#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub, on loopback, for the pull tests (no network).

Speaks the subset of the hub's HTTP API that `llamagate pull` uses, the way the hub does:
- GET /api/models/{owner}/{repo}/tree/{revision}?recursive=true: the file list, paged
  with a `Link: <...>; rel="next"` header; each file has `type`, `path`, `size`, `oid` and,
  for large files, `lfs: {oid: <sha256>, size, pointerSize}`.
- GET /{owner}/{repo}/resolve/{revision}/{path}: a 302 to /cdn/..., which serves the bytes
  with `Range: bytes=N-` support (206 + Content-Range) as the hub's CDN does.
- 401 for a gated repo (--gated) unless `Authorization: Bearer <--token>`.
- --cut-after N: the first download of every file ends after N bytes (connection closed
  mid-file); --slow-repo R: files of repo R are sent slowly (progress can be watched).
- GET /_stats: counts (downloads, ranged downloads, cuts) for the tests to check.

Repos are folders under --root: ROOT/owner/repo/<files>. Only the standard library.
"""

import argparse
import hashlib
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"downloads": 0, "ranged": 0, "cuts": 0, "lists": 0}
CUT_DONE = set()
LOCK = threading.Lock()
SHA = {}


def sha256(path):
    key = (path, os.path.getsize(path), os.path.getmtime(path))
    if key not in SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        SHA[key] = h.hexdigest()
    return SHA[key]


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, value, headers=()):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def allowed(self, repo):
        if repo not in ARGS.gated:
            return True
        return self.headers.get("Authorization") == f"Bearer {ARGS.token}"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        if parts == ["_stats"]:
            with LOCK:
                return self.send_json(200, dict(STATS))
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
            return self.tree(f"{parts[2]}/{parts[3]}", urllib.parse.parse_qs(url.query))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = f"{parts[0]}/{parts[1]}"
            if not self.allowed(repo):
                return self.send_json(401, {"error": "Access to this repo is restricted."})
            path = "/".join(parts[4:])
            if not os.path.isfile(os.path.join(ARGS.root, repo, path)):
                return self.send_json(404, {"error": "Entry not found"})
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo}/{urllib.parse.quote(path)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if len(parts) >= 4 and parts[0] == "cdn":
            return self.download(f"{parts[1]}/{parts[2]}", "/".join(parts[3:]))
        return self.send_json(404, {"error": "not found"})

    def tree(self, repo, query):
        base = os.path.join(ARGS.root, repo)
        if not os.path.isdir(base):
            return self.send_json(404, {"error": "Repository not found"})
        if not self.allowed(repo):
            return self.send_json(401, {"error": "Access to this repo is restricted."})
        with LOCK:
            STATS["lists"] += 1
        entries = []
        for dirpath, _, names in sorted(os.walk(base, followlinks=True)):
            for name in sorted(names):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, base)
                size = os.path.getsize(full)
                entry = {"type": "file", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": size, "path": rel}
                if name.endswith(".gguf"):
                    entry["lfs"] = {"oid": sha256(full), "size": size, "pointerSize": 135}
                entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + ARGS.page_size]
        headers = []
        if start + ARGS.page_size < len(entries):
            nxt = f"http://{self.headers.get('Host')}/api/models/{repo}/tree/main?recursive=true&cursor={start + ARGS.page_size}"
            headers.append(("Link", f'<{nxt}>; rel="next"'))
        return self.send_json(200, page, headers)

    def download(self, repo, path):
        full = os.path.join(ARGS.root, repo, path)
        if not os.path.isfile(full):
            return self.send_json(404, {"error": "Entry not found"})
        size = os.path.getsize(full)
        start = 0
        ranged = self.headers.get("Range")
        if ranged:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        with LOCK:
            STATS["downloads"] += 1
            STATS["ranged"] += 1 if ranged else 0
            cut = ARGS.cut_after > 0 and full not in CUT_DONE
            if cut:
                CUT_DONE.add(full)
                STATS["cuts"] += 1
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        limit = start + ARGS.cut_after if cut else size
        slow = repo == ARGS.slow_repo
        with open(full, "rb") as f:
            f.seek(start)
            pos = start
            while pos < min(limit, size):
                block = f.read(min(256 * 1024, min(limit, size) - pos))
                if not block:
                    break
                self.wfile.write(block)
                pos += len(block)
                if slow:
                    time.sleep(0.01)
        if cut:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gated", action="append", default=[])
    p.add_argument("--token", default="")
    p.add_argument("--cut-after", type=int, default=0)
    p.add_argument("--slow-repo", default="")
    p.add_argument("--page-size", type=int, default=2)
    p.add_argument("--lifetime", type=int, default=900, help="seconds before it exits on its own")
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Hub)
    server.daemon_threads = True
    threading.Timer(ARGS.lifetime, server.shutdown).start()
    print(f"mock hub on 127.0.0.1:{ARGS.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
