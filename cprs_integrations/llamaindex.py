"""LlamaIndex: :class:`CPRSNodePostprocessor`, a node postprocessor that keeps the query-relevant text.

Use it in a query engine::

    query_engine = index.as_query_engine(node_postprocessors=[CPRSNodePostprocessor(instruction="needle")])
"""

from __future__ import annotations

import asyncio
from typing import List, Optional

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle

from cprs_core.errors import ContextTypeError, QueryError
from cprs_core.validation import listed

from ._shared import DocumentSettings


class CPRSNodePostprocessor(DocumentSettings, BaseNodePostprocessor):
    """Compresses retrieved nodes to the parts a CPRS critic tags for the query.

    Each returned node is a copy of its source with the same ``id_``, relationships and metadata, whose text is
    the kept text. The compression metadata goes into ``metadata[metadata_key]`` (default ``"cprs"``; schema in
    :meth:`~cprs_integrations._shared.DocumentSettings.compression_metadata`, plus ``retrieval_score``, the
    node's score before compression); that key is left out of the metadata the LLM and the embedding see.
    The node's score becomes the highest critic score of its kept spans (0..1: how confidently query-relevant
    text was found in it; with cprs-mini, the relevance probability of its best kept sentence); nodes keep their
    retrieval order. Nodes that are empty, had nothing kept, or scored below ``min_score`` (when set) are
    dropped; an image node without text passes unchanged (there is no text to compress).

    ``mode``, the compressor source and the compression options are those of
    :class:`~cprs_integrations.langchain.CPRSDocumentCompressor`
    (:class:`~cprs_integrations._shared.DocumentSettings`).
    """

    @classmethod
    def class_name(cls) -> str:
        return "CPRSNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        if not isinstance(query_bundle, QueryBundle):
            raise QueryError(
                "CPRSNodePostprocessor compresses for a query: pass query_bundle or query_str "
                f"(query_bundle must be a QueryBundle, got {type(query_bundle).__name__})")
        nodes = listed(nodes, "nodes", NodeWithScore, ContextTypeError)
        for index, item in enumerate(nodes):
            if not isinstance(item, NodeWithScore):
                raise ContextTypeError(
                    f"nodes[{index}] is a {type(item).__name__}, not a NodeWithScore; wrap a node as "
                    "NodeWithScore(node=node)")
            if not _image_only(item.node):  # an image node passes unchanged
                self.check_metadata(item.node.metadata, f"nodes[{index}].node")
        texts = [item.node.get_content(metadata_mode=MetadataMode.NONE) for item in nodes]
        processed = []
        names = [f"nodes[{index}].node" for index in range(len(nodes))]
        for item, kept in zip(nodes, self.compress_texts(texts, query_bundle.query_str, names)):
            if kept is None:
                if _image_only(item.node):
                    processed.append(item)
                continue
            node = item.node.model_copy(deep=True)
            node.set_content(kept.text)
            node.metadata = {
                **item.node.metadata,
                self.metadata_key: {**self.compression_metadata(kept), "retrieval_score": item.score},
            }
            node.excluded_llm_metadata_keys = _with_key(item.node.excluded_llm_metadata_keys, self.metadata_key)
            node.excluded_embed_metadata_keys = _with_key(item.node.excluded_embed_metadata_keys, self.metadata_key)
            processed.append(NodeWithScore(node=node, score=kept.score))
        return processed

    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        """:meth:`_postprocess_nodes` in a worker thread, so the event loop keeps running while the model works."""
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)


def _with_key(keys: List[str], key: str) -> List[str]:
    """``keys`` with ``key`` added at the end unless already there (a node postprocessed twice lists it once)."""
    return list(keys) if key in keys else [*keys, key]


def _image_only(node: BaseNode) -> bool:
    """Whether ``node`` is an image node with an image and no text."""
    return (isinstance(node, ImageNode) and bool(node.image or node.image_path or node.image_url)
            and not node.get_content(metadata_mode=MetadataMode.NONE).strip())
