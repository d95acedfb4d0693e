"""The Studio: a web app that turns text or speech into a talking-head video of a trained subject (issue 12).

The request handling lives here, free of Gradio, so it is unit-tested on CPU with an injected pipeline:

- `settings`   StudioSettings (limits, folders, TTS and knob defaults) from configs/studio.yaml
- `validation` RequestError, text / language / upload / knob checks
- `subjects`   discovery of trained subjects under the runs folder, with thumbnails and what is missing
- `tts`        text-to-speech backends: espeak-ng (offline), piper-tts (local voice file), edge-tts (online)
- `jobs`       one worker, a bounded queue, progress and cancellation
- `service`    Studio: validate -> queue -> (TTS) -> TalkingHeadPipeline.render -> mp4 in the studio folder
- `ui`         the Gradio page (app.py at the repo root starts it)
"""

from talkfield.studio.jobs import Job, JobQueue, QueueFull
from talkfield.studio.service import Studio
from talkfield.studio.settings import StudioSettings
from talkfield.studio.validation import RequestError

__all__ = ["Job", "JobQueue", "QueueFull", "RequestError", "Studio", "StudioSettings"]
