"""cprs_integrations: LangChain and LlamaIndex adapters, agent tool-output pruning, and the cprs server.

Names are imported on first use, so ``import cprs_integrations`` needs neither framework: LangChain
(``pip install -e '.[langchain]'``) only for :class:`CPRSDocumentCompressor` and :func:`pruned_tool`, LlamaIndex
(``pip install -e '.[llamaindex]'``) only for :class:`CPRSNodePostprocessor` and :class:`CPRSPrunedTool`, LangChain 1.x
agents (``pip install -e '.[agents]'``) only for :class:`CPRSToolOutputMiddleware`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cprs_core.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from ._shared import CompressorSettings, DocumentSettings
    from .langchain import CPRSDocumentCompressor
    from .langchain_middleware import CPRSToolOutputMiddleware
    from .llamaindex import CPRSNodePostprocessor
    from .llamaindex_tools import CPRSPrunedTool
    from .tools import prune_tool_output, pruned_tool

_EXPORTS = {
    "CPRSDocumentCompressor": ".langchain",
    "CPRSNodePostprocessor": ".llamaindex",
    "CPRSPrunedTool": ".llamaindex_tools",
    "CPRSToolOutputMiddleware": ".langchain_middleware",
    "CompressorSettings": "._shared",
    "DocumentSettings": "._shared",
    "prune_tool_output": ".tools",
    "pruned_tool": ".tools",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
