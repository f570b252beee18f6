"""Conversations: who says what when, and the per-puppet audio tracks that realise it.

A script is a list of phrases on one timeline. Every clip starts with everyone silent (so frame 0
is the neutral reference pose) and ends with a short silence. A single puppet says one or more
phrases with pauses between them (idle stretches). In a scene of N >= 2, every puppet takes at
least one turn (so every track has speech and passes `load_audio`'s silence check), turns are
separated by pauses and sometimes overlap (an interruption), and now and then a listener drops a
short backchannel ("mm", "ya") into someone else's turn.

Intervals are exact: a phrase's interval is where its synthesised audio lies on the timeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .voice import (
    SAMPLE_RATE,
    Voice,
    espeak_phrase,
    phrase_text,
    random_syllables,
    synthesize_phrase,
)


@dataclass(frozen=True)
class Phrase:
    speaker: int
    start: float  # seconds
    end: float
    text: str
    kind: str     # "phrase" | "backchannel"


@dataclass(frozen=True)
class Script:
    duration: float
    phrases: tuple[Phrase, ...]
    persons: int

    def intervals(self, speaker: int) -> list[tuple[float, float]]:
        """Phrase-level speaking intervals of one puppet, sorted (seconds, rounded to 0.1 ms)."""
        return [(round(p.start, 4), round(p.end, 4)) for p in sorted(self.phrases, key=lambda p: p.start)
                if p.speaker == speaker]

    def turns(self, speaker: int, bridge_s: float = 0.5) -> list[tuple[float, float]]:
        """Turn-level intervals: phrases with pauses under `bridge_s` merged, as benchmark labels are."""
        merged: list[list[float]] = []
        for start, end in self.intervals(speaker):
            if merged and start - merged[-1][1] < bridge_s:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        return [(a, b) for a, b in merged]

    def speaking(self, speaker: int, times: np.ndarray) -> np.ndarray:
        out = np.zeros(len(times), bool)
        for start, end in self.intervals(speaker):
            out |= (times >= start) & (times < end)
        return out

    def to_json(self) -> list[dict]:
        return [asdict(p) for p in sorted(self.phrases, key=lambda p: p.start)]


def _speak(voice: Voice, rng: np.random.Generator, syllable_count: int, engine: str, sample_rate: int):
    syllables = random_syllables(rng, syllable_count)
    breaks = sorted({int(b) for b in rng.integers(1, syllable_count, size=syllable_count // 3)}) \
        if syllable_count > 2 else []
    text = phrase_text(syllables, breaks)
    question = bool(rng.random() < 0.2)
    if engine == "espeak":
        audio = espeak_phrase(voice, text + ("?" if question else ""), sample_rate)
    else:
        audio = synthesize_phrase(voice, syllables, rng, sample_rate, question=question, word_breaks=breaks)
    return audio, text


def _fitting_phrase(voice, rng, engine, sample_rate, budget_s: float, syllables: int):
    """A phrase of up to `syllables` syllables no longer than budget_s, or None if even one is too long."""
    count = max(1, min(syllables, int(budget_s * voice.rate * 0.9)))
    while count >= 1:
        audio, text = _speak(voice, rng, count, engine, sample_rate)
        if audio.size / sample_rate <= budget_s:
            return audio, text
        count -= 1
    return None


def write_script(voices: list[Voice], num_samples: int, rng: np.random.Generator, *,
                 engine: str = "procedural", sample_rate: int = SAMPLE_RATE) -> tuple[Script, np.ndarray]:
    """(script, tracks float32 [N, num_samples]) for len(voices) puppets on a num_samples timeline."""
    persons = len(voices)
    duration = num_samples / sample_rate
    tracks = np.zeros((persons, num_samples), np.float32)
    phrases: list[Phrase] = []
    lead = rng.uniform(0.25, 0.5)
    end_limit = duration - rng.uniform(0.15, 0.35)

    def place(speaker, start, audio, text, kind):
        i = round(start * sample_rate)
        n = min(audio.size, num_samples - i)
        tracks[speaker, i : i + n] += audio[:n]
        phrases.append(Phrase(speaker, i / sample_rate, (i + n) / sample_rate, text, kind))
        return (i + n) / sample_rate

    if persons == 1:
        t = lead
        while True:
            phrase = _fitting_phrase(voices[0], rng, engine, sample_rate, end_limit - t, int(rng.integers(3, 9)))
            if phrase is None:
                break
            t = place(0, t, *phrase, "phrase") + rng.uniform(0.35, 0.8)  # idle pauses between phrases
            if t >= end_limit - 0.3:
                break
        if not phrases:
            raise ValueError(f"a {duration:.2f} s clip is too short for a phrase")
        return Script(duration, tuple(phrases), persons), tracks

    # First every puppet once (random order, a share of the time each), then anyone but the last.
    order = list(rng.permutation(persons))
    t, last, turn_index = lead, None, 0
    turn_ends: list[tuple[int, float, float]] = []
    while True:
        remaining_speakers = max(persons - turn_index, 1)
        if turn_index < persons:
            speaker = int(order[turn_index])
            budget = (end_limit - t) / remaining_speakers - 0.2  # an equal share for each who has not spoken
        else:
            speaker = int(rng.choice([p for p in range(persons) if p != last]))
            budget = end_limit - t
        if budget < 0.25:
            break
        turn_start = t
        phrase = _fitting_phrase(voices[speaker], rng, engine, sample_rate, budget, int(rng.integers(2, 8)))
        if phrase is None:
            break
        t = place(speaker, t, *phrase, "phrase")
        # Sometimes a second phrase in the same turn, after a short pause.
        if turn_index >= persons and rng.random() < 0.4:
            pause = rng.uniform(0.25, 0.45)
            more = _fitting_phrase(voices[speaker], rng, engine, sample_rate, end_limit - t - pause,
                                   int(rng.integers(2, 6)))
            if more is not None:
                t = place(speaker, t + pause, *more, "phrase")
        turn_ends.append((speaker, turn_start, t))
        last, turn_index = speaker, turn_index + 1
        # Next turn: usually a pause, sometimes an overlap (the next speaker cuts in).
        if rng.random() < 0.2 and t - turn_start > 0.6:
            t = t - rng.uniform(0.1, 0.3)
        else:
            t = t + rng.uniform(0.15, 0.5 if turn_index >= persons - 1 else 0.35)
        if turn_index >= persons and t > end_limit - 0.3:
            break
    spoken = {p.speaker for p in phrases}
    if len(spoken) < persons:
        raise ValueError(f"a {duration:.2f} s clip is too short for {persons} puppets to each take a turn")

    # Backchannels: a listener's short "mm" inside someone else's long turn.
    for speaker, start, end in turn_ends:
        if end - start > 1.0 and rng.random() < 0.3:
            listener = int(rng.choice([p for p in range(persons) if p != speaker]))
            at = rng.uniform(start + 0.3, end - 0.4)
            busy = any(p.speaker == listener and p.start < at + 0.4 and p.end > at for p in phrases)
            phrase = None if busy else _fitting_phrase(voices[listener], rng, engine, sample_rate, 0.35, 1)
            if phrase is not None:
                place(listener, at, *phrase, "backchannel")
    return Script(duration, tuple(phrases), persons), tracks
