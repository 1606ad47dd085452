"""Every folder the package writes loads through the README's snippets in a fresh process that never imports `hovle`
(no `register_auto_classes()`): the converted folder, `hovle train` stages 3 and 2, `hovle train --lora` and
`lora.merge_and_save`, and `hovle train` on an original release. The trainings run as fresh processes too, as a user runs them: in a process that converted a
model first, transformers' class-wide `register_for_auto_class` flag hid a trained folder's missing `auto_map`."""

import os
import subprocess
import sys

import peft
import pytest
from helpers import child_report, load_model, run_child, write_chat_data
from PIL import Image
from transformers import AutoProcessor

from hovle.testing import tiny_config, write_original_checkpoint, write_tiny_tokenizer
from hovle.training.lora import lora_config, merge_and_save


def hovle_train(model, data, output, *extra):
    """`hovle train` in a fresh offline process (two CPU steps)."""
    command = [sys.executable, "-m", "hovle.cli", "train", "--model", model, "--data", data, "--output", output]
    command += ["--max-steps", "2", "--cpu", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == f"Wrote {output}", result.stdout
    return output


def tiny_release(folder):
    release = write_original_checkpoint(folder, tiny_config("pre"), seed=0)
    write_tiny_tokenizer(release)
    return release


@pytest.mark.slow
def test_every_written_folder_loads_with_the_readme_snippets(tiny_hub_folder, tmp_path):
    data = write_chat_data(tmp_path / "data", count=4)
    folders = {
        "converted": tiny_hub_folder,
        "stage 3": hovle_train(tiny_hub_folder, data, tmp_path / "sft", "--stage", "3"),
        "stage 2": hovle_train(tiny_hub_folder, data, tmp_path / "aligned", "--stage", "2"),
        "lora": hovle_train(tiny_hub_folder, data, tmp_path / "lora", "--stage", "3", "--lora", "both"),
        # Trained from an original release loaded as it is: the output is a converted folder all the same.
        "from a release": hovle_train(
            tiny_release(tmp_path / "release"), data, tmp_path / "from-release", "--stage", "3"
        ),
    }
    adapted = peft.get_peft_model(load_model(tiny_hub_folder), lora_config("text", rank=4))
    processor = AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)
    folders["merge_and_save"] = merge_and_save(adapted, tmp_path / "merged", processor)
    image = tmp_path / "photo.png"
    Image.effect_noise((90, 60), 40).convert("RGB").save(image)

    report = child_report(run_child("readme_loading_child.py", image, *folders.values()))

    assert report.pop("hovle_imported") == []
    for name, folder in folders.items():
        loaded = report[str(folder)]
        assert loaded["processor"] == loaded["pipeline_processor"] == "HoVLEProcessor", name
        assert loaded["processor_mixin"], name
        # The image expanded into its tiles' tokens (a bare tokenizer leaves a literal `<image>` and none).
        assert loaded["image_tokens"] == loaded["expected_image_tokens"] > 0, name
        assert loaded["pipeline"] == loaded["generate"], name
