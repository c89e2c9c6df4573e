#!/usr/bin/env python3
"""A fake OpenAI-compatible chat-completions provider for the checks that run the release
binary with the AI on (live metrics check, API fuzzing): every call answers a valid verdict.

    python3 scripts/fake_ai.py PORT        # serves until killed, on 127.0.0.1 only
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERDICT = {"label": "false", "confidence": 0.8, "explanation": "The records say otherwise.",
           "sources": [{"title": "Archive", "url": "https://example.org/archive"}]}


class FakeProvider(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({
            "id": "cmpl-1", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(VERDICT)}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(port: int) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), FakeProvider)


if __name__ == "__main__":
    serve(int(sys.argv[1])).serve_forever()
