"""CPRSNodePostprocessor with real LlamaIndex objects: nodes, a VectorStoreIndex query engine, async, remote mode.

The critic is the digit tagger (``digit_compressor``): it keeps exactly the digit tokens.
"""

from __future__ import annotations


import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from cprs_core import ContextTypeError, CPRSCompressor, KeepError, OptionError, QueryError
from cprs_integrations.llamaindex import CPRSNodePostprocessor

from .event_loop import ticks_while
from .live_server import serve

QUERY = "What is the code?"
FILLER = "Nothing here is a number at all. " * 30


def _nodes() -> list[NodeWithScore]:
    source = RelatedNodeInfo(node_id="source-doc")
    return [
        NodeWithScore(
            node=TextNode(
                id_="node-a",
                text=f"{FILLER}The code is 4471. {FILLER}",
                metadata={"file": "a.txt"},
                excluded_llm_metadata_keys=["file"],
                relationships={NodeRelationship.SOURCE: source},
            ),
            score=0.9,
        ),
        NodeWithScore(node=TextNode(id_="node-empty", text="  \n "), score=0.8),
        NodeWithScore(node=TextNode(id_="node-filler", text=FILLER), score=0.7),
        NodeWithScore(
            node=TextNode(id_="node-b", text=f"Room 12 is open. {FILLER}", metadata={"file": "b.txt"}), score=0.2
        ),
    ]


@pytest.fixture
def postprocessor(digit_compressor: CPRSCompressor) -> CPRSNodePostprocessor:
    return CPRSNodePostprocessor(compressor=digit_compressor, instruction="needle")


def test_is_a_llamaindex_postprocessor_that_serializes_its_options(postprocessor: CPRSNodePostprocessor) -> None:
    assert isinstance(postprocessor, BaseNodePostprocessor)
    assert CPRSNodePostprocessor.class_name() == "CPRSNodePostprocessor"
    data = postprocessor.to_dict()
    assert data["class_name"] == "CPRSNodePostprocessor" and data["instruction"] == "needle"
    assert "compressor" not in data
    restored = CPRSNodePostprocessor.from_dict(data)
    assert restored.instruction == "needle" and restored.granularity == postprocessor.granularity


def test_nodes_keep_id_relationships_metadata_and_get_critic_scores(postprocessor: CPRSNodePostprocessor) -> None:
    nodes = _nodes()
    processed = postprocessor.postprocess_nodes(nodes, query_str=QUERY)

    assert [item.node.node_id for item in processed] == ["node-a", "node-b"]
    first, second = processed
    assert first.node.get_content() == "The code is 4471."
    assert second.node.get_content() == "Room 12 is open."
    assert first.node.relationships == nodes[0].node.relationships
    assert first.node.metadata["file"] == "a.txt"
    cprs = first.node.metadata["cprs"]
    assert cprs["retrieval_score"] == 0.9 and cprs["mode"] == "per_document"
    assert first.score == cprs["score"] == max(span["score"] for span in cprs["spans"])
    assert 0.5 < first.score <= 1.0
    assert nodes[0].node.text[cprs["spans"][0]["start"] : cprs["spans"][0]["end"]] == "The code is 4471."
    assert first.node.excluded_llm_metadata_keys == ["file", "cprs"]
    assert "cprs" in first.node.excluded_embed_metadata_keys
    assert first.node.get_content(metadata_mode=MetadataMode.LLM) == "The code is 4471."
    assert second.node.get_content(metadata_mode=MetadataMode.LLM) == "file: b.txt\n\nRoom 12 is open."
    assert nodes[0].node.text.startswith(FILLER) and "cprs" not in nodes[0].node.metadata
    again = postprocessor.postprocess_nodes(processed, query_str=QUERY)[0].node
    assert again.excluded_llm_metadata_keys == ["file", "cprs"] and again.excluded_embed_metadata_keys == ["cprs"]


def test_an_image_node_without_text_passes_unchanged_and_a_captioned_one_keeps_its_image(
    postprocessor: CPRSNodePostprocessor,
) -> None:
    picture = NodeWithScore(node=ImageNode(id_="picture", image_url="https://example.org/map.png"), score=0.6)
    captioned = NodeWithScore(
        node=ImageNode(id_="captioned", image_url="https://example.org/door.png", text=f"{FILLER}The code is 4471."),
        score=0.5,
    )
    nodes = [picture, NodeWithScore(node=TextNode(id_="empty", text=" "), score=0.4), captioned]
    processed = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    assert [item.node.node_id for item in processed] == ["picture", "captioned"]
    assert processed[0] is picture
    assert processed[1].node.image_url == "https://example.org/door.png"
    assert processed[1].node.get_content() == "The code is 4471."


def test_with_cprs_mini_a_score_cut_off_drops_the_node_that_does_not_answer() -> None:
    answer = TextNode(id_="answer", text="The ferry to Skye leaves from Mallaig at nine. Tickets are sold on board.")
    other = TextNode(id_="other", text="Basalt columns form when lava cools slowly. The island has many of them.")
    query = "Where does the ferry to Skye leave from?"
    core = CPRSCompressor.from_pretrained()
    compressed = CPRSNodePostprocessor(compressor=core).postprocess_nodes(
        [NodeWithScore(node=answer, score=0.3), NodeWithScore(node=other, score=0.4)], query_str=query)
    for item in compressed:  # the score is the best kept sentence's relevance probability
        assert item.score == pytest.approx(item.node.metadata["cprs"]["best_relevance"])
    assert {item.node.node_id: item.score > 0.5 for item in compressed} == {"answer": True, "other": False}
    relevant = SimilarityPostprocessor(similarity_cutoff=0.5).postprocess_nodes(compressed, query_str=query)
    assert [item.node.node_id for item in relevant] == ["answer"]
    assert relevant[0].node.get_content().startswith("The ferry to Skye leaves from Mallaig")


def test_joint_mode_and_missing_query(digit_compressor: CPRSCompressor) -> None:
    joint = CPRSNodePostprocessor(compressor=digit_compressor, instruction="needle", mode="joint", granularity="token")
    processed = joint.postprocess_nodes(_nodes(), QueryBundle(QUERY))
    kept = [(item.node.node_id, item.node.get_content()) for item in processed]
    assert kept == [("node-a", "4471"), ("node-b", "12")]
    assert processed[0].node.metadata["cprs"]["mode"] == "joint"
    with pytest.raises(QueryError, match="pass query_bundle or query_str"):
        joint.postprocess_nodes(_nodes())
    with pytest.raises(ContextTypeError, match=r"nodes\[0\] is a TextNode, not a NodeWithScore"):
        joint.postprocess_nodes([item.node for item in _nodes()], QueryBundle(QUERY))  # type: ignore[misc]


async def test_nodes_from_a_generator_are_all_compressed_and_wrong_arguments_are_named(
    postprocessor: CPRSNodePostprocessor,
) -> None:
    expected = [item.node.node_id for item in postprocessor.postprocess_nodes(_nodes(), query_str=QUERY)]
    assert [item.node.node_id for item in postprocessor.postprocess_nodes(iter(_nodes()), query_str=QUERY)] == expected
    processed = await postprocessor.apostprocess_nodes(iter(_nodes()), query_str=QUERY)
    assert [item.node.node_id for item in processed] == expected
    for wrong in (None, _nodes()[0]):
        with pytest.raises(ContextTypeError, match="nodes must be a list"):
            postprocessor.postprocess_nodes(wrong, query_str=QUERY)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="query_bundle must be a QueryBundle, got str"):
        postprocessor.postprocess_nodes(_nodes(), QUERY)  # type: ignore[arg-type]  # the question as query_bundle


def _index() -> VectorStoreIndex:
    documents = [
        Document(text=f"{FILLER}The code is 4471. {FILLER}", metadata={"file": "a.txt"}),
        Document(text=FILLER, metadata={"file": "filler.txt"}),
        Document(text=f"Room 12 is open. {FILLER}", metadata={"file": "b.txt"}),
    ]
    return VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))


async def test_query_engine_sync_and_async(postprocessor: CPRSNodePostprocessor) -> None:
    index = _index()
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=3), llm=MockLLM(), node_postprocessors=[postprocessor]
    )
    for response in (engine.query(QUERY), await engine.aquery(QUERY)):
        kept = sorted(item.node.get_content() for item in response.source_nodes)
        assert kept == ["Room 12 is open.", "The code is 4471."]
        assert all(item.node.ref_doc_id in index.ref_doc_info for item in response.source_nodes)
        prompt = str(response)  # MockLLM answers with its prompt
        assert "The code is 4471." in prompt and "Room 12 is open." in prompt
        assert "Nothing here is a number" not in prompt and "retrieval_score" not in prompt

    as_query_engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=3, node_postprocessors=[postprocessor])
    assert len(as_query_engine.query(QUERY).source_nodes) == 2


async def test_async_postprocessing_does_not_block_the_event_loop(postprocessor: CPRSNodePostprocessor) -> None:
    texts = [f"{FILLER * 8} Code {index}7. {FILLER * 8}" for index in range(4)]
    nodes = [NodeWithScore(node=TextNode(text=text), score=1.0) for text in texts]
    processed, during = await ticks_while(postprocessor.apostprocess_nodes(nodes, query_str=QUERY))
    assert len(processed) == 4
    assert during >= 5, f"the ticker advanced {during} times while compressing: the loop was blocked"


def test_remote_mode_calls_a_running_cprs_server(
    digit_compressor: CPRSCompressor, postprocessor: CPRSNodePostprocessor
) -> None:
    local = postprocessor.postprocess_nodes(_nodes(), query_str=QUERY)
    with serve(digit_compressor) as url:
        remote_postprocessor = CPRSNodePostprocessor(server_url=url, instruction="needle")
        remote = remote_postprocessor.postprocess_nodes(_nodes(), query_str=QUERY)
    assert [(item.node.node_id, item.node.text, item.score, item.node.metadata) for item in remote] == [
        (item.node.node_id, item.node.text, item.score, item.node.metadata) for item in local
    ]


def test_metadata_already_under_the_metadata_key_is_an_option_error_not_overwritten(
    postprocessor: CPRSNodePostprocessor,
) -> None:
    mine = NodeWithScore(node=TextNode(text=f"The code is 4471. {FILLER}", metadata={"cprs": "my own data"}))
    with pytest.raises(OptionError, match=r"nodes\[1\]\.node\.metadata already has the key 'cprs' \(holding 'my own"):
        postprocessor.postprocess_nodes([_nodes()[0], mine], query_str=QUERY)
    renamed = CPRSNodePostprocessor(compressor=postprocessor.compressor, instruction="needle", metadata_key="kept")
    assert renamed.postprocess_nodes([mine], query_str=QUERY)[0].node.metadata["cprs"] == "my own data"
    once = postprocessor.postprocess_nodes(_nodes()[:1], query_str=QUERY)
    twice = postprocessor.postprocess_nodes(once, query_str=QUERY)  # an earlier pass's metadata is replaced
    assert twice[0].node.metadata["cprs"]["retrieval_score"] == once[0].score


def test_an_error_about_one_node_names_it(postprocessor: CPRSNodePostprocessor) -> None:
    short = NodeWithScore(node=TextNode(text="4 5"), score=0.1)
    spanning = CPRSNodePostprocessor(compressor=postprocessor.compressor, instruction="needle", keep_spans=[(0, 5)])
    with pytest.raises(KeepError, match=r"^nodes\[1\]\.node: keep_spans .* <= 3 \(the context's length\)"):
        spanning.postprocess_nodes([_nodes()[0], short], query_str=QUERY)
