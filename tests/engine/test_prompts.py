"""Prompts read as ComfyUI v0.12.1 reads them: whole (77-token CLIP windows, T5 unabridged) and with emphasis.

Each expectation is derived here from the rule itself (token ids sliced by hand, encoder states
computed with transformers directly, the weighting formula written out), never from our encoder.
Tolerance for encoder states: 1e-5 absolute (float32; batched and single forward passes round differently).
"""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_jobs import job, relative_difference

from sd3pose.cli.tiny_model import _CORPUS
from sd3pose.errors import InvalidRequestError
from sd3pose.prompt_syntax import parse_prompt, tokenizer_words
from sd3pose.request import parse_request

ATOL = 1e-5
CLIP_DIM = 32  # the tiny CLIPs' width: CLIP-L fills columns 0-31 of the context, CLIP-G 32-63


@pytest.fixture(scope="module")
def no_t5_engine(tiny_model_dir):
    from sd3pose.engine import Engine

    return Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", use_t5=False)


# ---- the emphasis syntax --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "pieces"),
    [
        ("a red dress", [("a red dress", 1.0)]),
        ("a (red:1.5) dress", [("a ", 1.0), ("red", 1.5), (" dress", 1.0)]),
        ("(red)", [("red", 1.1)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        # An explicit weight replaces the enclosing one; groups inside it multiply it again.
        ("((red:1.5))", [("red", 1.5)]),
        ("(a (b) c:1.3)", [("a ", 1.3), ("b", 1.3 * 1.1), (" c", 1.3)]),
        # The weight is what follows the last colon; a colon first in the group names no weight.
        ("(a:1.2:1.3)", [("a:1.2", 1.3)]),
        ("(:1.5)", [(":1.5", 1.1)]),
        ("(time: noon)", [("time: noon", 1.1)]),
        # Escaped brackets are text, never a group.
        ("\\(red\\)", [("(red)", 1.0)]),
        ("(\\(red\\):1.2)", [("(red)", 1.2)]),
        # Unbalanced brackets are text.
        ("(unclosed", [("(unclosed", 1.0)]),
        ("a) (b)", [("a) (b)", 1.0)]),
        ("()", []),
        ("", []),
    ],
)
def test_the_emphasis_syntax_follows_comfyui(prompt, pieces):
    parsed = parse_prompt(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in pieces]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in pieces], abs=1e-12)


@pytest.mark.parametrize("weight", ["inf", "-inf", "nan", "1e400"])
def test_a_weight_that_is_not_a_finite_number_is_refused_with_a_clear_400(weight):
    with pytest.raises(InvalidRequestError, match=r"field 'prompt': the prompt weight .* is not a finite number"):
        parse_request({"image": "x", "prompt": f"a (red:{weight}) dress"})
    with pytest.raises(InvalidRequestError, match=r"field 'negative_prompt'"):
        parse_request({"image": "x", "prompt": "a dress", "negative_prompt": f"(blurry:{weight})"})


# ---- what the encoders read -----------------------------------------------------------------


def long_prompt(tokenizer, tokens: int) -> str:
    """Words of the tiny vocabulary (one CLIP token each) until the prompt is `tokens` CLIP tokens long."""
    words = [w for w in _CORPUS if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
    prompt = " ".join((words * 3)[:tokens])
    assert len(tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]) == tokens
    return prompt


def clip_states(encoder, ids: list[list[int]]) -> torch.Tensor:
    """transformers' CLIP on these windows: the penultimate layer's states, (windows, 77, width)."""
    with torch.no_grad():
        return encoder(torch.tensor(ids), output_hidden_states=True).hidden_states[-2]


def t5_states(encoder, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.tensor([ids])).last_hidden_state[0]


def test_a_200_token_prompt_is_read_in_3_clip_windows_and_t5_reads_it_all(tiny_engine):
    text = tiny_engine.text
    tokenizer, t5_tokenizer = text.clip_l.tokenizer, text.t5.tokenizer
    prompt = long_prompt(tokenizer, 200)
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # Start token, 75 prompt tokens, end token; the last window padded with the end token (CLIP-L's pad).
    windows = [[bos, *ids[i : i + 75], eos] for i in range(0, 200, 75)]
    windows[-1] += [tokenizer.pad_token_id] * (77 - len(windows[-1]))
    assert [len(w) for w in windows] == [77, 77, 77]
    t5_ids = t5_tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] + [t5_tokenizer.eos_token_id]
    assert len(t5_ids) > 256  # more than diffusers' default T5 length: nothing may be cut

    embeds = text.encode(prompt)
    assert embeds.tokens.shape == (1, 3 * 77 + len(t5_ids), 64)
    expected_l = clip_states(text.clip_l.model, windows).reshape(1, 3 * 77, CLIP_DIM)
    assert torch.allclose(embeds.tokens[:, : 3 * 77, :CLIP_DIM], expected_l, atol=ATOL)
    assert torch.allclose(embeds.tokens[0, 3 * 77 :], t5_states(text.t5.model, t5_ids), atol=ATOL)


@pytest.mark.parametrize("t5", [True, False], ids=["t5", "no-t5"])
def test_the_last_words_of_a_long_prompt_change_the_image(tiny_engine, no_t5_engine, t5):
    engine = tiny_engine if t5 else no_t5_engine
    prompt = long_prompt(engine.text.clip_l.tokenizer, 195)
    # Words 196 onwards: in CLIP's third window, and far beyond T5's 256 tokens of old. They are a few
    # of 200, so they move the (random) model's latents less than a whole new prompt does, yet by
    # far more than float rounding (~1e-6).
    first = engine.generate_latents(job(prompt=prompt + " red dress on a stage"))
    second = engine.generate_latents(job(prompt=prompt + " blue coat in the snow"))
    assert relative_difference(first, second) > 1e-3


def test_without_t5_the_context_is_the_clip_windows_alone(no_t5_engine):
    prompt = long_prompt(no_t5_engine.text.clip_l.tokenizer, 100)
    assert no_t5_engine.text.encode(prompt).tokens.shape == (1, 2 * 77, 64)
    assert no_t5_engine.text.encode("a dancer").tokens.shape == (1, 77, 64)


def test_a_short_weighted_piece_is_never_split_across_windows(no_t5_engine):
    text = no_t5_engine.text
    tokenizer = text.clip_l.tokenizer
    head = long_prompt(tokenizer, 74)  # 74 tokens: one free place left before the end token
    piece = "red dress"
    piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    assert 1 < len(piece_ids) < 8
    embeds = text.encode(f"{head}({piece}:1.2)")
    assert embeds.tokens.shape == (1, 2 * 77, 64)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    first = [bos, *head_ids, eos, pad]  # closed early and padded: the piece moves on whole
    second = [bos, *piece_ids, eos] + [pad] * (77 - len(piece_ids) - 2)
    empty = [bos, eos] + [pad] * 75
    states = clip_states(text.clip_l.model, [first, second, empty])
    expected = states[:2].clone()
    where = slice(1, 1 + len(piece_ids))
    expected[1, where] = states[2, where] + 1.2 * (states[1, where] - states[2, where])
    assert torch.allclose(embeds.tokens[0, : 2 * 77, :CLIP_DIM], expected.reshape(-1, CLIP_DIM), atol=ATOL)


def test_a_weight_moves_the_tokens_away_from_the_empty_prompt_by_the_formula(tiny_engine):
    text = tiny_engine.text
    weighted, plain = text.encode("a (red:1.5) dress"), text.encode("a red dress")

    def check(tokenizer, model, columns: slice) -> None:
        bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a ", "red", " dress")]
        ids = [bos, *pieces[0], *pieces[1], *pieces[2], eos]
        ids += [pad] * (77 - len(ids))
        states = clip_states(model, [ids, [bos, eos] + [pad] * 75])
        z, empty = states[0], states[1]
        expected = z.clone()
        red = slice(1 + len(pieces[0]), 1 + len(pieces[0]) + len(pieces[1]))
        expected[red] = empty[red] + 1.5 * (z[red] - empty[red])  # state = empty + w * (state - empty)
        assert torch.allclose(weighted.tokens[0, :77, columns], expected, atol=ATOL)
        assert not torch.allclose(weighted.tokens[0, red, columns], plain.tokens[0, red, columns], atol=1e-3)

    check(text.clip_l.tokenizer, text.clip_l.model, slice(0, CLIP_DIM))
    check(text.clip_g.tokenizer, text.clip_g.model, slice(CLIP_DIM, 2 * CLIP_DIM))

    # T5 too: one window of at least 77 tokens, empty = [end, pad, pad, ...].
    t5_tokenizer = text.t5.tokenizer
    pieces = [t5_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a ", "red", " dress")]
    ids = [*pieces[0], *pieces[1], *pieces[2], t5_tokenizer.eos_token_id]
    ids += [t5_tokenizer.pad_token_id] * (77 - len(ids))
    z = t5_states(text.t5.model, ids)
    empty = t5_states(text.t5.model, [t5_tokenizer.eos_token_id] + [t5_tokenizer.pad_token_id] * 76)
    red = slice(len(pieces[0]), len(pieces[0]) + len(pieces[1]))
    expected = z.clone()
    expected[red] = empty[red] + 1.5 * (z[red] - empty[red])
    assert torch.allclose(weighted.tokens[0, 77:], expected, atol=ATOL)
    # The pooled vectors read the tokens unweighted.
    assert torch.allclose(weighted.pooled, plain.pooled, atol=ATOL)


def test_escaped_brackets_are_read_as_the_literal_brackets(tiny_engine):
    text = tiny_engine.text
    tokenizer = text.clip_l.tokenizer
    literal = tokenizer("(red)", add_special_tokens=False)["input_ids"]
    assert len(literal) == 3  # "(", "red", ")"
    ids = [tokenizer.bos_token_id, *literal, tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (77 - len(ids))
    embeds = text.encode("\\(red\\)")
    assert torch.allclose(embeds.tokens[0, :77, :CLIP_DIM], clip_states(text.clip_l.model, [ids])[0], atol=ATOL)
    # ...and not as a weighted group.
    assert not torch.allclose(embeds.tokens, text.encode("(red)").tokens, atol=1e-3)


@pytest.mark.parametrize(
    "prompt, words, dropped",
    [
        # Cut where "embedding:" follows a space or line break; the name goes, the rest is its own word.
        ("a photo of embedding:foo in the park", [("a photo of", 1.0), ("in the park", 1.0)], ["foo"]),
        ("a\nembedding:foo  bar   baz", [("a", 1.0), ("bar baz", 1.0)], ["foo"]),  # spaces made single
        ("(embedding:bar:1.2), red", [(", red", 1.0)], ["bar"]),  # a weighted piece that is only a name
        ("x embedding:foo,", [("x", 1.0), (", ", 1.0)], ["foo,"]),  # end commas stay, as ComfyUI's retry
        ("embedding:", [], [""]),  # a bare prefix names nothing (ComfyUI raises IndexError on it)
        ("myembedding:foo", [("myembedding:foo", 1.0)], []),  # not at a word's start: plain text
    ],
)
def test_an_embedding_name_is_dropped_as_comfyui_drops_one_it_cannot_find(prompt, words, dropped):
    assert tokenizer_words(parse_prompt(prompt)) == (tuple(words), tuple(dropped))


def test_a_prompt_with_an_embedding_is_encoded_as_the_prompt_without_it_and_the_log_says_so(tiny_engine, caplog):
    text = tiny_engine.text
    with caplog.at_level(logging.WARNING, logger="sd3pose.engine.text"):
        embeds = text.encode("a dancer embedding:easynegative")
    plain = text.encode("a dancer")
    assert torch.equal(embeds.tokens, plain.tokens) and torch.equal(embeds.pooled, plain.pooled)
    assert any("embedding:easynegative ignored" in r.getMessage() for r in caplog.records), caplog.text
    # The text after the name is read on as a word of its own: it changes the conditioning.
    assert not torch.equal(text.encode("a dancer embedding:easynegative in red").tokens, plain.tokens)


def test_the_pooled_vector_is_clip_l_unprojected_and_clip_g_projected_at_the_first_end_token(tiny_engine):
    text = tiny_engine.text
    prompt = long_prompt(text.clip_l.tokenizer, 100)
    pooled = text.encode(f"({prompt}:1.3)").pooled  # weights and later windows do not reach it
    parts = []
    for encoder in (text.clip_l, text.clip_g):
        tokenizer, model = encoder.tokenizer, encoder.model
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"][:75]
        window = torch.tensor([[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]])
        with torch.no_grad():
            final = model(window).last_hidden_state[0, 76]
            parts.append(final if encoder is text.clip_l else model.text_projection(final))
    assert torch.allclose(pooled[0], torch.cat(parts), atol=ATOL)


# ---- cache and log ----------------------------------------------------------------------------


def test_the_prompt_cache_keys_on_the_parsed_prompt(tiny_engine):
    cache = tiny_engine.text.cache
    cache.clear()
    first = tiny_engine.text.encode("a (red:1.5) dress")
    misses = cache.misses
    assert tiny_engine.text.encode("a (red:1.50) dress") is first  # the same pieces and weights
    assert cache.misses == misses
    tiny_engine.text.encode("a (red) dress")  # another weight: another entry
    tiny_engine.text.encode("a \\(red\\) dress")  # literal brackets: another entry
    assert cache.misses == misses + 2


def test_the_log_says_how_many_windows_a_prompt_took(tiny_engine, caplog):
    prompt = long_prompt(tiny_engine.text.clip_l.tokenizer, 160)
    with caplog.at_level(logging.INFO, logger="sd3pose.engine.text"):
        tiny_engine.text.encode(prompt)
    messages = [r.getMessage() for r in caplog.records]
    assert any("3 window(s) of 77 tokens" in m for m in messages), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_prompts_of_different_lengths_share_a_batch_and_keep_their_own_results(tiny_engine):
    # A 2-window prompt with a 1-window negative prompt, beside a job with short prompts: three context lengths.
    long = job(prompt=long_prompt(tiny_engine.text.clip_l.tokenizer, 120), seeds=[3], steps=3)
    short = job(prompt="a knight in armor", seeds=[4], steps=3)
    together = tiny_engine.generate_batch_latents([long, short])
    for alone, merged in zip((long, short), together, strict=True):
        assert torch.allclose(tiny_engine.generate_latents(alone), merged, rtol=0, atol=1e-5)
