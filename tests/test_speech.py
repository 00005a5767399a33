"""The spoken summary: the text, ``summary.wav`` (non-silent, as long as its words), and the CLI options.

The WAV tests need espeak-ng (``.ci/run`` installs it) and skip without it; the CMU test
needs ``../shared/data``.
"""

from __future__ import annotations

import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

from wsiscan.speech import find_engine, play_text, spoken_summary, synthesize_wav

needs_engine = pytest.mark.skipif(find_engine() is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
WORDS_PER_S = 175 / 60  # espeak-ng's default rate


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768.0
    return samples, rate


def _spoken_words(text: str) -> int:
    """Words as espeak says them: '0.096' is 'zero point zero nine six' (a word per digit, plus 'point')."""
    n = 0
    for token in text.split():
        digits = re.findall(r"\d", token)
        n += len(digits) + ("." in token.strip(".")) if digits else 1
    return n


def _assert_speech(path: Path, text: str) -> float:
    """Non-silent, speech-like loudness over the words, and about as long as espeak takes to say them."""
    samples, rate = _read_wav(path)
    duration_s = samples.size / rate
    rms = float(np.sqrt(np.mean(samples**2)))
    frames = samples[: samples.size // 441 * 441].reshape(-1, 441)  # 20 ms frames at 22.05 kHz
    voiced = float((np.sqrt((frames**2).mean(axis=1)) > 0.01).mean())
    expected_s = _spoken_words(text) / WORDS_PER_S
    assert rms > 0.02, f"{path}: silent (RMS {rms:.4f})"
    assert voiced > 0.4, f"{path}: only {voiced:.0%} of the frames carry sound"
    assert 0.5 * expected_s < duration_s < 2.0 * expected_s, (duration_s, expected_s, text)
    return duration_s


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A finished synthetic result made by the real predict with the tiny model."""
    from wsiscan.testing import write_synthetic_slide

    d = tmp_path_factory.mktemp("speech")
    slide = write_synthetic_slide(d / "syn-speech.tif").path
    r = run("predict", slide, "-o", d / "out", "--model", "wsiscan/tiny", "-q")
    assert r.exit_code == 0, r.output
    return d / "out" / "syn-speech"


def _fresh(result: Path, tmp_path: Path) -> Path:
    copy = tmp_path / result.name
    shutil.copytree(result, copy)
    return copy


def test_text_says_slide_verdict_max_probability_regions_and_area():
    summary = {"slide_id": "case_12", "scores": {"max_probability": 0.9731, "threshold": 0.5, "tumour_area_mm2": 1.5},
               "regions": {"n": 2, "top": [{"area_mm2": 1.0}, {"area_mm2": 0.25}]}}
    assert spoken_summary(summary) == ("Slide case 12. Tumour suspected. Maximum probability 0.97. "
                                       "2 regions at threshold 0.5, 1.25 square millimetres.")
    clean = {"slide_id": "b", "scores": {"max_probability": 0.2, "threshold": 0.5}, "regions": {"n": 0, "top": []}}
    assert spoken_summary(clean) == "Slide b. No tumour suspected. Maximum probability 0.2. No region at threshold 0.5."
    # another threshold with its own regions (wsiscan heatmap --threshold)
    other = spoken_summary(clean, threshold=0.1, regions=[{"area_mm2": 0.0126}])
    assert other.endswith("Tumour suspected. Maximum probability 0.2. 1 region at threshold 0.1, 0.013 square millimetres.")


@needs_engine
def test_wav_length_follows_the_text(tmp_path):
    short = "Slide one. No tumour suspected."
    long = " ".join([short] * 3)
    d_short = _assert_speech(synthesize_wav(short, tmp_path / "short.wav"), short)
    d_long = _assert_speech(synthesize_wav(long, tmp_path / "long.wav"), long)
    assert 2.4 < d_long / d_short < 3.6, (d_short, d_long)
    assert not list(tmp_path.glob(".*tmp*"))  # written beside and renamed


@needs_engine
def test_predict_speak_wav_writes_the_text_and_a_wav_of_it(tmp_path):
    from wsiscan.testing import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "spoken.tif").path
    r = run("predict", slide, "-o", tmp_path / "out", "--model", "wsiscan/tiny", "-q", "--speak-wav")
    assert r.exit_code == 0, r.output
    d = tmp_path / "out" / "spoken"
    summary = json.loads((d / "summary.json").read_text())
    text = summary["speech"]["text"]
    assert text == spoken_summary(summary) and text.startswith("Slide spoken.")
    assert f'"{text}"' in r.output and summary["speech"]["wav"] == "summary.wav"
    _assert_speech(d / "summary.wav", text)


@needs_engine
def test_speak_without_an_audio_device_still_writes_the_wav(result, tmp_path, monkeypatch):
    (tmp_path / "alsa.conf").write_text("")  # ALSA finds no device, PulseAudio no server
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(tmp_path / "alsa.conf"))
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent")
    assert play_text("test").startswith("no audio device")
    d = _fresh(result, tmp_path)
    r = run("heatmap", d, "--no-png", "--speak")
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("wsiscan: warning: no audio device"), r.stderr
    assert "summary.wav" in warnings[0]
    summary = json.loads((d / "summary.json").read_text())
    _assert_speech(d / "summary.wav", summary["speech"]["text"])


def test_without_the_engine_one_line_and_the_text_is_still_stored(result, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    d = _fresh(result, tmp_path)
    r = run("heatmap", d, "--no-png", "--speak-wav")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no speech engine (espeak-ng) found" in lines[0] and "apt-get install espeak-ng" in lines[0]
    assert not (d / "summary.wav").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["speech"]["text"].startswith("Slide syn-speech.") and summary["speech"]["wav"] is None


def test_heatmap_speaks_its_own_threshold(result, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # text only
    d = _fresh(result, tmp_path)
    geo_before = json.loads((d / "tumor.geojson").read_text())
    r = run("heatmap", d, "--no-png", "--threshold", "0.3", "--speak-wav")
    assert r.exit_code == 0, r.output
    geo = json.loads((d / "tumor.geojson").read_text())
    text = json.loads((d / "summary.json").read_text())["speech"]["text"]
    assert f"{len(geo['features'])} region" in text and "threshold 0.3" in text
    assert len(geo["features"]) >= len(geo_before["features"])


def test_speak_on_a_folder_without_result_is_an_error(tmp_path):
    from wsiscan.errors import OutputError
    from wsiscan.speech import speak_result

    with pytest.raises(OutputError, match="no readable summary.json"):
        speak_result(tmp_path, play=False, wav=True)


@pytest.mark.realdata
@needs_engine
def test_cmu_result_speaks(shared_slides, tmp_path):
    r = run("predict", shared_slides / "CMU-1-Small-Region.svs", "-o", tmp_path, "--model", "wsiscan/tiny", "-q",
            "--speak-wav")
    assert r.exit_code == 0, r.output
    d = tmp_path / "CMU-1-Small-Region"
    summary = json.loads((d / "summary.json").read_text())
    text = summary["speech"]["text"]
    assert text.startswith("Slide CMU-1-Small-Region.") and f"{summary['scores']['max_probability']:.2f}"[:3] in text
    _assert_speech(d / "summary.wav", text)


def test_read_aloud_button_says_the_stored_text(monkeypatch, tmp_path):
    """What the napari panel's "Read aloud" button calls: the stored text, spoken in the background."""
    import wsiscan.speech as speech

    summary = {"slide_id": "a", "scores": {"max_probability": 0.9, "threshold": 0.5}, "regions": {"n": 1, "top": []},
               "speech": {"text": "the stored words"}}
    spoken = []
    monkeypatch.setattr(speech, "speak_in_background", spoken.append)
    monkeypatch.setattr(speech, "find_engine", lambda: "/usr/bin/espeak-ng")
    assert speech.read_summary_aloud(summary) == "" and spoken == ["the stored words"]
    monkeypatch.setattr(speech, "find_engine", lambda: None)
    assert speech.read_summary_aloud(summary) == "the stored words (install espeak-ng to hear it)"
    assert spoken == ["the stored words"]
    del summary["speech"]
    assert speech.read_summary_aloud(summary).startswith("Slide a. Tumour suspected.")
