"""Media parts (image, audio, PDF, video): where their bytes live, what they really are, and decoding.

Contract shared by validation, tuning, prediction and serving (filled in by the media work of #15):

- ``MediaSource``: how a ``Part`` of kind ``inlineData``/``fileData`` is resolved — the JSONL file's
  folder (embedded), ``TUNERY_DATA_ROOT`` (server), uploaded files (``files/{id}``), and whether
  ``http(s)://`` may be fetched (``--allow-remote-media``, off by default).
- ``open_media(part, source) -> Media``: the bytes (lazily, for a path) and the declared MIME type;
  raises ``MediaError`` with a message fit for ``FILE:LINE: field: message``.
- ``probe(media) -> MediaInfo``: the real type from the header (magic bytes), and its size: image
  width/height/frames, audio seconds, PDF pages — read from headers, not by decoding whole files.
- ``load_image(media) -> PIL.Image.Image`` (RGB; a GIF's first frame), ``load_audio(media, sampling_rate)
  -> numpy float32 mono``, ``pdf_text(media) -> list[str]`` (one string per page),
  ``pdf_images(media, dpi) -> list[PIL.Image.Image]`` (one image per page, page order kept).
"""

from __future__ import annotations
