"""HoVLE for transformers. The model files live flat in the repo root (they are what a converted Hub folder ships
as remote code); installed, they form the package `hovle`, with the converters as `hovle.conversion`."""

from setuptools import setup

setup(
    name="hovle",
    version="0.1.0",
    description="HoVLE, the monolithic vision-language model, for transformers 5.x",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["hovle", "hovle.conversion", "hovle.tools", "hovle.training"],
    package_dir={"hovle": ".", "hovle.conversion": "conversion", "hovle.tools": "tools", "hovle.training": "training"},
    py_modules=[],
    install_requires=[
        # 5.17 is the oldest release the suite is run against (the GPU machines carry it).
        "transformers>=5.17,<6",
        "torch>=2.6",
        "safetensors>=0.4.3",
        "huggingface_hub>=1.0",
        "tqdm",
        "pillow",
        "numpy",
        # tokenizer conversion reads sentencepiece models
        "sentencepiece>=0.2",
        "protobuf",
    ],
    extras_require={
        "flash-attn": ["flash-attn>=2.6"],
        "train": ["accelerate>=1.1", "peft>=0.13"],
        "test": ["pytest>=8", "ruff>=0.6", "accelerate>=1.1", "peft>=0.13"],
    },
    entry_points={
        "console_scripts": [
            "hovle=hovle.tools.cli:main",
            "hovle-convert=hovle.conversion.convert_hovle_to_hf:main",
            "hovle-export-original=hovle.conversion.convert_hf_to_hovle:main",
        ]
    },
)
