"""A synthetic zero-shot benchmark suite in the real benchmarks' layouts (`wavslm synth bench`).

Spoken only by the held-out test voices of `synth corpus --seed S` (the same `voice_inventory(S)`), so
a model trained on that corpus is scored on voices it never heard:

    lexical/dev/*.wav + gold.csv      sWUGGY-like: a lexicon word vs a pronounceable non-word
                                      (id,filename,voice,frequency,word,phones,length,correct)
    syntactic/dev/*.wav + gold.csv    sBLIMP-like: a sentence vs a minimally ungrammatical one
                                      (id,filename,voice,type,subtype,correct,transcription)
    storycloze/<id>_correct.wav       tSC-like: a one-topic story with its own ending ...
    storycloze/<id>_incorrect.wav     ... or with an ending from another topic (+ stories.csv)
    salmon/speaker_consistency/sample_<i>_0.wav   one voice throughout ...
    salmon/speaker_consistency/sample_<i>_1.wav   ... or a voice switch halfway, same text
    bench.json                        a summary

The two gold.csv files have the columns, in the order, that the official ZeroSpeech 2021 scorer reads
by position: same id = one pair; `frequency` an integer (0 = never in the corpus); `phones` espeak-ng's
IPA for the voice's language and `length` their count. So the official scorer grades this suite too.

Everything is deterministic given the seed and written to a temporary folder renamed at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import random
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from ..audio import save_audio
from ..data import espeak, lexicon
from ..data.espeak import SAMPLE_RATE, Voice
from ..data.lexicon import DETERMINERS, Token, text, with_word
from ..data.synth import voice_inventory
from ..errors import InputError
from ..io import write_atomic, write_folder, write_json

VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "ea", "oa", "ou", "ie")
CONSONANTS = "bdfgklmnprstvz"  # single letters that read the same anywhere in a word
SYNTAX_TYPES = ("agreement", "determiner_noun", "word_order")


def _groups(word: str) -> list[str]:
    """Alternating consonant / vowel letter groups: 'basket' -> ['b', 'a', 'sk', 'e', 't']."""
    groups: list[str] = []
    for ch in word:
        if groups and (ch in "aeiouy") == (groups[-1][-1] in "aeiouy"):
            groups[-1] += ch
        else:
            groups.append(ch)
    return groups


def _editable(groups: list[str], i: int) -> bool:
    g = groups[i]
    if g[0] in "aeiou":  # a vowel group, but not a final one ('taxi' -> 'taxe' loses a syllable) nor qu's 'u'
        return i < len(groups) - 1 and not (i > 0 and groups[i - 1].endswith("q"))
    return len(g) == 1 and g in CONSONANTS


def make_nonword(word: str, rng: random.Random, forbidden: frozenset[str]) -> str | None:
    """A pronounceable non-word of about `word`'s length and shape, or None if 50 tries fail.

    One edit for short words, two for words of 7+ letters: a vowel group becomes another common vowel
    spelling of the same length, or a single consonant another single consonant, so the letter pattern
    (and so the syllables) stays. The result is never in `forbidden` (the vocabulary, plus CMUdict's
    English words when pocketsphinx is installed).
    """
    for _ in range(50):
        groups = _groups(word)
        for _ in range(1 if len(word) < 7 else 2):
            slots = [i for i in range(len(groups)) if _editable(groups, i)]
            if not slots:  # only digraphs and a final vowel: nothing to change safely
                return None
            i = rng.choice(slots)
            if groups[i][0] in "aeiou":
                pool = [v for v in VOWELS if len(v) == len(groups[i])] or list(VOWELS)
            else:
                pool = list(CONSONANTS)
            groups[i] = rng.choice([p for p in pool if p != groups[i]])
        candidate = "".join(groups)
        if candidate != word and candidate not in forbidden and abs(len(candidate) - len(word)) <= 1:
            return candidate
    return None


def english_words() -> frozenset[str]:
    """The lexicon's vocabulary plus, when pocketsphinx is installed, every word of its CMUdict."""
    words = set(lexicon.vocabulary())
    try:
        import pocketsphinx
    except ImportError:
        return frozenset(words)
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            # Entries look like 'word(2) W ER D'; keep the spelling.
            words.update(line.split(maxsplit=1)[0].split("(")[0].lower() for line in f if line.strip())
    return frozenset(words)


def word_frequencies(seed: int, num_sentences: int = 5000) -> Counter:
    """How often each lemma occurs in a sample of `num_sentences` sentences of the grammar (the corpus'
    distribution): whole counts, like the LibriSpeech counts of sWUGGY's gold."""
    rng = random.Random(f"frequency-{seed}")
    counts = Counter()
    for _ in range(num_sentences):
        for tok in lexicon.sentence(rng.choice(list(lexicon.TOPICS)), rng):
            counts[tok.entry.lemma if tok.entry else tok.word] += 1
    return counts


def _fixed_form(tok: Token) -> bool:
    """A noun whose singular and plural are spelled the same (sheep, fish) cannot show agreement."""
    return tok.entry is not None and (tok.entry.mass or tok.entry.form("sg") == tok.entry.form("pl"))


def perturb(tokens: list[Token], kind: str, rng: random.Random) -> tuple[list[Token], str] | None:
    """A minimally ungrammatical version of `tokens` breaking one rule of `kind`, with its subtype, or None.

    agreement: the present-tense verb (or is/are) takes the other number; determiner_noun: the subject's
    determiner takes the other number; word_order: two adjacent subject words swap.
    """
    subj = [i for i, t in enumerate(tokens) if t.phrase == "subj"]
    noun = next((i for i in subj if tokens[i].role in ("noun", "pron")), None)
    if noun is None or (tokens[noun].role == "noun" and _fixed_form(tokens[noun])):
        return None
    other = {"sg": "pl", "pl": "sg"}[tokens[noun].number]
    if kind == "agreement":
        verb = next((i for i, t in enumerate(tokens) if t.phrase == "vp" and t.number), None)
        if verb is None:
            return None
        tok = tokens[verb]
        word = lexicon.COPULA[other] if tok.role == "cop" else tok.entry.form(other)
        sub = f"{'copula' if tok.role == 'cop' else 'verb'}_{'singular' if other == 'pl' else 'plural'}_subject"
        return with_word(tokens, verb, word), sub
    if kind == "determiner_noun":
        det = subj[0]
        if tokens[det].role != "det":
            return None
        # Only unambiguous ones: "some dancer" is English ("some dancer or other"), "these dancer" is not.
        word = rng.choice([d for d in DETERMINERS[other] if d not in DETERMINERS[tokens[noun].number] + ("some",)])
        word = "an" if word == "a" and tokens[det + 1].word[0] in "aeiou" else word
        return with_word(tokens, det, word), f"{'plural' if other == 'pl' else 'singular'}_determiner"
    if kind == "word_order":
        options = []
        if tokens[subj[0]].role == "det":  # 'dog the runs', 'hungry the dog runs'
            options.append(("det_" + tokens[subj[0] + 1].role, subj[0], subj[0] + 1))
        if noun > 0 and tokens[noun - 1].role == "adj":
            options.append(("adj_noun", noun - 1, noun))  # 'the dog hungry runs'
        if tokens[noun + 1].phrase == "vp":
            options.append(("subject_verb", noun, noun + 1))  # 'the runs dog'
        name, i, j = rng.choice(options)
        swapped = tokens[:i] + [tokens[j], tokens[i]] + tokens[j + 1:]
        return swapped, name
    raise ValueError(f"unknown perturbation {kind!r}")


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _say(path: Path, sentence: str, voice: Voice) -> None:
    save_audio(path, espeak.synthesize(sentence, voice), SAMPLE_RATE)


def _lexical(root: Path, pairs: int, voices: list[Voice], rng: random.Random, seed: int) -> dict:
    freqs, forbidden = word_frequencies(seed), english_words()
    candidates = [w for w in lexicon.content_words() if 4 <= len(w) <= 10 and w.isalpha()]
    rows: list[dict] = []
    # Shuffled passes over the words: each word once before any repeats (with a new non-word and voice).
    words = (w for _ in itertools.count() for w in rng.sample(candidates, len(candidates)))
    for pid in range(pairs):
        nonword = None
        while nonword is None:  # a few short words ('boss', 'hill') have no free neighbour
            word = next(words)
            nonword = make_nonword(word, rng, forbidden)
        voice = rng.choice(voices)
        # Which of the two files is the word is random, so a file's name says nothing about it.
        for letter, (spelling, correct) in zip("ab", rng.sample([(word, 1), (nonword, 0)], 2), strict=True):
            name = f"{pid:05d}{letter}"
            _say(root / "lexical" / "dev" / f"{name}.wav", spelling, voice)
            phones = espeak.phones(spelling, voice.language)
            rows.append({"id": pid, "filename": name, "voice": voice.name, "frequency": freqs.get(word, 0),
                         "word": spelling, "phones": " ".join(phones), "length": len(phones), "correct": correct})
    write_atomic(root / "lexical" / "dev" / "gold.csv", _csv(rows))
    return {"pairs": len(rows) // 2, "files": len(rows)}


def _syntactic(root: Path, pairs: int, voices: list[Voice], rng: random.Random) -> dict:
    rows, types = [], Counter()
    topics = list(lexicon.TOPICS)
    for pid in range(pairs):
        kind = SYNTAX_TYPES[pid % len(SYNTAX_TYPES)]
        bad = None
        while bad is None:  # not every sentence can break every rule (no determiner, 'sheep', ...)
            good = lexicon.sentence(rng.choice(topics), rng, tense="present")
            bad = perturb(good, kind, rng)
        broken, subtype = bad
        voice = rng.choice(voices)
        for letter, (tokens, correct) in zip("ab", rng.sample([(good, 1), (broken, 0)], 2), strict=True):
            name = f"{pid:05d}{letter}"
            _say(root / "syntactic" / "dev" / f"{name}.wav", text(tokens), voice)
            rows.append({"id": pid, "filename": name, "voice": voice.name, "type": kind, "subtype": subtype,
                         "correct": correct, "transcription": text(tokens)})
        types[kind] += 1
    write_atomic(root / "syntactic" / "dev" / "gold.csv", _csv(rows))
    return {"pairs": pairs, "files": len(rows), "types": dict(types)}


def _storycloze(root: Path, pairs: int, voices: list[Voice], rng: random.Random) -> dict:
    rows, topics = [], list(lexicon.TOPICS)
    for sid in range(pairs):
        topic, other = rng.sample(topics, 2)
        context = [text(lexicon.sentence(topic, rng)) for _ in range(rng.choice((2, 3)))]
        ending = text(lexicon.sentence(topic, rng))
        # A distractor of about the same length, so duration says nothing about which ending fits.
        wrong = min((text(lexicon.sentence(other, rng)) for _ in range(8)),
                    key=lambda s: abs(len(s.split()) - len(ending.split())))
        voice = rng.choice(voices)
        for label, end in (("correct", ending), ("incorrect", wrong)):
            _say(root / "storycloze" / f"{sid:05d}_{label}.wav", " ".join(context + [end]), voice)
        rows.append({"id": f"{sid:05d}", "voice": voice.name, "topic": topic, "distractor_topic": other,
                     "context": " ".join(context), "correct_ending": ending, "incorrect_ending": wrong})
    write_atomic(root / "storycloze" / "stories.csv", _csv(rows))
    return {"pairs": pairs, "files": 2 * pairs}


def _salmon(root: Path, pairs: int, voices: list[Voice], rng: random.Random) -> dict:
    folder = root / "salmon" / "speaker_consistency"
    for i in range(pairs):
        topic = rng.choice(list(lexicon.TOPICS))
        first, second = (text(lexicon.sentence(topic, rng)) for _ in range(2))
        same, switch = rng.sample(voices, 2)
        head = espeak.synthesize(first, same)
        # The same faint noise as inside the speech, not digital silence, so the seam is not a cue.
        gap = espeak.noise_floor(int(0.2 * SAMPLE_RATE), zlib.crc32(f"gap-{i}".encode()))
        for j, voice in enumerate((same, switch)):
            sig = np.concatenate([head, gap, espeak.synthesize(second, voice)])
            save_audio(folder / f"sample_{i}_{j}.wav", sig, SAMPLE_RATE)
    return {"pairs": pairs, "files": 2 * pairs}


def make_bench(out_dir: str | os.PathLike, seed: int = 0, pairs: int = 100) -> dict:
    """Write the synthetic benchmark suite with `pairs` pairs per task to `out_dir`; return its summary.

    Raises:
        InputError: `pairs` below 1, or `out_dir` exists and is not empty.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise InputError(f"--pairs must be a whole number of at least 1, got {pairs!r}")
    start = time.perf_counter()
    with write_folder(out_dir, overwrite=False) as tmp:
        _, test = voice_inventory(seed)
        rng = random.Random(f"bench-{seed}")
        summary = {
            "seed": seed, "sample_rate": SAMPLE_RATE, "voices": [v.name for v in test],
            "lexical": _lexical(tmp, pairs, test, rng, seed),
            "syntactic": _syntactic(tmp, pairs, test, rng),
            "storycloze": _storycloze(tmp, pairs, test, rng),
            "salmon_speaker_consistency": _salmon(tmp, pairs, test, rng),
        }
        summary["generation_seconds"] = round(time.perf_counter() - start, 2)
        write_json(tmp / "bench.json", summary)
    return summary


def configure_bench(parser: argparse.ArgumentParser) -> None:
    """Add the `synth bench` arguments and its handler to `parser`."""
    parser.add_argument("-o", "--output", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--seed", type=int, default=0, help="the corpus seed whose test voices speak (default 0)")
    parser.add_argument("--pairs", type=int, default=100, help="pairs per task (default 100)")
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    s = make_bench(args.output, seed=args.seed, pairs=args.pairs)
    print(f"wrote {s['lexical']['pairs']} lexical, {s['syntactic']['pairs']} syntactic, "
          f"{s['storycloze']['pairs']} story and {s['salmon_speaker_consistency']['pairs']} speaker pairs "
          f"({len(s['voices'])} held-out voices) to {args.output} in {s['generation_seconds']:.1f} s")
