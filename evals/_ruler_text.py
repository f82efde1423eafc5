"""RULER's task wording: templates, needle and question strings, answer prefixes and noise text.

Sources (read, not copied as code): NVIDIA/RULER scripts/data/synthetic/{niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py and their port in EleutherAI/lm-evaluation-harness
lm_eval/tasks/ruler/{niah_utils,prepare_niah,vt_utils,cwe_utils,fwe_utils,qa_utils}.py; both are
Copyright (c) 2024 NVIDIA CORPORATION, Apache License 2.0 (http://www.apache.org/licenses/LICENSE-2.0).
The strings below are RULER's prompt wording, kept verbatim (spelling included: "assgined") so that
scores are comparable; everything else (key pools, word lists, haystacks) is this project's own.

Where the harness differs from RULER on purpose: the essay haystack defaults to the offline corpus
(builtin:stdlib; give -T corpus=FILE for Paul Graham essays), the key words and the CWE word list are
this project's own lists (RULER draws from the `wonderwords` package), prompts are exactly the requested
length (the last few tokens are noise padding), and the one-shot example of VT/CWE is optional (`icl`).
"""

from __future__ import annotations

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's repeated noise: the niah `repeat` haystack (one per line) and VT's noise (one per line)."""

# ------------------------------------------------------------------------------------------ niah
NIAH_PREAMBLE = ("Some special magic {noun}s are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {noun}s afterwards.\n")
NIAH_PREAMBLE_ONE = ("A special magic {noun} is hidden within the following text. Make sure to memorize it. "
                     "I will quiz you about the {noun} afterwards.\n")
NIAH_NEEDLE = "One of the special magic {noun}s for {key} is:"
"""Needle text before the value (RULER: 'One of the special magic {type_needle_v} for {key} is: {value}.')."""
NIAH_QUESTION = "\nWhat are all the special magic {noun}s for {query} mentioned in the provided text?"
NIAH_QUESTION_ONE = "\nWhat is the special magic {noun} for {query} mentioned in the provided text?"
NIAH_PREFIX = "The special magic {noun}s for {query} mentioned in the provided text are"
NIAH_PREFIX_ONE = "The special magic {noun} for {query} mentioned in the provided text is"
NIAH_NOUN = {"number": "number", "uuid": "uuid", "word": "word"}
"""RULER's type_needle_v, singular (numbers, uuids, words)."""

# ------------------------------------------------------------------------------------------ vt
VT_PREAMBLE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = "\nQuestion: Find all variables that are assigned the value {query} in the text above."
VT_PREFIX = ("Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assgined the value {query}, they are:")

# ------------------------------------------------------------------------------------------ cwe
CWE_PREAMBLE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n")
CWE_QUESTION = "\nQuestion: What are the 10 most common words in the above list?"
CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"

# ------------------------------------------------------------------------------------------ fwe
FWE_PREAMBLE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words.")
FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
                "frequently appeared words in the above coded text?")
FWE_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"

# ------------------------------------------------------------------------------------------ qa
QA_INSTRUCTION = "Answer the question based on the given documents. Only give me the answer and do not output any other words."
QA_PREAMBLE = QA_INSTRUCTION + "\n\nThe following are given documents.\n\n"
QA_DOCUMENT = "Document {i}:\n{document}"
QA_QUESTION = "\n\n" + QA_INSTRUCTION + "\n\nQuestion: {query}"
QA_PREFIX = "Answer:"


def niah_strings(noun: str, query: str, single: bool) -> tuple[str, str, str]:
    """(preamble, question, answer prefix) of a RULER niah prompt; `single`: one value is asked (RULER's singular form)."""
    if single:
        return (NIAH_PREAMBLE_ONE.format(noun=noun), NIAH_QUESTION_ONE.format(noun=noun, query=query),
                NIAH_PREFIX_ONE.format(noun=noun, query=query))
    return (NIAH_PREAMBLE.format(noun=noun), NIAH_QUESTION.format(noun=noun, query=query),
            NIAH_PREFIX.format(noun=noun, query=query))


def ruler_query(keys) -> str:
    """RULER's list of asked keys: 'a', or 'a, b, and c'."""
    keys = list(keys)
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def ruler_suffix(frame, tokenizer, question: str, answer_prefix: str) -> list[int]:
    """Tokens after the context: plain completion joins question and answer prefix with a space, as RULER's base
    template does; chat puts the answer prefix in the assistant's turn (harness.data.prompts.PromptFrame)."""
    from harness.data.haystack import encode

    if frame.plain:
        return encode(tokenizer, f"{question} {answer_prefix}")
    return frame.suffix(tokenizer, question, answer_prefix)
