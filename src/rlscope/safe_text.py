"""Model text made harmless where it is printed on a terminal (``report/page.py`` escapes it for HTML). Kept out of
``common`` so that printing a verdict does not import torch."""

from __future__ import annotations


def terminal_safe(text) -> str:
    """Model text made harmless on a terminal: control characters (ESC sequences that move the cursor, clear the
    screen or retitle the window; BEL; C1 controls) and bidirectional overrides are written as visible escapes
    (``\\x1b``, ``\\u202e``); newlines and tabs stay. For rich output also escape its markup
    (``rich.markup.escape``) so ``[bold]`` in a completion is shown, not obeyed."""
    import unicodedata

    out = []
    for ch in str(text):
        if ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf") or "\u0080" <= ch <= "\u009f":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
