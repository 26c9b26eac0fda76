"""How adapters find their compressor (an object, a server URL, argument or environment, or a shared local model),
and the settings both document adapters share."""

from __future__ import annotations

import json
import re

import pytest

from cprs_core import BudgetTokenizerError, CPRSCompressor, KeepError, OptionError
from cprs_core.remote import RemoteCompressor
from cprs_integrations._shared import API_KEY_ENV, SERVER_URL_ENV, CompressorSettings, exclusive
from cprs_integrations.langchain import CPRSDocumentCompressor
from cprs_integrations.llamaindex import CPRSNodePostprocessor


@pytest.fixture(autouse=True)
def no_server_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_URL_ENV, raising=False)
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def test_adapters_share_one_loaded_default_model() -> None:
    compressor = CPRSDocumentCompressor().resolve_compressor()
    assert isinstance(compressor, CPRSCompressor) and compressor.critic.name == "cprs-mini"
    assert CPRSNodePostprocessor(instruction="needle").resolve_compressor() is compressor
    assert CompressorSettings(model="cprs-mini").resolve_compressor() is compressor
    assert CompressorSettings(window_size=256).resolve_compressor() is not compressor


def test_server_url_selects_a_shared_remote_client(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = CPRSDocumentCompressor(server_url="http://gpu-box:8091/", timeout=5, api_key="secret").resolve_compressor()
    assert isinstance(remote, RemoteCompressor)
    assert (remote.base_url, remote.timeout, remote.api_key) == ("http://gpu-box:8091", 5, "secret")
    same = CPRSNodePostprocessor(server_url="http://gpu-box:8091", timeout=5, api_key="secret")
    assert same.resolve_compressor() is remote
    assert "secret" not in repr(CPRSDocumentCompressor(server_url="http://gpu-box:8091", api_key="secret"))

    monkeypatch.setenv(SERVER_URL_ENV, "http://from-env:8091")
    monkeypatch.setenv(API_KEY_ENV, "env-key")
    from_env = CompressorSettings().resolve_compressor()
    assert isinstance(from_env, RemoteCompressor)
    assert (from_env.base_url, from_env.api_key) == ("http://from-env:8091", "env-key")
    assert isinstance(CompressorSettings(device="cpu").resolve_compressor(), CPRSCompressor)


def test_local_models_are_called_one_at_a_time_remote_ones_concurrently() -> None:
    local = CompressorSettings().resolve_compressor()
    assert exclusive(local) is exclusive(local)
    remote = CompressorSettings(server_url="http://gpu-box:8091").resolve_compressor()
    with exclusive(remote), exclusive(remote):
        pass

@pytest.mark.parametrize("adapter", [CPRSDocumentCompressor, CPRSNodePostprocessor])
@pytest.mark.parametrize("value", [1.5, -0.1, "high", True])
def test_min_score_outside_zero_to_one_is_an_option_error(adapter: type, value: object) -> None:
    with pytest.raises(OptionError, match=r"min_score must be a span score between 0 and 1, or None \(got "):
        adapter(min_score=value)


@pytest.mark.parametrize("adapter", [CPRSDocumentCompressor, CPRSNodePostprocessor])
@pytest.mark.parametrize("value", ["yes", "no", 1])
def test_allow_empty_query_must_be_a_bool_as_in_the_core(adapter: type, value: object) -> None:
    with pytest.raises(OptionError, match="allow_empty_query must be True or False"):  # pydantic made "yes" True
        adapter(allow_empty_query=value)


def test_a_budget_tokenizer_name_survives_json_round_trips() -> None:
    """It was left out of the JSON: a restored adapter counted target_tokens in the critic's tokens instead."""
    restored = [
        CPRSNodePostprocessor.from_dict(json.loads(CPRSNodePostprocessor(budget_tokenizer="cl100k_base").to_json())),
        CPRSDocumentCompressor.model_validate_json(
            CPRSDocumentCompressor(budget_tokenizer="cl100k_base").model_dump_json()),
    ]
    assert [adapter.budget_tokenizer for adapter in restored] == ["cl100k_base", "cl100k_base"]
    function = CPRSDocumentCompressor(budget_tokenizer=len)
    assert json.loads(function.model_dump_json())["budget_tokenizer"] is None  # not JSON: pass it again


def test_keep_regexes_survive_json_round_trips_with_their_flags() -> None:
    keep = [re.compile("os+lo", re.IGNORECASE), "literal (text)", re.compile(r"caf\w", re.ASCII)]
    restored = [
        CPRSNodePostprocessor.from_dict(json.loads(CPRSNodePostprocessor(keep=keep).to_json())).keep,
        CPRSDocumentCompressor.model_validate_json(CPRSDocumentCompressor(keep=keep).model_dump_json()).keep,
    ]
    for pattern, literal, ascii_only in restored:
        assert isinstance(pattern, re.Pattern) and pattern.search("The OSSLO ferry") is not None
        assert literal == "literal (text)"
        assert ascii_only.search("café") is None and ascii_only.search("cafe") is not None  # re.ASCII was lost
    with pytest.raises(OptionError, match="not a valid regular expression"):
        CPRSDocumentCompressor(keep=[{"regex": "("}])
    with pytest.raises(OptionError, match=r'must be \{"regex"'):
        CPRSNodePostprocessor(keep=[{"pattern": "a"}])


@pytest.mark.parametrize("adapter", [CPRSDocumentCompressor, CPRSNodePostprocessor])
def test_keep_spans_and_budget_tokenizer_are_checked_when_the_adapter_is_built(adapter: type) -> None:
    with pytest.raises(KeepError, match=r"0 <= start < end; got \(5, 2\)"):
        adapter(keep_spans=[(5, 2)])
    with pytest.raises(BudgetTokenizerError, match="got int"):
        adapter(budget_tokenizer=5)
    assert adapter(keep_spans=[(0, 10**9)], budget_tokenizer=len).keep_spans == [(0, 10**9)]  # length: on the call
    for span in ((True, 4), ("0", "4"), (0.0, 4.0)):  # as in the core, not made (1, 4) or (0, 4) by pydantic
        with pytest.raises(KeepError, match=r"0 <= start < end; got \("):
            adapter(keep_spans=[span])


def test_a_server_url_that_is_not_http_or_a_timeout_sockets_refuse_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("notaurl", "localhost:8091", "ftp://gpu-box", "http://[::1", "http://gpu-box:abc", "http://h:99999"):
        with pytest.raises(OptionError, match=f"server_url must be an http:// or https:// URL .* got '{re.escape(url)}'"):
            CPRSDocumentCompressor(server_url=url)  # the last three: urllib's bare ValueError or InvalidURL
    with pytest.raises(OptionError, match="server_url has a space in its host, 'gpu box:8091'"):
        CPRSDocumentCompressor(server_url="http://gpu box:8091")
        with pytest.raises(OptionError, match="base_url must be an http"):
            RemoteCompressor(url)
    for timeout in (float("inf"), float("nan"), 0, -1):
        with pytest.raises(OptionError, match="timeout must be a positive number of seconds"):
            CPRSNodePostprocessor(server_url="http://gpu-box:8091", timeout=timeout)
    monkeypatch.setenv(SERVER_URL_ENV, "gpu-box:8091")
    with pytest.raises(OptionError, match=r"\$CPRS_SERVER_URL must be an http"):
        CompressorSettings().resolve_compressor()
