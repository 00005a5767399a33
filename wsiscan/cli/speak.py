"""``--speak`` / ``--speak-wav`` of ``predict`` and ``heatmap``: the spoken summary (wsiscan.speech)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import click

from . import echo_err


def speech_options(command: Any) -> Any:
    command = click.option("--speak-wav", is_flag=True, default=False,
                           help="Write the spoken summary to OUT/<slide-id>/summary.wav (espeak-ng).")(command)
    return click.option("--speak", is_flag=True, default=False,
                        help="Read each result aloud (slide, tumour suspected or not, max probability, regions and "
                             "area) with espeak-ng; the text goes into summary.json, and into summary.wav when "
                             "there is no audio device.")(command)


def speak_results(slide_dirs: Sequence[Path], *, play: bool, wav: bool, threshold: float | None = None,
                  regions: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Speak (and/or write) the summary of each finished result among ``slide_dirs``; one line each."""
    if not (play or wav):
        return
    from ..layout import is_result_folder
    from ..speech import speak_result

    for d in slide_dirs:
        if not is_result_folder(d):
            continue  # a slide that failed: nothing to say
        outcome = speak_result(d, play=play, wav=wav, threshold=threshold, regions=regions)
        where = f" -> {outcome.wav_path}" if outcome.wav_path else ""
        click.echo(f"{Path(d).name}: \"{outcome.text}\"{where}")
        if outcome.problem:
            echo_err(f"wsiscan: warning: {outcome.problem}")


def speak_at_end(slide_dirs: Sequence[Path], *, play: bool, wav: bool) -> None:
    """Speak the finished results among ``slide_dirs`` when the command ends, also when some failed."""
    if play or wav:
        click.get_current_context().call_on_close(lambda: speak_results(slide_dirs, play=play, wav=wav))
