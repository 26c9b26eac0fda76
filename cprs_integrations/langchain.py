"""LangChain: :class:`CPRSDocumentCompressor`, a ``BaseDocumentCompressor`` that keeps the query-relevant text.

Use it wherever LangChain takes a document compressor, e.g.::

    from langchain_classic.retrievers import ContextualCompressionRetriever
    retriever = ContextualCompressionRetriever(
        base_compressor=CPRSDocumentCompressor(instruction="needle"), base_retriever=base_retriever
    )
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document

from cprs_core.errors import ContextTypeError
from cprs_core.validation import listed

from ._shared import DocumentSettings


class CPRSDocumentCompressor(DocumentSettings, BaseDocumentCompressor):
    """Compresses retrieved documents to the parts a CPRS critic tags for the query.

    Each returned document is a copy of its source (same ``id``, same metadata) whose ``page_content`` is the
    kept text, with the compression metadata added under ``metadata_key`` (default ``"cprs"``; schema in
    :meth:`~cprs_integrations._shared.DocumentSettings.compression_metadata`). Documents that are empty, had
    nothing kept, or whose best kept span scored below ``min_score`` (when set) are dropped; the others keep their
    order. ``callbacks`` are accepted as the interface asks;
    compression reports no callback events.

    In ``mode="per_document"`` (default) every document is compressed on its own, all in one batch call so
    their windows share forward batches; ``target_ratio``/``target_tokens`` apply to each document. In
    ``mode="joint"`` the documents are joined with ``document_separator`` and compressed as one context, so a
    budget is shared and spent on the most relevant parts of all of them; kept spans are mapped back to their
    documents by character offsets.

    The compressor comes from ``compressor``, ``server_url`` (a cprs server), ``model`` or the embedded
    cprs-mini; see :class:`~cprs_integrations._shared.CompressorSettings` for every option.
    """

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The documents' query-relevant text, with compression metadata; empty results dropped.

        Raises:
            cprs_core.CPRSError: an invalid option (e.g. both budgets) or a document too large;
                :class:`~cprs_core.errors.ContextTypeError` for ``documents`` that are not a list (a generator is
                read once, as a list), an item that is not a ``Document`` or a ``page_content`` that is not a
                str; :class:`~cprs_core.OptionError` for metadata that already holds ``metadata_key`` (other
                than an earlier compression's metadata), which would be overwritten.
        """
        documents = listed(documents, "documents", Document, ContextTypeError)
        for index, document in enumerate(documents):
            if not isinstance(document, Document):
                raise ContextTypeError(
                    f"documents[{index}] is a {type(document).__name__}, not a langchain Document; wrap text as "
                    "Document(page_content=text)")
            if not isinstance(document.page_content, str):
                raise ContextTypeError(
                    f"documents[{index}].page_content must be a str, got {type(document.page_content).__name__}")
            self.check_metadata(document.metadata, f"documents[{index}]")
        kept = self.compress_texts([document.page_content for document in documents], query,
                                   [f"documents[{index}]" for index in range(len(documents))])
        return [
            document.model_copy(
                update={
                    "page_content": item.text,
                    "metadata": {**document.metadata, self.metadata_key: self.compression_metadata(item)},
                }
            )
            for document, item in zip(documents, kept)
            if item is not None
        ]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """:meth:`compress_documents` in a worker thread, so the event loop keeps running while the model works."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
