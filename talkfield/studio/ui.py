"""The Studio's Gradio page. All request handling is in `Studio` (service.py); this only wires widgets to it.

Files: Gradio's upload/cache folder is put inside the studio folder (GRADIO_TEMP_DIR) and the app may serve only
the studio's job and thumbnail folders (allowed_paths), so nothing else on disk is reachable through it.
"""

from __future__ import annotations

import os
from typing import Any

from talkfield.studio.jobs import QueueFull
from talkfield.studio.service import Studio
from talkfield.studio.settings import POSE_MODES
from talkfield.studio.validation import RequestError

POLL_S = 0.25
POSE_CHOICES = [("Follow the template's head motion", "loop"), ("Keep the head still", "static")]
LANGUAGE_CHOICES = [("Detect", "auto"), ("English", "en"), ("中文 (Mandarin)", "zh")]
SOURCE_CHOICES = [("Type text", "text"), ("Upload or record speech", "audio")]
assert {v for _, v in POSE_CHOICES} == set(POSE_MODES)

CSS = """
#status { min-height: 2.5em; }
"""


def prepare_environment(studio: Studio) -> None:
    """Gradio reads these when its components are built: keep its uploads and cache inside the studio folder,
    and send nothing to Gradio's analytics (the app must work offline)."""
    os.environ["GRADIO_TEMP_DIR"] = str(studio.settings.uploads_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def launch_kwargs(studio: Studio) -> dict[str, Any]:
    """What app.py passes to Blocks.launch besides host and port."""
    s = studio.settings
    return {"allowed_paths": [str(s.jobs_dir), str(s.thumbs_dir)],
            "max_file_size": f"{int(s.limits.max_upload_mb)}mb", "show_error": True, "share": False,
            "css": CSS, "ssr_mode": False}


def build_app(studio: Studio):
    """The page: pick a subject, give text or speech, set the knobs, generate, watch progress, cancel, download."""
    prepare_environment(studio)
    import gradio as gr

    s = studio.settings
    k = s.knobs

    def subject_choices():
        subs = studio.subjects()
        choices = [(i.label, i.name) for i in subs]
        first = next((i.name for i in subs if i.ready), subs[0].name if subs else None)
        return subs, choices, first

    def describe(name: str | None):
        """thumbnail, notes markdown for the chosen subject."""
        subs = {i.name: i for i in studio.subjects()}
        info = subs.get(name or "")
        if not subs:
            return None, studio.no_subject_help()
        if info is None:
            return None, "Choose a person."
        lines = []
        if info.problems:
            lines.append("**Not ready to render:**")
            lines += [f"- {p}" for p in info.problems]
        if info.notes:
            lines += [f"- {n}" for n in info.notes]
        thumb = str(info.thumbnail) if info.thumbnail else None
        return thumb, "\n".join(lines)

    def refresh():
        _, choices, first = subject_choices()
        thumb, notes = describe(first)
        return gr.update(choices=choices, value=first), thumb, notes

    def on_source(source):
        return gr.update(visible=source == "text"), gr.update(visible=source == "text"), \
            gr.update(visible=source == "audio")

    def generate(subject, source, text, language, audio, mouth_amp, blink, pose, paste_back):
        try:
            job = studio.submit(subject=subject, source=source, text=text, audio=audio, language=language,
                                mouth_amp=mouth_amp, blink=blink, pose=pose, paste_back=paste_back,
                                upload_roots=[s.uploads_dir])
        except (RequestError, QueueFull) as e:
            yield None, f"⚠️ {e}", None
            return
        try:
            yield job.id, studio.status(job), None
            while not job.wait(POLL_S):
                yield job.id, studio.status(job), None
            if job.state == "done" and job.result is not None:
                yield None, studio.status(job), str(job.result)
            else:
                yield None, ("⚠️ " if job.state == "failed" else "") + studio.status(job), None
        finally:
            # the page went away (or the event was stopped): don't render for nobody
            if not job.finished_:
                studio.cancel(job.id)

    def cancel(job_id):
        if job_id and studio.cancel(job_id):
            return "Cancelling..."
        return "Nothing to cancel."

    with gr.Blocks(title="TalkField Studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown("# TalkField Studio\nPick a person, give them something to say, and get the talking video.")
        job_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    subject = gr.Dropdown(label="Person (trained subject)", choices=[], elem_id="subject",
                                          interactive=True, scale=3)
                    reload_btn = gr.Button("↻ Reload", elem_id="reload", scale=1, size="sm")
                thumb = gr.Image(label="Template", type="filepath", interactive=False, height=200,
                                 elem_id="thumbnail")
                subject_notes = gr.Markdown(elem_id="subject-notes")
                source = gr.Radio(SOURCE_CHOICES, value="text", label="What they say", elem_id="source")
                text = gr.Textbox(label=f"Text (up to {s.limits.max_text_chars} characters; English or 中文)",
                                  lines=4, elem_id="text", placeholder="Hello! 你好！")
                language = gr.Radio(LANGUAGE_CHOICES, value=s.tts.language if s.tts.language in
                                    ("auto", "en", "zh") else "auto", label=f"Language (voice: {studio.tts.name})",
                                    elem_id="language")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", visible=False,
                                 label=f"Speech (up to {s.limits.max_audio_seconds:g} s; wav, mp3, m4a, flac, "
                                       "ogg)", elem_id="audio")
                with gr.Accordion("Knobs", open=True):
                    lo, hi = k.mouth_amp_range
                    mouth_amp = gr.Slider(lo, hi, value=k.mouth_amp, step=0.05, label="Mouth amplitude",
                                          info="1 = as predicted; higher opens the mouth wider", elem_id="mouth")
                    blink = gr.Checkbox(value=k.blink, label="Blink", elem_id="blink")
                    pose = gr.Radio(POSE_CHOICES, value=k.pose, label="Head pose", elem_id="pose")
                    paste_back = gr.Checkbox(value=k.paste_back, elem_id="paste-back",
                                             label="Paste back into the original full frame")
                with gr.Row():
                    go = gr.Button("Generate video", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=1):
                status = gr.Markdown("Ready.", elem_id="status")
                video = gr.Video(label="Talking video", interactive=False, elem_id="video",
                                 buttons=["download"], format="mp4")

        demo.load(refresh, outputs=[subject, thumb, subject_notes])
        reload_btn.click(refresh, outputs=[subject, thumb, subject_notes])
        subject.change(describe, inputs=subject, outputs=[thumb, subject_notes])
        source.change(on_source, inputs=source, outputs=[text, language, audio])
        # concurrency_limit=None: every waiting page keeps its generator; the Studio's own queue orders the work
        go.click(generate, inputs=[subject, source, text, language, audio, mouth_amp, blink, pose, paste_back],
                 outputs=[job_state, status, video], concurrency_limit=None, show_progress="minimal")
        stop.click(cancel, inputs=job_state, outputs=status, concurrency_limit=None)
    return demo
