"""A LlamaIndex query engine whose retrieved nodes are compressed by CPRS before the response is synthesized.

Six chapters of Acts (King James Bible) are indexed in a ``VectorStoreIndex``; one fact is planted in Acts 3
and a distractor fact about someone else in Acts 5. The query engine retrieves the top k nodes with
LlamaIndex's ``HuggingFaceEmbedding`` over MiniLM, compresses each with :class:`CPRSNodePostprocessor`
(per-document mode, the "fact" instruction) and answers with the LLM at ``CPRS_LLM_BASE_URL`` when one is
configured (see ``models.py``), else with ``MockLLM``, which echoes its prompt, so the output shows exactly
what the LLM was given. Runs offline on the embedded cprs-mini critic::

    python examples/llamaindex_query_engine.py
"""

from __future__ import annotations

from kjv_corpus import chapters, plant
from llama_index.core import Document, VectorStoreIndex
from models import llamaindex_embedding, llamaindex_llm, llm_description, llm_settings

from cprs_integrations.llamaindex import CPRSNodePostprocessor

QUESTION = "Where does Ezra Calloway keep the lighthouse key?"
FACT = "The harbour master of Joppa, Ezra Calloway, keeps the lighthouse key in a cedar box under the stairs."
DISTRACTOR = "The tanner Miriam Okafor keeps her account books in a clay jar by the well."
TOP_K = 3


def load_documents() -> list[Document]:
    """The first six chapters of Acts, with the fact and a distractor planted."""
    corpus = chapters("Acts")[:6]
    corpus[2] = plant(corpus[2], [FACT], at=0.4)
    corpus[4] = plant(corpus[4], [DISTRACTOR], at=0.7)
    return [Document(text=chapter.text, metadata={"source": chapter.citation}) for chapter in corpus]


def main() -> None:
    index = VectorStoreIndex.from_documents(load_documents(), embed_model=llamaindex_embedding())
    retriever = index.as_retriever(similarity_top_k=TOP_K)
    query_engine = index.as_query_engine(
        llm=llamaindex_llm(),
        similarity_top_k=TOP_K,
        node_postprocessors=[CPRSNodePostprocessor(instruction="fact")],
    )
    response = query_engine.query(QUESTION)
    retrieved_chars = sum(len(item.node.get_content()) for item in retriever.retrieve(QUESTION))
    kept_chars = sum(len(item.node.get_content()) for item in response.source_nodes)
    print(f"question: {QUESTION}")
    print(f"MiniLM retrieved the top {TOP_K} of {len(index.docstore.docs)} nodes; "
          f"CPRS kept text from {len(response.source_nodes)}:")
    for item in response.source_nodes:
        cprs = item.node.metadata["cprs"]
        print(
            f"  [{item.node.metadata['source']}] node {item.node.node_id[:8]} score {item.score:.3f}, "
            f"{cprs['original_tokens']} -> {cprs['compressed_tokens']} tokens ({cprs['ratio']:.1f}x): {item.node.text}"
        )
    print(f"context for the LLM: {kept_chars} of {retrieved_chars} retrieved characters")
    print(f"LLM: {llm_description()}")
    if llm_settings() is None:
        print(f"MockLLM echoes the prompt it was given ({len(str(response))} chars):\n{response}")
    else:
        print(f"answer: {response}")


if __name__ == "__main__":
    main()
