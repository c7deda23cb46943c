"""OpenAI's audio API: transcriptions and translations (an stt model), speech (a tts model).

routes.py   the handlers, their request checks and the DIALECT
codec.py    ffmpeg: uploads to 16 kHz PCM, speech PCM to the asked format
formats.py  a transcript as json, text, srt, vtt or verbose_json
"""

from gateway.dialects.audio.routes import DIALECT

__all__ = ["DIALECT"]
