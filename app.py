"""The HoVLE chat demo as a Hugging Face Space runs it (`python app.py`, gradio SDK): `hovle demo` with settings from
the environment.

    HOVLE_MODEL            HoVLE release or converted folder, local or Hub id, e.g. OpenGVLab/HoVLE (unset: the embedded
                           demo model, `hovle.embedded_release()`: a tiny HoVLE trained on synthetic shapes, not
                           HoVLE's weights; the page says so)
    HOVLE_DEVICE           auto (default: CUDA when present, else CPU), cpu, cuda, ...
    HOVLE_TRUST_REMOTE_CODE=1  load with the model repository's own code instead of the installed package's

The address comes from gradio's own variables (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT; a Space sets them), else
127.0.0.1:7860. A Space needs this package and gradio (`pip install "hovle[demo]"`), nothing else.
"""

import os

from hovle.demo import build_app, load_engine

engine = load_engine(
    os.environ.get("HOVLE_MODEL") or None,  # None: the embedded demo model
    device=os.environ.get("HOVLE_DEVICE", "auto"),
    trust_remote_code=os.environ.get("HOVLE_TRUST_REMOTE_CODE") == "1",
)
demo = build_app(engine)

if __name__ == "__main__":
    demo.queue().launch()
