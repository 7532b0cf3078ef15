"""A fake OpenAI-compatible engine (stdlib only) for fault injection in tests.

python fake_engine.py [--port N | --uds PATH] [--host H] [--exit-at-once CODE]
    [--ignore-term] [--fork-child] [--escape-child] [--never-healthy] [--slow-start S]
    [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--uds")
    parser.add_argument("--model", default="fake")
    parser.add_argument("--exit-at-once", type=int)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--fork-child", action="store_true")
    parser.add_argument("--escape-child", action="store_true")
    parser.add_argument("--never-healthy", action="store_true")
    parser.add_argument("--slow-start", type=float, default=0.0)
    return parser.parse_args()


def _sleeper(new_session: bool) -> None:
    if os.fork() == 0:
        if new_session:
            os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)


def main() -> None:
    args = _arguments()
    print(f"fake engine {os.getpid()} starting: {sys.argv[1:]}", flush=True)
    if args.exit_at_once is not None:
        print("fake engine: exiting at once", flush=True)
        sys.exit(args.exit_at_once)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.fork_child:
        _sleeper(new_session=False)
    if args.escape_child:
        _sleeper(new_session=True)
    time.sleep(args.slow_start)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(503 if args.never_healthy else 200, {"ok": not args.never_healthy})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/v1/chat/completions":
                self._send(200, {
                    "id": "fake-1", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model", args.model),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "fake answer"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                })  # fmt: skip
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, format: str, *values: Any) -> None:
            print("fake engine: " + format % values, flush=True)

    if args.uds:

        class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                request, _ = super().get_request()
                return request, ("local", 0)

        if os.path.exists(args.uds):
            os.unlink(args.uds)
        server: socketserver.BaseServer = UnixServer(args.uds, Handler)
    else:
        server = HTTPServer((args.host, args.port), Handler)
    print(f"fake engine listening on {args.uds or args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
