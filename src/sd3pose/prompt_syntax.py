"""The emphasis syntax of prompts, read as ComfyUI (v0.12.1) reads it.

A prompt is split into pieces of text, each with a weight:

- ``(text)`` multiplies the weight of ``text`` by 1.1; groups nest, so ``((text))`` gives 1.21;
- ``(text:1.3)`` sets the weight of ``text`` to 1.3 (it replaces the enclosing weight, it does not
  multiply it). The number is whatever follows the group's *last* colon; when that is not a
  number (``(a:b)``), the group is a plain ``(text)`` group and the colon stays in the text;
- ``\\(`` and ``\\)`` are literal brackets;
- a bracket without its partner is text: ``(unclosed`` is read literally; after a stray ``)``
  brackets are text until a ``(`` balances it.

The text of each piece keeps its spaces and punctuation; the tokenizers read each piece on its own.
No piece is empty. This is only the parsing: how the weights act on the embeddings is
`sd3pose.engine.text`'s job.

``embedding:name`` asks ComfyUI for a textual-inversion embedding from its embeddings folder. This
server has none, so `tokenizer_words` does what ComfyUI does with a name it cannot find: the name
is dropped (and reported), and the text after it is read on, as a word of its own.
"""

from __future__ import annotations

import math
import re

from sd3pose.errors import InvalidRequestError

GROUP_FACTOR = 1.1  # the weight factor of a bare (text) group
ESCAPED = {"\\(": "(", "\\)": ")"}  # an escaped bracket is one symbol, never a group's edge

WeightedPiece = tuple[str, float]

EMBEDDING_PREFIX = "embedding:"
# ComfyUI cuts a piece into words where an embedding starts after a space or a line break.
_EMBEDDING_START = re.compile(f"[ \n]{EMBEDDING_PREFIX}")


def parse_prompt(prompt: str) -> tuple[WeightedPiece, ...]:
    """The prompt's pieces of text and their weights, in order.

    Raises InvalidRequestError when a group asks for a weight that is not a finite number, such as
    ``(word:inf)``: such a weight would turn the whole image into NaNs.
    """
    pieces: list[tuple[list[str], float]] = []
    _collect(_symbols(prompt), 1.0, pieces)
    return tuple(("".join(ESCAPED.get(symbol, symbol) for symbol in symbols), weight) for symbols, weight in pieces)


def tokenizer_words(pieces: tuple[WeightedPiece, ...]) -> tuple[tuple[WeightedPiece, ...], tuple[str, ...]]:
    """The words the tokenizers read, each with its piece's weight, and the embedding names dropped.

    A piece is one word unless ``embedding:`` starts after a space or line break inside it: it is cut
    there. A word that starts with ``embedding:`` loses the name (the first run of non-spaces after
    the prefix); what follows the name, its runs of spaces made single, is read on as the word. A
    name with commas at its ends keeps them in that text, as ComfyUI's fallback lookup does.
    """
    words: list[WeightedPiece] = []
    dropped: list[str] = []
    for text, weight in pieces:
        first, *rest = _EMBEDDING_START.split(text)
        for word in [first] + [EMBEDDING_PREFIX + part for part in rest]:
            if word.startswith(EMBEDDING_PREFIX):
                name, word = _split_embedding(word[len(EMBEDDING_PREFIX) :].strip("\n"))
                dropped.append(name)
            if word:
                words.append((word, weight))
    return tuple(words), tuple(dropped)


def _split_embedding(text: str) -> tuple[str, str]:
    """(the embedding's name, the text read after it) for the text after ``embedding:``."""
    name, *after = text.split() or [""]  # a bare "embedding:" names nothing (ComfyUI fails on it)
    leftover = " ".join(after)
    stripped = name.strip(",")
    if len(stripped) < len(name):  # ComfyUI keeps what its comma-stripped retry cut off
        leftover = f"{name[len(stripped) :]} {leftover}"
    return name, leftover


def _symbols(text: str) -> list[str]:
    """The characters of text, with each backslash-bracket pair as one two-character symbol."""
    symbols: list[str] = []
    i = 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ESCAPED:
            symbols.append(pair)
            i += 2
        else:
            symbols.append(text[i])
            i += 1
    return symbols


def _collect(symbols: list[str], weight: float, out: list[tuple[list[str], float]]) -> None:
    for chunk in _top_level_chunks(symbols):
        if len(chunk) < 2 or chunk[0] != "(" or chunk[-1] != ")":
            out.append((chunk, weight))
            continue
        inner, inner_weight = _group_weight(chunk[1:-1], weight)
        _collect(inner, inner_weight, out)


def _group_weight(inner: list[str], outer: float) -> tuple[list[str], float]:
    """A group's symbols and weight: ``text:number`` sets the weight, anything else multiplies it by 1.1."""
    colon = len(inner) - 1 - inner[::-1].index(":") if ":" in inner else -1
    if colon > 0:  # a colon at the very start does not name a weight
        number = "".join(inner[colon + 1 :])
        try:
            value = float(number)
        except ValueError:
            pass
        else:
            if not math.isfinite(value):
                raise InvalidRequestError(
                    f"the prompt weight {number.strip()!r} in ({''.join(inner)}) is not a finite number; "
                    "write a number such as (word:1.2), or escape the brackets as \\( and \\) to keep them as text"
                )
            return inner[:colon], value
    return inner, outer * GROUP_FACTOR


def _top_level_chunks(symbols: list[str]) -> list[list[str]]:
    """Split symbols into plain runs and outermost ``( ... )`` groups (an unclosed group runs to the end).

    The depth counter may go below zero after a stray ``)``; while it is not zero, brackets are
    ordinary symbols of the current chunk.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    depth = 0
    for symbol in symbols:
        if symbol == "(" and depth == 0:
            if current:
                chunks.append(current)
            current = [symbol]
            depth = 1
        elif symbol == "(":
            current.append(symbol)
            depth += 1
        elif symbol == ")":
            current.append(symbol)
            depth -= 1
            if depth == 0:
                chunks.append(current)
                current = []
        else:
            current.append(symbol)
    if current:
        chunks.append(current)
    return chunks
