"""A synthetic spoken English corpus, generated offline with espeak-ng (`wavslm synth corpus`).

    make_corpus("corpus/", hours=1.0, seed=0)
    corpus/wavs/<voice>/<paragraph>_<k>.wav    16 kHz mono 16-bit, 2-8 s each
    corpus/{train,valid,test}.jsonl             manifests: path, duration, sample_rate + text, voice, topic,
                                                paragraph
    corpus/voices.json, corpus/corpus.json      the voice inventory with its split; a summary

Text comes from `lexicon`'s grammar: a paragraph is 2-4 utterances from one topic spoken by one voice,
so topic structure is there to learn. Voices are a fixed seeded inventory (`voice_inventory`); the test
voices never speak in train or valid, and `synth bench --seed S` uses exactly the test voices of
`synth corpus --seed S`. The same seed gives the same corpus, sample for sample, whatever the number of
workers: each paragraph draws its text from its own seeded generator, `espeak.synthesize` does not
depend on what was said before it, and results are consumed in order.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..audio import save_audio
from ..errors import InputError
from ..io import write_atomic, write_folder, write_json
from . import espeak, lexicon
from .espeak import SAMPLE_RATE, Voice

# Variants that sound like a person (the others are robots, whispers, croaks or effects).
HUMAN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt3",
                  "klatt4", "Alex", "Andy", "Annie", "adam", "anika", "benjamin", "david", "edward", "ian",
                  "john", "linda", "max", "paul", "robert", "steph", "travis", "victor")
MIN_SECONDS, MAX_SECONDS = 2.0, 8.0
# Every 8th paragraph is spoken by a test voice (12.5% of the corpus), every 20th other one is valid.
TEST_EVERY, VALID_EVERY = 8, 20


def voice_inventory(seed: int = 0, num_voices: int = 48, num_test: int = 6) -> tuple[list[Voice], list[Voice]]:
    """`(train_voices, test_voices)`: a fixed set of `num_voices` synthetic speakers drawn with `seed`.

    Each voice is an English language voice x a variant, every pair used at most once and the languages
    and variants spread evenly, with its own base pitch, pitch range and rate. `num_test` of them are
    held out, at least a third of them female so speaker tests see both.
    """
    rng = random.Random(f"voices-{seed}")
    languages = espeak.english_languages()
    available = set(espeak.variants())
    variants = [v for v in HUMAN_VARIANTS if v in available]
    pairs = [(lang, var) for lang in languages for var in variants]
    rng.shuffle(pairs)
    per_language, per_variant = math.ceil(num_voices / len(languages)), math.ceil(num_voices / len(variants))
    chosen: list[tuple[str, str]] = []
    for lang, var in pairs:  # greedy, so no language or variant dominates
        if sum(c[0] == lang for c in chosen) < per_language and sum(c[1] == var for c in chosen) < per_variant:
            chosen.append((lang, var))
        if len(chosen) == num_voices:
            break
    voices = [Voice(name=f"v{i:02d}-{lang}-{var}", language=lang, variant=var, pitch=rng.randint(35, 65),
                    range=rng.randint(30, 80), rate=rng.randint(145, 185)) for i, (lang, var) in enumerate(chosen)]
    female = [v for v in voices if v.variant.startswith("f") or v.variant in ("Annie", "anika", "linda", "steph")]
    test = rng.sample(female, min(len(female), max(1, num_test // 3)))
    test += rng.sample([v for v in voices if v not in test], num_test - len(test))
    return [v for v in voices if v not in test], sorted(test, key=lambda v: v.name)


def utterance_text(rng: random.Random, topic: str, voice: Voice) -> tuple[str, np.ndarray]:
    """Sentences of `topic` spoken by `voice` until the audio lasts 2-8 s: `(text, sig (N,))`."""
    sentences = [lexicon.text(lexicon.sentence(topic, rng)) for _ in range(rng.choice((1, 2, 2, 3)))]
    while True:
        text = " ".join(sentences)
        sig = espeak.synthesize(text, voice)
        seconds = sig.size / SAMPLE_RATE
        if seconds < MIN_SECONDS:
            sentences.append(lexicon.text(lexicon.sentence(topic, rng)))
        elif seconds > MAX_SECONDS and len(sentences) > 1:
            sentences.pop()
            if len(sentences) > 1:  # dropping one more leaves room to draw a shorter last sentence
                sentences.pop()
        else:  # a single sentence lasts 1-4 s at these rates, so this ends after a few rounds
            return text, sig


def _paragraphs(seed: int, train: list[Voice], test: list[Voice]):
    """Endless `(paragraph, voice, split, topic, num_utterances)` in a fixed order.

    The split follows a fixed cycle rather than a coin, so even a few minutes of corpus have all three.
    """
    rng = random.Random(f"corpus-{seed}")
    topics = list(lexicon.TOPICS)
    for index in itertools.count():
        split = "test" if index % TEST_EVERY == TEST_EVERY // 2 else "train"
        split = "valid" if split == "train" and index % VALID_EVERY == 1 else split
        voice = rng.choice(test if split == "test" else train)
        yield index, voice, split, rng.choice(topics), rng.randint(2, 4)


def _speak_paragraph(job: tuple) -> list[tuple[str, np.ndarray]]:
    """Worker: the `(text, sig)` of each utterance of one paragraph (its own seeded generator)."""
    seed, index, voice, topic, count = job
    rng = random.Random(f"paragraph-{seed}-{index}")
    return [utterance_text(rng, topic, voice) for _ in range(count)]


def _in_order(jobs, workers: int):
    """Results of `_speak_paragraph` over `jobs`, in order; a bounded window keeps a few in flight."""
    if workers <= 1:
        yield from map(_speak_paragraph, jobs)
        return
    # spawn, not fork: the parent may hold torch's threads, and espeak must be initialised per process.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        window: deque = deque()
        try:
            for job in jobs:
                window.append(pool.submit(_speak_paragraph, job))
                if len(window) >= 4 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def make_corpus(out_dir: str | os.PathLike, hours: float, seed: int = 0, workers: int = 1,
                progress: bool = True) -> dict:
    """Write a synthetic corpus of about `hours` hours of speech to `out_dir`; return its summary.

    Generation stops at the first paragraph that reaches the target, so the total slightly exceeds it.
    Everything goes to a temporary folder renamed to `out_dir` at the end: an interrupted run leaves no
    `out_dir` (and removes its temporary folder unless killed outright).

    Raises:
        InputError: `hours` not a positive number, or `out_dir` exists and is not empty.
    """
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        raise InputError(f"--hours must be a positive number of hours, got {hours!r}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    start = time.perf_counter()
    with write_folder(out_dir, overwrite=False) as tmp:
        train, test = voice_inventory(seed)
        rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
        seconds: dict[str, float] = dict.fromkeys(rows, 0.0)
        plan = _paragraphs(seed, train, test)
        jobs = ((seed, i, v, topic, n) for i, v, _, topic, n in plan)
        plan = _paragraphs(seed, train, test)  # a second copy of the same sequence, read alongside the results
        bar = tqdm(total=round(hours * 3600), desc="synth corpus", unit="s", delay=1.0, leave=False,
                   disable=None if progress else True)
        for (index, voice, split, topic, _), utterances in zip(plan, _in_order(jobs, workers), strict=False):
            for k, (text, sig) in enumerate(utterances):
                rel = f"wavs/{voice.name}/{index:06d}_{k}.wav"
                save_audio(tmp / rel, sig, SAMPLE_RATE)
                duration = sig.size / SAMPLE_RATE
                entry = {"path": rel, "duration": round(duration, 6), "sample_rate": SAMPLE_RATE, "text": text,
                         "voice": voice.name, "topic": topic, "paragraph": index}
                rows[split].append(json.dumps(entry) + "\n")
                seconds[split] += duration
                bar.update(duration)
            if sum(seconds.values()) >= hours * 3600:
                break
        bar.close()
        for split, lines in rows.items():
            write_atomic(tmp / f"{split}.jsonl", "".join(lines))
        test_names = {v.name for v in test}
        write_json(tmp / "voices.json", {
            "seed": seed, "sample_rate": SAMPLE_RATE,
            "splits": {"train": [v.name for v in train], "test": sorted(test_names)},
            "voices": [dict(asdict(v), split="test" if v.name in test_names else "train") for v in train + test],
        })
        summary = {
            "seed": seed, "hours": round(sum(seconds.values()) / 3600, 4), "target_hours": hours,
            "utterances": {s: len(r) for s, r in rows.items()},
            "split_hours": {s: round(v / 3600, 4) for s, v in seconds.items()},
            "voices": {"train": len(train), "test": len(test)}, "topics": list(lexicon.TOPICS),
            "lexicon_words": len(lexicon.content_words()), "sample_rate": SAMPLE_RATE, "workers": workers,
            "generation_seconds": round(time.perf_counter() - start, 2),
        }
        write_json(tmp / "corpus.json", summary)
    return summary


def configure_corpus(parser: argparse.ArgumentParser) -> None:
    """Add the `synth corpus` arguments and its handler to `parser`."""
    parser.add_argument("-o", "--output", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of speech to generate (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same corpus (default 0)")
    # One process is the default: espeak is ~500x real time, and starting workers (each imports torch
    # through the package) costs more than it saves below several hours of speech.
    parser.add_argument("--workers", type=int, default=1, help="synthesis processes (default 1)")
    parser.set_defaults(func=cmd_corpus)


def cmd_corpus(args: argparse.Namespace) -> None:
    s = make_corpus(args.output, args.hours, seed=args.seed, workers=args.workers)
    u = s["utterances"]
    print(f"wrote {s['hours']:.2f} h ({u['train']} train, {u['valid']} valid, {u['test']} test utterances; "
          f"{s['voices']['train']} + {s['voices']['test']} held-out voices) to {args.output} "
          f"in {s['generation_seconds']:.1f} s")
