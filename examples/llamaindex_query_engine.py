"""A LlamaIndex query engine whose retrieved nodes are compressed by CPRS before the response is synthesized.

Six chapters of Acts (King James Bible) are indexed in a ``VectorStoreIndex``; one fact is planted in Acts 3
and a distractor fact about someone else in Acts 5. The query engine retrieves with LlamaIndex's
``MockEmbedding``, compresses each node with :class:`CPRSNodePostprocessor` (per-document mode, the
"fact" instruction) and answers with ``MockLLM``, which echoes its prompt, so the output shows exactly
what the LLM was given. Runs offline on the embedded cprs-mini critic::

    python examples/llamaindex_query_engine.py

``MockEmbedding`` gives every text the same vector, so the retriever returns every node and CPRS does the
selecting; with a real embedding you would retrieve the top k as usual.
"""

from __future__ import annotations

from kjv_corpus import chapters, plant
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from cprs_integrations.llamaindex import CPRSNodePostprocessor

QUESTION = "Where does Ezra Calloway keep the lighthouse key?"
FACT = "The harbour master of Joppa, Ezra Calloway, keeps the lighthouse key in a cedar box under the stairs."
DISTRACTOR = "The tanner Miriam Okafor keeps her account books in a clay jar by the well."


def load_documents() -> list[Document]:
    """The first six chapters of Acts, with the fact and a distractor planted."""
    corpus = chapters("Acts")[:6]
    corpus[2] = plant(corpus[2], [FACT], at=0.4)
    corpus[4] = plant(corpus[4], [DISTRACTOR], at=0.7)
    return [Document(text=chapter.text, metadata={"source": chapter.citation}) for chapter in corpus]


def main() -> None:
    index = VectorStoreIndex.from_documents(load_documents(), embed_model=MockEmbedding(embed_dim=8))
    query_engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=len(index.docstore.docs),
        node_postprocessors=[CPRSNodePostprocessor(instruction="fact")],
    )
    response = query_engine.query(QUESTION)
    retrieved_chars = sum(len(node.get_content()) for node in index.docstore.docs.values())
    kept_chars = sum(len(item.node.get_content()) for item in response.source_nodes)
    print(f"question: {QUESTION}")
    print(f"retrieved {len(index.docstore.docs)} nodes; CPRS kept text from {len(response.source_nodes)}:")
    for item in response.source_nodes:
        cprs = item.node.metadata["cprs"]
        print(
            f"  [{item.node.metadata['source']}] node {item.node.node_id[:8]} score {item.score:.3f}, "
            f"{cprs['original_tokens']} -> {cprs['compressed_tokens']} tokens ({cprs['ratio']:.1f}x): {item.node.text}"
        )
    print(f"context for the LLM: {kept_chars} of {retrieved_chars} retrieved characters")
    print(f"MockLLM echoes the prompt it was given ({len(str(response))} chars):")
    print(str(response))


if __name__ == "__main__":
    main()
