"""Token-exact needle prompts: exact lengths, needle span, depth placement, determinism, bad input."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from harness.data.corpus import load_corpus
from harness.errors import UserError
from harness.data.haystack import (CITIES, NEEDLE_TEMPLATE, QUESTION_TEMPLATE, HaystackSource, draw_needle, haystack_source,
                              special_prefix)
from harness.data.prompts import build_needle_prompt

LENGTHS = (160, 201, 257, 512)
DEPTHS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)

PROSE = (
    "The river runs past the old mill. Nobody remembers who built it! Was it the monks?\n"
    "def handler(event, context):\n    return {'status': 200, 'body': event.get('path')}\n"
    "In 1987 the town counted 31415 people; by 2024 it had 27182.\n"
)


def _tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """`byte`: one token per byte; `bpe`: byte-level BPE whose merges join digits (numbers span few tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    digits = " ".join(str(n) for n in range(1000, 99999, 37))  # teaches merges of digit pairs and triples
    trainer = trainers.BpeTrainer(vocab_size=257 if kind == "byte" else 1200, special_tokens=["<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([PROSE * 20, digits, " ".join(CITIES) * 5, NEEDLE_TEMPLATE * 5], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>")


@pytest.fixture(scope="module", params=["byte", "bpe"])
def tok(request):
    return _tokenizer(request.param)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}.\n" + PROSE * (3 + i % 4))
    return load_corpus(str(folder))


@pytest.fixture(scope="module")
def source(tok, corpus):
    return haystack_source(tok, corpus)


def test_exact_length_and_span_for_every_cell(tok, source):
    for length in LENGTHS:
        for depth in DEPTHS:
            for trial in range(2):
                p = build_needle_prompt(tok, source, length, depth, seed=3, trial=trial)
                assert len(p.input_ids) == length == p.context_length
                start, end = p.needle_span
                assert tok.decode(list(p.input_ids[start:end])).strip() == p.number
                assert len(p.number) == 7 and p.number[0] != "0"
                a0, a1 = p.answer_digit_span
                assert tok.decode(list(p.answer_ids[a0:a1])).strip() == p.number
                assert tok.decode(list(p.answer_ids)) == f" {p.number}."
                assert any(a.startswith("haystack:") for a in p.adjustments)


def test_prompt_pieces_in_order(tok, source):
    p = build_needle_prompt(tok, source, 257, 0.5, seed=1)
    bos = special_prefix(tok)
    assert bos == (tok.bos_token_id,)
    assert p.input_ids[: len(bos)] == bos
    text = tok.decode(list(p.input_ids), skip_special_tokens=True)
    assert text.endswith(QUESTION_TEMPLATE.format(city=p.city))
    assert NEEDLE_TEMPLATE.format(city=p.city, number=p.number) + "\n" in text
    assert text.count(p.number) == 1


def test_depth_zero_at_start_and_one_before_question(tok, source):
    bos = len(special_prefix(tok))
    first = build_needle_prompt(tok, source, 257, 0.0, seed=2)
    assert first.needle_start == bos
    assert tok.decode(list(first.input_ids[bos:])).startswith(NEEDLE_TEMPLATE.split("{city}")[0])
    last = build_needle_prompt(tok, source, 257, 1.0, seed=2)
    tail = tok.decode(list(last.input_ids[last.needle_start:]))
    assert tail == NEEDLE_TEMPLATE.format(city=last.city, number=last.number) + "\n" + QUESTION_TEMPLATE.format(city=last.city)


def test_needle_on_boundary_at_or_before_depth(tok, source):
    bos = len(special_prefix(tok))
    for depth in (0.25, 0.5, 0.75):
        p = build_needle_prompt(tok, source, 512, depth, seed=5)
        offset = p.needle_start - bos
        assert offset <= int(depth * p.haystack_tokens)
        before = tok.decode(list(p.input_ids[bos:p.needle_start]))
        assert before == "" or before.endswith("\n") or before.rstrip(" ").endswith((".", "!", "?"))
        # same haystack, needle moved: later depths never land earlier
    offsets = [build_needle_prompt(tok, source, 512, d, seed=5).needle_start for d in DEPTHS]
    assert offsets == sorted(offsets)


def test_deterministic_and_seeded(tok, corpus):
    fresh = HaystackSource(tok, [d.text for d in corpus.documents])
    a = build_needle_prompt(tok, fresh, 300, 0.4, seed=7, trial=2)
    b = build_needle_prompt(tok, haystack_source(tok, corpus), 300, 0.4, seed=7, trial=2)
    assert a == b
    c = build_needle_prompt(tok, fresh, 300, 0.4, seed=8, trial=2)
    assert (c.city, c.number, c.input_ids) != (a.city, a.number, a.input_ids)
    # city and number depend on (seed, trial) only: the same needle at every length and depth
    d = build_needle_prompt(tok, fresh, 512, 0.9, seed=7, trial=2)
    assert (d.city, d.number) == (a.city, a.number) == (draw_needle(7, 2).city, draw_needle(7, 2).number)


def test_source_is_cached_per_tokenizer(tok, corpus):
    assert haystack_source(tok, corpus) is haystack_source(tok, corpus)


def test_digits_and_cities_knobs(tok, source):
    p = build_needle_prompt(tok, source, 300, 0.5, seed=0, cities=("Oslo",), digits=4)
    assert p.city == "Oslo" and len(p.number) == 4


@pytest.mark.parametrize("depth", [-0.1, 1.5, "deep"])
def test_bad_depth(tok, source, depth):
    with pytest.raises(UserError, match=r"depth .*\[0, 1\]"):
        build_needle_prompt(tok, source, 256, depth)


def test_length_below_fixed_parts_names_minimum(tok, source):
    with pytest.raises(UserError, match=r"below the prompt's fixed parts.*the minimum is \d+") as e:
        build_needle_prompt(tok, source, 10, 0.5)
    minimum = int(str(e.value).rsplit(" ", 1)[-1])
    assert len(build_needle_prompt(tok, source, minimum, 0.5).input_ids) == minimum


def test_length_above_corpus_names_maximum(tok, corpus):
    small = HaystackSource(tok, [d.text for d in corpus.documents[:2]], name="small")
    with pytest.raises(UserError, match=r"corpus 'small' holds only \d+ .*the maximum is \d+") as e:
        build_needle_prompt(tok, small, 100_000, 0.5)
    maximum = int(str(e.value).rsplit(" ", 1)[-1])
    assert len(build_needle_prompt(tok, small, maximum, 0.5).input_ids) == maximum
    with pytest.raises(UserError):
        build_needle_prompt(tok, small, maximum + 1, 0.5)


def test_bad_length_type(tok, source):
    with pytest.raises(UserError, match="positive integer"):
        build_needle_prompt(tok, source, 2.5, 0.5)


def test_tokenizer_that_merges_across_the_number(corpus):
    """No pre-tokenizer: merges cross spaces and punctuation, so the needle is tokenised in pieces."""
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>"], show_progress=False)
    needles = [NEEDLE_TEMPLATE.format(city=c, number=n) for c in CITIES[:10] for n in range(1000000, 9999999, 999999)]
    tok.train_from_iterator([PROSE * 20, " ".join(needles) * 3], trainer=trainer)
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>")
    source = HaystackSource(fast, [d.text for d in corpus.documents])
    assert special_prefix(fast) == ()  # this tokenizer adds no BOS
    for depth in (0.0, 0.5, 1.0):
        for trial in range(4):
            p = build_needle_prompt(fast, source, 170, depth, seed=0, trial=trial)
            assert len(p.input_ids) == 170
            assert fast.decode(list(p.input_ids[slice(*p.needle_span)])).strip() == p.number
            assert fast.decode(list(p.answer_ids[slice(*p.answer_digit_span)])).strip() == p.number
