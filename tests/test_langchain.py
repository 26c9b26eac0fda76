"""CPRSDocumentCompressor with real LangChain objects: documents, retrievers, pipelines, async, remote mode.

The critic is the digit tagger (``digit_compressor``): it keeps exactly the digit tokens, so what must be kept
is known.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import CharacterTextSplitter

from cprs_core import (
    BudgetError,
    CompressionRequest,
    CompressionResult,
    ContextTypeError,
    CPRSCompressor,
    CPRSError,
    KeepError,
    OptionError,
)
from cprs_integrations.langchain import CPRSDocumentCompressor

from .event_loop import ticks_while
from .live_server import serve

QUERY = "What is the code?"
FILLER = "Nothing here is a number at all. " * 30

DOCUMENTS = [
    Document(f"{FILLER}The code is 4471. {FILLER}", metadata={"source": "a", "page": 1}, id="doc-a"),
    Document("   \n  ", metadata={"source": "blank"}, id="doc-blank"),
    Document(FILLER, metadata={"source": "filler"}, id="doc-filler"),
    Document(f"Room 12 is open. {FILLER}", metadata={"source": "b"}, id="doc-b"),
]


class RecordingCompressor:
    """A real compressor that records each ``compress_batch`` call's size (to check how adapters batch)."""

    def __init__(self, inner: CPRSCompressor) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def compress(
        self, context: str | bytes, query: str = "", instruction: str | None = None, **options: object
    ) -> CompressionResult:
        return self.inner.compress(context, query, instruction, **options)  # type: ignore[arg-type]

    def compress_batch(self, requests: Sequence[CompressionRequest]) -> list[CompressionResult | CPRSError]:
        self.batches.append(len(requests))
        return self.inner.compress_batch(requests)


@pytest.fixture
def compressor(digit_compressor: CPRSCompressor) -> CPRSDocumentCompressor:
    return CPRSDocumentCompressor(compressor=digit_compressor, instruction="needle")


def test_is_a_langchain_document_compressor_with_pydantic_fields(compressor: CPRSDocumentCompressor) -> None:
    assert isinstance(compressor, BaseDocumentCompressor)
    assert compressor.granularity == "sentence" and compressor.mode == "per_document"
    assert compressor.metadata_key == "cprs"
    assert "compressor" not in compressor.model_dump()
    with pytest.raises(OptionError, match=r"mode: Input should be 'per_document' or 'joint' \(got 'sideways'\)"):
        CPRSDocumentCompressor(mode="sideways")
    with pytest.raises(OptionError, match="unknown option 'target_ratoi': did you mean 'target_ratio'"):
        CPRSDocumentCompressor(target_ratoi=0.1)  # a typo must not silently compress without a budget


def test_per_document_keeps_id_and_metadata_adds_cprs_metadata_and_drops_empty(
    compressor: CPRSDocumentCompressor,
) -> None:
    compressed = compressor.compress_documents(DOCUMENTS, QUERY)

    assert [document.id for document in compressed] == ["doc-a", "doc-b"]
    first, second = compressed
    assert first.page_content == "The code is 4471."
    assert second.page_content == "Room 12 is open."
    assert first.metadata["source"] == "a" and first.metadata["page"] == 1
    cprs = first.metadata["cprs"]
    assert cprs["mode"] == "per_document" and cprs["granularity"] == "sentence"
    assert cprs["original_tokens"] > 10 * cprs["compressed_tokens"] > 0
    assert cprs["ratio"] == pytest.approx(cprs["original_tokens"] / cprs["compressed_tokens"])
    assert cprs["keep_ratio"] == pytest.approx(1 / cprs["ratio"])
    assert cprs["score"] == max(span["score"] for span in cprs["spans"]) > 0.5
    assert cprs["best_relevance"] is None  # a critic without a relevance head (the 7B format) has none
    for document, source in ((first, DOCUMENTS[0]), (second, DOCUMENTS[3])):
        for span in document.metadata["cprs"]["spans"]:
            assert source.page_content[span["start"] : span["end"]] == span["text"]
            assert span["tag"] == "needle"
    assert "cprs" not in DOCUMENTS[0].metadata and DOCUMENTS[0].page_content.startswith(FILLER)


def test_per_document_mode_compresses_all_documents_in_one_batch_call(digit_compressor: CPRSCompressor) -> None:
    recording = RecordingCompressor(digit_compressor)
    compressed = CPRSDocumentCompressor(compressor=recording, instruction="needle").compress_documents(DOCUMENTS, QUERY)
    assert recording.batches == [len(DOCUMENTS)]
    assert [document.id for document in compressed] == ["doc-a", "doc-b"]


def test_joint_mode_maps_spans_back_to_their_documents(digit_compressor: CPRSCompressor) -> None:
    documents = [Document("alpha beta 12", id="one"), Document("   "), Document("34 gamma delta", id="two"),
                 Document("no digits", id="three")]
    recording = RecordingCompressor(digit_compressor)
    compressed = CPRSDocumentCompressor(
        compressor=recording, instruction="needle", mode="joint", granularity="token"
    ).compress_documents(documents, QUERY)

    assert recording.batches == [1]
    assert [(document.id, document.page_content) for document in compressed] == [("one", "12"), ("two", "34")]
    for document in compressed:
        cprs = document.metadata["cprs"]
        source = next(item for item in documents if item.id == document.id)
        assert cprs["mode"] == "joint"
        assert [source.page_content[span["start"] : span["end"]] for span in cprs["spans"]] == [document.page_content]
    context = "\n\n".join(document.page_content for document in documents)
    joint = digit_compressor.compress(context, QUERY, "needle", granularity="token")
    assert compressed[0].metadata["cprs"]["original_tokens"] == joint.original_tokens


def test_joint_mode_shares_the_budget_across_documents(digit_compressor: CPRSCompressor) -> None:
    documents = [Document(f"Code 4471. {FILLER}", id="a"), Document(f"{FILLER} Room 12.", id="b")]
    budget = 3
    joint = CPRSDocumentCompressor(
        compressor=digit_compressor, instruction="needle", mode="joint", granularity="token", target_tokens=budget
    ).compress_documents(documents, QUERY)
    per_document = CPRSDocumentCompressor(
        compressor=digit_compressor, instruction="needle", granularity="token", target_tokens=budget
    ).compress_documents(documents, QUERY)

    assert sum(len(d.metadata["cprs"]["spans"]) for d in joint) >= 1
    assert joint[0].metadata["cprs"]["compressed_tokens"] <= budget
    assert all(d.metadata["cprs"]["compressed_tokens"] <= budget for d in per_document)
    assert len(per_document) == 2


def test_options_are_passed_to_the_compressor_and_errors_raised(digit_compressor: CPRSCompressor) -> None:
    paragraph = CPRSDocumentCompressor(compressor=digit_compressor, instruction="needle", granularity="paragraph",
                                       metadata_key="compression")
    document = Document("Intro words here.\n\nThe code is 4471. It opens the door.\n\nOutro words.")
    (compressed,) = paragraph.compress_documents([document], QUERY)
    assert compressed.page_content == "The code is 4471. It opens the door."
    assert compressed.metadata["compression"]["granularity"] == "paragraph"

    with pytest.raises(BudgetError):  # when the adapter is built, not on its first call
        CPRSDocumentCompressor(compressor=digit_compressor, target_ratio=0.5, target_tokens=3)
    assert paragraph.compress_documents([], QUERY) == []
    with pytest.raises(ContextTypeError, match=r"documents\[1\] is a str, not a langchain Document"):
        paragraph.compress_documents([document, "The code is 4471."], QUERY)  # type: ignore[list-item]


async def test_documents_from_a_generator_are_all_compressed_and_a_non_list_is_named(
    compressor: CPRSDocumentCompressor,
) -> None:
    expected = [(document.id, document.page_content) for document in compressor.compress_documents(DOCUMENTS, QUERY)]
    compressed = compressor.compress_documents((document for document in DOCUMENTS), QUERY)
    assert [(document.id, document.page_content) for document in compressed] == expected  # not silently []
    compressed = await compressor.acompress_documents((document for document in DOCUMENTS), QUERY)
    assert [(document.id, document.page_content) for document in compressed] == expected
    for wrong in (None, DOCUMENTS[0]):  # a single Document iterates as (field, value) tuples
        with pytest.raises(ContextTypeError, match="documents must be a list"):
            compressor.compress_documents(wrong, QUERY)  # type: ignore[arg-type]


def test_compressor_and_remote_settings_are_exclusive(digit_compressor: CPRSCompressor) -> None:
    with pytest.raises(OptionError, match="not both"):
        CPRSDocumentCompressor(compressor=digit_compressor, server_url="http://127.0.0.1:9")
    with pytest.raises(OptionError, match="; device configures a local model: leave it out, or leave out server_url"):
        CPRSDocumentCompressor(server_url="http://127.0.0.1:9", device="cpu")
    with pytest.raises(OptionError, match="; model, device configure a local model: leave them out"):
        CPRSDocumentCompressor(server_url="http://127.0.0.1:9", model="cprs-mini", device="cpu")
    with pytest.raises(OptionError, match="must implement cprs_core.Compressor"):
        CPRSDocumentCompressor(compressor=object())


def _store() -> InMemoryVectorStore:
    return InMemoryVectorStore.from_documents(list(DOCUMENTS), DeterministicFakeEmbedding(size=16))


async def test_contextual_compression_retriever_sync_and_async(compressor: CPRSDocumentCompressor) -> None:
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=_store().as_retriever(search_kwargs={"k": len(DOCUMENTS)})
    )
    expected = {"doc-a": "The code is 4471.", "doc-b": "Room 12 is open."}
    for documents in (retriever.invoke(QUERY), await retriever.ainvoke(QUERY)):
        assert {document.id: document.page_content for document in documents} == expected
        assert all(document.metadata["cprs"]["compressed_tokens"] > 0 for document in documents)


def test_document_compressor_pipeline_with_a_text_splitter(compressor: CPRSDocumentCompressor) -> None:
    pipeline = DocumentCompressorPipeline(
        transformers=[CharacterTextSplitter(separator=". ", chunk_size=200, chunk_overlap=0), compressor]
    )
    retriever = ContextualCompressionRetriever(base_compressor=pipeline, base_retriever=_store().as_retriever(k=4))
    documents = retriever.invoke(QUERY)
    assert sorted(document.page_content for document in documents) == ["Room 12 is open.", "The code is 4471."]
    assert all(document.metadata["source"] in {"a", "b"} for document in documents)
    assert all(document.metadata["cprs"]["original_tokens"] < 80 for document in documents)  # chunks, not documents


async def test_async_compression_does_not_block_the_event_loop(compressor: CPRSDocumentCompressor) -> None:
    documents = [Document(f"{FILLER * 8} Code {index}7. {FILLER * 8}") for index in range(4)]
    compressed, during = await ticks_while(compressor.acompress_documents(documents, QUERY))
    assert len(compressed) == 4
    assert during >= 5, f"the ticker advanced {during} times while compressing: the loop was blocked"


async def test_concurrent_async_calls_share_one_local_model(compressor: CPRSDocumentCompressor) -> None:
    results = await asyncio.gather(*(compressor.acompress_documents(DOCUMENTS, QUERY) for _ in range(4)))
    assert all([d.page_content for d in result] == ["The code is 4471.", "Room 12 is open."] for result in results)


def test_remote_mode_calls_a_running_cprs_server(
    digit_compressor: CPRSCompressor, compressor: CPRSDocumentCompressor
) -> None:
    local = compressor.compress_documents(DOCUMENTS, QUERY)
    with serve(digit_compressor) as url:
        remote = CPRSDocumentCompressor(server_url=url, instruction="needle")
        assert type(remote.resolve_compressor()).__name__ == "RemoteCompressor"
        compressed = remote.compress_documents(DOCUMENTS, QUERY)
    assert [(d.id, d.page_content, d.metadata) for d in compressed] == [
        (d.id, d.page_content, d.metadata) for d in local
    ]


def test_cprs_mini_metadata_carries_the_best_sentence_relevance_of_each_document() -> None:
    from cprs_core import CPRSCompressor

    core = CPRSCompressor.from_pretrained()
    answer = Document(page_content="The ferry to Skye leaves from Mallaig at nine. Tickets are sold on board.")
    other = Document(page_content="Basalt columns form when lava cools slowly. The island has many of them.")
    query = "Where does the ferry to Skye leave from?"
    kept = CPRSDocumentCompressor(compressor=core).compress_documents([answer, other], query)
    expected = [core.compress(document.page_content, query=query).metadata["best_relevance"] for document in (answer, other)]
    assert expected[0] > 0.5 > expected[1]  # the document that answers, and the one that does not
    assert kept[0].page_content.startswith("The ferry") and kept[0].metadata["cprs"]["best_relevance"] == pytest.approx(expected[0])
    for document in kept[1:]:  # kept only if something of it passed the keep rule
        assert document.metadata["cprs"]["best_relevance"] == pytest.approx(expected[1])


@pytest.mark.parametrize("mode", ["per_document", "joint"])
def test_min_score_drops_the_documents_whose_best_kept_sentence_is_not_relevant(mode: str) -> None:
    from cprs_core import CPRSCompressor

    core = CPRSCompressor.from_pretrained()
    answer = Document(page_content="The ferry to Skye leaves from Mallaig at nine. Tickets are sold on board.")
    other = Document(page_content="Basalt columns form when lava cools slowly. The island has many of them.")
    query = "Where does the ferry to Skye leave from?"
    scores = {document.page_content[:9]: document.metadata["cprs"]["score"] for document in
              CPRSDocumentCompressor(compressor=core, mode=mode).compress_documents([other, answer], query)}
    assert scores["The ferry"] > 0.5 and scores.get("Basalt co", 0.0) < 0.5
    kept = CPRSDocumentCompressor(compressor=core, mode=mode, min_score=0.5).compress_documents([other, answer], query)
    assert [document.page_content[:9] for document in kept] == ["The ferry"]
    assert kept[0].metadata["cprs"]["score"] == pytest.approx(scores["The ferry"])
    forced = CPRSDocumentCompressor(compressor=core, mode=mode, min_score=0.5, keep=["Basalt columns"])
    kept = forced.compress_documents([other, answer], query)  # text forced by keep= is never dropped
    assert [document.page_content[:9] for document in kept] == ["Basalt co", "The ferry"]


def test_joint_mode_keeps_keep_spans_of_every_document_as_per_document_mode_does(
    digit_compressor: CPRSCompressor,
) -> None:
    documents = [Document(f"Alpha first. {FILLER}"), Document(f"Omega first. {FILLER}The code is 4471.")]
    for mode in ("per_document", "joint"):
        forced = CPRSDocumentCompressor(
            compressor=digit_compressor, instruction="needle", mode=mode, keep_spans=[(0, 5)]
        ).compress_documents(documents, QUERY)
        assert [document.page_content.split(" ")[0] for document in forced] == ["Alpha", "Omega"], mode
        assert forced[1].page_content.endswith("The code is 4471."), mode
    for mode in ("per_document", "joint"):  # the same error, naming the document
        with pytest.raises(KeepError, match=r"^documents\[2\]: keep_spans .*<= 3 \(the context's length\); got \(0, 5\)"):
            CPRSDocumentCompressor(compressor=digit_compressor, mode=mode, keep_spans=[(0, 5)]).compress_documents(
                [*documents, Document("4 5")], QUERY)


def test_metadata_already_under_the_metadata_key_is_an_option_error_not_overwritten(
    digit_compressor: CPRSCompressor,
) -> None:
    compressor = CPRSDocumentCompressor(compressor=digit_compressor, instruction="needle")
    mine = Document(f"The code is 4471. {FILLER}", metadata={"cprs": "my own data"})
    with pytest.raises(OptionError, match=r"documents\[1\]\.metadata already has the key 'cprs' \(holding 'my own"):
        compressor.compress_documents([DOCUMENTS[0], mine], QUERY)
    for blank in ("", " "):
        with pytest.raises(OptionError, match="metadata_key must name a metadata key"):
            CPRSDocumentCompressor(compressor=digit_compressor, metadata_key=blank)
    renamed = CPRSDocumentCompressor(compressor=digit_compressor, instruction="needle", metadata_key="compression")
    assert renamed.compress_documents([mine], QUERY)[0].metadata["cprs"] == "my own data"
    once = compressor.compress_documents([DOCUMENTS[0]], QUERY)
    twice = compressor.compress_documents(once, QUERY)  # an earlier compression's metadata is replaced
    assert twice[0].metadata["cprs"]["original_tokens"] < once[0].metadata["cprs"]["original_tokens"]


@pytest.mark.parametrize("mode", ["per_document", "joint"])
def test_a_document_whose_page_content_or_metadata_is_not_a_str_or_dict_is_named(
    digit_compressor: CPRSCompressor, mode: str
) -> None:
    compressor = CPRSDocumentCompressor(compressor=digit_compressor, mode=mode)
    for content in (None, 4471, b"The code is 4471."):  # Document does not check assignments
        document = Document("The code is 4471.")
        document.page_content = content  # type: ignore[assignment]
        with pytest.raises(ContextTypeError, match=rf"documents\[1\]\.page_content must be a str, got {type(content).__name__}"):
            compressor.compress_documents([DOCUMENTS[0], document], QUERY)
    document = Document("The code is 4471.")
    document.metadata = None  # type: ignore[assignment]
    with pytest.raises(ContextTypeError, match=r"documents\[0\]\.metadata must be a dict, got NoneType"):
        compressor.compress_documents([document], QUERY)
