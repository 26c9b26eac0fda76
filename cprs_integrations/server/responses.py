"""JSON answers that never fail to encode."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class JSONAnswer(JSONResponse):
    """A JSON response as UTF-8; text that is not encodable (a lone surrogate echoed back) is ``\\u`` escaped."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")
