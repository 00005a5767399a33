"""The spoken summary of a result: one sentence-per-fact text, spoken offline by espeak-ng.

The text is made once from ``summary.json`` (:func:`spoken_summary`) and stored in it
under ``speech`` (text, threshold, engine, wav), so the CLI, the napari panel and the web
viewer all say the same words.  ``summary.wav`` is written when asked for, and whenever
``--speak`` finds no audio device to play on.  The engine is the ``espeak-ng`` program
(Debian/Ubuntu ``apt-get install espeak-ng``, macOS ``brew install espeak-ng``), run
directly: no Python binding, no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import OutputError
from .layout import SPEECH_WAV_NAME, SUMMARY_NAME, atomic_path

__all__ = [
    "SPEECH_WAV_NAME",
    "SpeechOutcome",
    "find_engine",
    "spoken_summary",
    "synthesize_wav",
    "wav_bytes",
    "play_text",
    "speak_in_background",
    "read_summary_aloud",
    "speak_result",
    "stored_text",
]

ENGINES = ("espeak-ng", "espeak")
INSTALL_HINT = "install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)"
_TIMEOUT_S = 120


def find_engine() -> str | None:
    """The path of the speech program, or None when none is installed."""
    for name in ENGINES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _say_number(value: float, digits: int = 2) -> str:
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def spoken_summary(summary: Mapping[str, Any], *, threshold: float | None = None,
                   regions: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The words that read a result out: slide, tumour suspected or not, maximum probability,
    region count and area.

    ``threshold`` and ``regions`` (as :func:`wsiscan.heatmap.tumour_regions` returns them) describe
    another threshold than predict's, as ``wsiscan heatmap --threshold`` makes them.
    """
    scores = summary.get("scores", {})
    slide = str(summary.get("slide_id") or Path(str(summary.get("slide", {}).get("path", "slide"))).stem)
    top = summary.get("regions", {})
    areas = summary.get("areas", {})
    if threshold is None:
        threshold = top.get("threshold", scores.get("threshold", 0.5))
    t = float(threshold)
    if regions is not None:
        n = len(regions)
        area_mm2 = float(sum(float(r["area_mm2"]) for r in regions))
    elif isinstance(areas, Mapping) and areas.get("region_area_mm2") is not None:
        n = int(top.get("n", 0))
        area_mm2 = float(areas["region_area_mm2"])  # the exported polygons (results.area_summary)
    else:
        n = int(top.get("n", 0))
        listed = top.get("top", [])
        area_mm2 = float(sum(float(r.get("area_mm2", 0.0)) for r in listed)) if len(listed) == n else float(
            scores.get("tumour_area_mm2", 0.0))
    top_p = scores.get("max_probability")
    parts = [f"Slide {slide.replace('_', ' ')}."]
    parts.append("Tumour suspected." if n > 0 else "No tumour suspected.")
    if top_p is None:
        parts.append("No tissue was scored.")
    else:
        parts.append(f"Maximum probability {_say_number(float(top_p))}.")
    if n == 0:
        parts.append(f"No region at threshold {_say_number(t)}.")
    else:
        noun = "region" if n == 1 else "regions"
        parts.append(f"{n} {noun} at threshold {_say_number(t)}, {_say_number(area_mm2, 3)} square millimetres.")
    return " ".join(parts)


def stored_text(summary: Mapping[str, Any]) -> str:
    """The spoken text stored in ``summary.json`` by ``--speak``, else the one made from its numbers."""
    speech = summary.get("speech")
    if isinstance(speech, Mapping) and isinstance(speech.get("text"), str) and speech["text"]:
        return speech["text"]
    return spoken_summary(summary)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def synthesize_wav(text: str, path: str | Path, *, engine: str | None = None) -> Path:
    """Speak ``text`` into the WAV file ``path`` (written beside under a temporary name, then renamed).

    OutputError when no engine is installed or it fails.
    """
    engine = engine or find_engine()
    if engine is None:
        raise OutputError(f"{path}: no speech engine (espeak-ng) found; {INSTALL_HINT}")
    p = Path(path)
    with atomic_path(p, suffix=".wav") as tmp:
        proc = _run([engine, "-w", str(tmp), "--", text])
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise OutputError(f"{p}: {Path(engine).name} could not write the WAV (exit {proc.returncode}: {last})")
    return p


def wav_bytes(text: str, *, engine: str | None = None) -> bytes:
    """The WAV of ``text`` in memory (through a private temporary folder, nothing written elsewhere)."""
    with tempfile.TemporaryDirectory(prefix="wsiscan-speech-") as tmp:
        return synthesize_wav(text, Path(tmp) / "speech.wav", engine=engine).read_bytes()


def play_text(text: str, *, engine: str | None = None) -> str:
    """Say ``text`` on the default audio device; '' when it played, else why not."""
    engine = engine or find_engine()
    if engine is None:
        return f"no speech engine (espeak-ng) found; {INSTALL_HINT}"
    proc = _run([engine, "--", text])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    # espeak-ng exits 0 even when it cannot open an audio device; it then prints the ALSA/Pulse errors
    if proc.returncode != 0 or any("error" in ln.lower() for ln in lines):
        alsa = [re.sub(r"^ALSA lib \S+:\(\S+\) ", "ALSA: ", ln) for ln in lines if ln.startswith("ALSA lib pcm")]
        why = (alsa or lines or [f"exit {proc.returncode}"])[-1]
        return f"no audio device to play on ({why.strip()})"
    return ""


def speak_in_background(text: str) -> threading.Thread:
    """:func:`play_text` in a daemon thread (for buttons: the interface stays responsive)."""
    thread = threading.Thread(target=play_text, args=(text,), daemon=True, name="wsiscan-speak")
    thread.start()
    return thread


def read_summary_aloud(summary: Mapping[str, Any]) -> str:
    """A "Read aloud" button: speak the result's text in the background; '' or what to show instead."""
    text = stored_text(summary)
    if find_engine() is None:
        return f"{text} (install espeak-ng to hear it)"
    speak_in_background(text)
    return ""


@dataclass(frozen=True)
class SpeechOutcome:
    text: str
    wav_path: Path | None  # the summary.wav written, if any
    played: bool
    problem: str  # one line: why it was not played or written ('' when all went as asked)


def _store_text(slide_dir: Path, summary: Any, text: str, *, threshold: float | None,
                engine: str | None, wav: bool) -> None:
    """Store the spoken text in the result's summary (a :class:`~wsiscan.records.SlideSummary`)."""
    summary.with_blocks(speech={
        "text": text,
        "threshold": threshold if threshold is not None else summary.threshold,
        "engine": Path(engine).name if engine else None,
        "wav": SPEECH_WAV_NAME if wav else None,
    }).write(slide_dir / SUMMARY_NAME)


def speak_result(slide_dir: str | Path, *, play: bool, wav: bool, threshold: float | None = None,
                 regions: Sequence[Mapping[str, Any]] | None = None) -> SpeechOutcome:
    """Make the spoken text of the finished result in ``slide_dir``, store it in its ``summary.json``,
    write ``summary.wav`` (when ``wav``, or when ``play`` finds no audio device) and play it (``play``).

    Problems with speech (no engine, no audio device) are returned, not raised: the result
    itself is fine.  A folder without ``summary.json`` raises OutputError.
    """
    from .errors import RecordError
    from .records import read_summary

    d = Path(slide_dir)
    try:
        summary = read_summary(d / SUMMARY_NAME)
    except RecordError as exc:
        raise OutputError(f"{d}: no readable {SUMMARY_NAME} to speak ({exc}); run `wsiscan predict` first") from exc
    text = spoken_summary(summary.to_json(), threshold=threshold, regions=regions)
    engine = find_engine()
    problem, played = "", False
    if engine is None:
        problem = f"no speech engine (espeak-ng) found, so nothing was spoken or written; {INSTALL_HINT}"
    elif play:
        why = play_text(text, engine=engine)
        played = not why
        if why:
            problem = f"{why}; wrote {d / SPEECH_WAV_NAME} instead"
            wav = True
    wav_path = None
    if engine is not None and wav:
        wav_path = synthesize_wav(text, d / SPEECH_WAV_NAME, engine=engine)
    _store_text(d, summary, text, threshold=threshold, engine=engine, wav=wav_path is not None)
    return SpeechOutcome(text, wav_path, played, problem)
