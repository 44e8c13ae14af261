"""Measures of a generated transcript, as the spoken-LM papers define them, each named after its source.

- Auto-BLEU (repetition within one transcript), two definitions that give different numbers:
  `auto_bleu_gslm` follows GSLM's reference code (fairseq `self_auto_bleu.py`, `auto_bleu`): for each
  order k = 1..n, the share of k-grams found again in the words before them or in the words after them
  (searched apart, so an overlapping copy does not count), averaged over the orders with equal weights;
  0 for a transcript of one word or none. `auto_bleu_slamkit` follows SlamKit (`calc_auto_bleu`): the
  share of the n-grams (one order only) whose text occurs at any other position, overlaps included; 0
  below n words. Both are per transcript; papers average them over transcripts.
- Transcript perplexity under an offline n-gram model: `TrigramLM`, pocketsphinx's own US English
  trigram model (`en-us.lm.bin`, shipped in its wheel). SlamKit's GenPPL is exp of the mean over
  transcripts of each transcript's mean token NLL (`genppl`); with this model it is a word-level trigram
  perplexity, comparable between systems here, not with GenPPL from Llama or GPT-2. Note that pocketsphinx
  decodes with this same model, so its transcripts lean towards it.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def words(text: str) -> list[str]:
    """The words of an ASR transcript, lowercased and without punctuation (`metrics.normalise_text`), split
    on whitespace as GSLM's scripts split ASR output: pocketsphinx's and Whisper's transcripts alike."""
    from .metrics import normalise_text

    return normalise_text(text).split()


def auto_bleu_gslm(tokens: Sequence[str], n: int = 2) -> float:
    """GSLM's Auto-BLEU-n (arithmetic mean over orders 1..n) of one transcript's tokens."""
    if len(tokens) <= 1:
        return 0.0
    shares = []
    for k in range(1, n + 1):
        grams = [tuple(tokens[p : p + k]) for p in range(len(tokens) - k + 1)]
        if not grams:
            return math.nan  # fewer words than the highest order, as in the reference (0 / 0)
        hits = 0
        for p, gram in enumerate(grams):
            left, right = tokens[:p], tokens[p + k :]
            rest = {tuple(left[i : i + k]) for i in range(len(left) - k + 1)}
            rest |= {tuple(right[i : i + k]) for i in range(len(right) - k + 1)}
            hits += gram in rest
        shares.append(hits / len(grams))
    return float(np.mean(shares))


def auto_bleu_slamkit(tokens: Sequence[str], n: int = 2) -> float:
    """SlamKit's Auto-BLEU-n of one transcript's tokens: n-grams repeated anywhere else, over all n-grams."""
    grams = [" ".join(tokens[p : p + n]) for p in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(counts[g] > 1 for g in grams) / len(grams)


def genppl(mean_nlls: Sequence[float | None]) -> dict[str, float | int | None]:
    """`{"value": exp of the mean over transcripts of their mean token NLL (SlamKit's aggregation),
    "num_transcripts": how many had one}`; empty transcripts (None) are left out and not counted."""
    finite = [x for x in mean_nlls if x is not None and math.isfinite(x)]
    return {"value": math.exp(sum(finite) / len(finite)) if finite else None, "num_transcripts": len(finite)}


class TrigramLM:
    """pocketsphinx's US English trigram model: natural-log probabilities of word sequences.

    Words are lowercased; `<s>` is context only and `</s>` is scored. The vocabulary is closed: a word
    outside it is skipped (counted in `oov`) and cuts the history, as SRILM's perplexity does.
    """

    LOG_BASE = math.log(1.0001)  # pocketsphinx's LogMath base for models read with NGramModel.readfile

    def __init__(self) -> None:
        import os

        from pocketsphinx import NGramModel, get_model_path

        self.model = NGramModel.readfile(os.path.join(get_model_path(), "en-us", "en-us.lm.bin"))
        self.order = self.model.size()
        self.zero = self.model.prob(["<no-such-word-in-the-model>"])

    def score(self, tokens: Sequence[str]) -> dict[str, float | int | None]:
        """`{"nll": mean NLL per scored word (</s> included), "scored", "oov"}` of one transcript; an empty
        transcript has no NLL (None), as with a text LM."""
        if not tokens:
            return {"nll": None, "scored": 0, "oov": 0}
        seq = ["<s>", *(t.lower() for t in tokens), "</s>"]
        total, scored, oov = 0.0, 0, 0
        for i in range(1, len(seq)):
            history = seq[max(0, i - self.order + 1) : i][::-1]  # most recent first
            logp = self.model.prob([seq[i], *history])
            if logp <= self.zero:
                oov += 1
                continue
            total += logp * self.LOG_BASE  # term by term: the integer sum can overflow
            scored += 1
        return {"nll": -total / scored if scored else None, "scored": scored, "oov": oov}


@functools.cache
def trigram_lm() -> TrigramLM:
    return TrigramLM()
