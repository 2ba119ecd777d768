"""A real OpenAI-compatible HTTP server on 127.0.0.1 whose answers a test scripts: faults, latency, verdicts."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant text; None: echo the last user message
    choices: int | None = None  # how many choices to return; None: as many as asked (n)
    body: bytes | None = None  # a raw body replacing the JSON completion (malformed answers)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    logprobs: list[dict] | None = None  # every choice's ``logprobs.content``; None: no logprobs in the answer


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops connections when many clients open at once


Script = Callable[[dict, int], Reply]  # (request JSON, how many times this exact request was seen before) -> Reply


class ScriptedOpenAIServer:
    def __init__(self, script: Script | None = None, latency: float = 0.0):
        self.script = script or (lambda request, seen: Reply())
        self.latency = latency
        self.calls = 0
        self.in_flight = self.max_in_flight = 0
        self.seen: Counter = Counter()
        self.paths: Counter = Counter()  # requests by URL path
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                identity = json.dumps(request["messages"], sort_keys=True)
                with server.lock:
                    server.calls += 1
                    server.paths[self.path] += 1
                    seen = server.seen[identity]
                    server.seen[identity] += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                reply = server.script(request, seen)
                time.sleep(server.latency + reply.delay)
                with server.lock:
                    server.in_flight -= 1
                body = reply.body if reply.body is not None else json.dumps(server.completion(request, reply)).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def completion(request: dict, reply: Reply) -> dict:
        if reply.status >= 400:
            return {"error": {"message": f"scripted {reply.status}", "type": "scripted", "code": reply.status}}
        content = reply.content if reply.content is not None else f"echo: {request['messages'][-1]['content']}"
        count = reply.choices or request.get("n") or 1
        return {
            "id": "cmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"],
            "choices": [
                {
                    "index": i,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                    **({"logprobs": {"content": reply.logprobs}} if reply.logprobs is not None else {}),
                }
                for i in range(count)
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3 * count, "total_tokens": 5 + 3 * count},
        }

    def __enter__(self) -> ScriptedOpenAIServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Serve echo completions with a fixed latency until killed (for benchmarks in another process)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    server = ScriptedOpenAIServer(latency=args.latency)
    print(server.url, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
