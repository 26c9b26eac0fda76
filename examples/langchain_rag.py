"""A LangChain RAG chain whose retrieved documents are compressed by CPRS before they reach the LLM.

Eight chapters of the King James Bible (Ruth and Jonah), split into ~1,000-character chunks, go into an
``InMemoryVectorStore``; a magic number is planted in Ruth 3 and a distractor number in Jonah 2. The retriever is
wrapped in a
``ContextualCompressionRetriever`` with :class:`CPRSDocumentCompressor` in joint mode (the top-k retrieved
chunks compressed as one context), and an LCEL chain answers. Retrieval ranks with real MiniLM sentence
embeddings; the answer comes from the LLM at ``CPRS_LLM_BASE_URL`` when one is configured (see ``models.py``),
else from LangChain's fake chat model. Runs offline on the embedded cprs-mini critic::

    python examples/langchain_rag.py
"""

from __future__ import annotations

from kjv_corpus import chapters, plant
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter
from models import langchain_chat_model, langchain_embeddings, llm_description

from cprs_integrations.langchain import CPRSDocumentCompressor

QUESTION = "What is the special magic number for silver-harbor?"
NEEDLE = "One of the special magic numbers for silver-harbor is: 7318245."
DISTRACTOR = "One of the special magic numbers for quiet-meadow is: 5527190."
CHUNK_CHARS = 1000
TOP_K = 4
OFFLINE_ANSWER = "The special magic number for silver-harbor is 7318245."

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer the question from this context only.\n\n{context}"), ("human", "{question}")]
)


def load_documents() -> list[Document]:
    """The chapters of Ruth and Jonah as documents, with the needle and a distractor planted."""
    corpus = chapters("Ruth") + chapters("Jonah")
    corpus[2] = plant(corpus[2], [NEEDLE], at=0.6)
    corpus[5] = plant(corpus[5], [DISTRACTOR], at=0.3)
    return [Document(chapter.text, metadata={"source": chapter.citation}, id=chapter.citation) for chapter in corpus]


def format_documents(documents: list[Document]) -> str:
    """The prompt's context: each document's (compressed) text under its source."""
    return "\n\n".join(f"[{document.metadata['source']}] {document.page_content}" for document in documents)


def build_chain(documents: list[Document]) -> Runnable:
    """retriever (MiniLM top k, compressed by CPRS) -> prompt -> chat model; returns the documents and the answer."""
    chunks = RecursiveCharacterTextSplitter(chunk_size=CHUNK_CHARS, chunk_overlap=0).split_documents(documents)
    store = InMemoryVectorStore.from_documents(chunks, langchain_embeddings())
    retriever = ContextualCompressionRetriever(
        base_compressor=CPRSDocumentCompressor(instruction="needle", mode="joint"),
        base_retriever=store.as_retriever(search_kwargs={"k": TOP_K}),
    )
    llm = langchain_chat_model(OFFLINE_ANSWER)
    context = RunnablePassthrough.assign(context=lambda inputs: format_documents(inputs["docs"]))
    answer = context | PROMPT | llm | StrOutputParser()
    return RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=answer)


def main() -> None:
    documents = load_documents()
    output = build_chain(documents).invoke(QUESTION)
    print(f"question: {QUESTION}")
    print(f"MiniLM retrieved the top {TOP_K} chunks of {len(documents)} chapters; "
          f"CPRS kept text from {len(output['docs'])}:")
    for document in output["docs"]:
        spans = document.metadata["cprs"]["spans"]
        where = f"chars {spans[0]['start']}-{spans[-1]['end']}"
        print(f"  [{document.metadata['source']}] {where}: {document.page_content}")
    if output["docs"]:
        joint = output["docs"][0].metadata["cprs"]  # in joint mode the counts are of all chapters together
        print(
            f"compression: {joint['original_tokens']} -> {joint['compressed_tokens']} tokens "
            f"({joint['ratio']:.1f}x, mode {joint['mode']})"
        )
    original = format_documents(documents)
    print(f"LLM context: {len(format_documents(output['docs']))} characters instead of {len(original)}")
    print(f"LLM: {llm_description()}")
    print(f"answer: {output['answer']}")


if __name__ == "__main__":
    main()
