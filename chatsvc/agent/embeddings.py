"""Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Ollama, vLLM, llama.cpp's server)
through the openai SDK, as the chat adapter reaches a chat model. What comes back is checked
before anyone stores or compares it: one vector per text, all of one dimension (the configured
one, or the first response's), every number finite, none all zeros. Anything else is
`EmbeddingsFailed` with a reason from a fixed set, for the metric."""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx2
import openai

log = logging.getLogger(__name__)

# Why a call failed: the metric's label values (chatsvc_embeddings_failures_total{reason}).
TIMEOUT, UNAVAILABLE, INVALID = "timeout", "unavailable", "invalid"
REASONS = (TIMEOUT, UNAVAILABLE, INVALID)
# A vector longer than this is not an embedding (the largest models give 4,096): a response
# that claims one is refused rather than stored.
MAX_DIMENSIONS = 8192


class EmbeddingsFailed(Exception):
    """The endpoint did not give usable vectors; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class OpenAIEmbeddings:
    """`embed(texts, timeout)`: one vector per text, in order, each of `dimension` numbers."""

    def __init__(self, client: openai.OpenAI, model: str, dimension: int = 0) -> None:
        self._client = client
        self.model = model
        self.dimension = dimension  # 0: whatever the first valid response says, then held

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OpenAIEmbeddings:
        client = openai.OpenAI(
            base_url=config["EMBEDDINGS_BASE_URL"],
            api_key=config["EMBEDDINGS_API_KEY"] or "unused",
            timeout=config["EMBEDDINGS_BATCH_TIMEOUT_SECONDS"],
            max_retries=0,  # a failed batch is left for later (kb embed); a query falls back
            http_client=openai.DefaultHttpxClient(verify=httpx2.create_ssl_context()),
        )
        client.platform_headers()  # the first call forks `uname -p`: pay for it at start-up
        return cls(client, config["EMBEDDINGS_MODEL"], config["EMBEDDINGS_DIMENSIONS"])

    def close(self) -> None:
        self._client.close()

    def embed(self, texts: list[str], timeout: float) -> list[list[float]]:
        if not texts:
            return []
        try:
            response = self._client.embeddings.create(
                model=self.model, input=texts, encoding_format="float", timeout=timeout
            )
        except openai.APITimeoutError as error:
            raise EmbeddingsFailed(TIMEOUT, f"no answer within {timeout:g} s") from error
        except openai.APIStatusError as error:
            raise EmbeddingsFailed(UNAVAILABLE, f"status {error.status_code}") from error
        except openai.APIConnectionError as error:
            raise EmbeddingsFailed(UNAVAILABLE, type(error).__name__) from error
        except (openai.APIError, ValueError, TypeError) as error:  # not the wire format at all
            raise EmbeddingsFailed(INVALID, type(error).__name__) from error
        return self._check(response, len(texts))

    def _check(self, response: Any, count: int) -> list[list[float]]:
        data = getattr(response, "data", None)
        if not isinstance(data, list) or len(data) != count:
            raise EmbeddingsFailed(INVALID, f"{count} texts sent, not as many vectors back")
        try:  # the SDK keeps extra or missing fields as they came: nothing is trusted here
            ordered = sorted(data, key=lambda item: int(item.index))
            indexes = [int(item.index) for item in ordered]
            vectors = [item.embedding for item in ordered]
        except (AttributeError, TypeError, ValueError) as error:
            raise EmbeddingsFailed(INVALID, "an item without index or embedding") from error
        if indexes != list(range(count)):
            raise EmbeddingsFailed(INVALID, "the vectors' indexes are not 0..n-1")
        expected = self.dimension
        checked = []
        for vector in vectors:
            checked.append(_vector(vector, expected))
            expected = len(checked[-1])
        if not self.dimension:
            self.dimension = expected
            log.info("embeddings model %s: %d dimensions", self.model, expected)
        return checked


def _vector(vector: Any, dimension: int) -> list[float]:
    """The vector as floats, or EmbeddingsFailed: a list of `dimension` finite numbers (any
    length up to MAX_DIMENSIONS when 0), not all zero."""
    if not isinstance(vector, list) or not 0 < len(vector) <= MAX_DIMENSIONS:
        raise EmbeddingsFailed(INVALID, "an embedding is not a list of numbers")
    if dimension and len(vector) != dimension:
        raise EmbeddingsFailed(INVALID, f"{len(vector)} dimensions, not {dimension}")
    if not all(type(x) in (float, int) for x in vector):  # bool and str are not numbers here
        raise EmbeddingsFailed(INVALID, "an embedding holds something else than numbers")
    values = [float(x) for x in vector]
    if not all(map(math.isfinite, values)):
        raise EmbeddingsFailed(INVALID, "an embedding holds NaN or infinity")
    if not any(values):
        raise EmbeddingsFailed(INVALID, "an embedding is all zeros")
    return values
