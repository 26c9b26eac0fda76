"""Refusing text no tokenizer should see: lone surrogates (not encodable as UTF-8) and NUL characters."""

from __future__ import annotations

from .errors import TextDecodingError


def refuse_bad_characters(text: str, field: str) -> None:
    """Raise :class:`TextDecodingError` naming ``field`` and the offset of the first lone surrogate or NUL in ``text``.

    A JSON body may carry both legally (``"\\ud800"``, ``"\\u0000"``); tokenizers fail on the first one with a
    bare ``TypeError``, and the second is almost always a sign of binary data sent as text.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TextDecodingError(
            f"{field} holds a lone surrogate (U+{ord(text[error.start]):04X}) at character {error.start}, which is "
            "not valid Unicode text; send the text as proper UTF-8 (surrogate pairs must be complete)"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise TextDecodingError(
            f"{field} holds a NUL character (U+0000) at character {nul}; binary data is not text, remove it"
        )
