"""LoRA (train, merge, reload), stage-1 distillation with a native InternVL teacher, export of a fine-tuned model
back to the original layout, and `hovle train`."""

import json

import peft
import pytest
import torch
from helpers import ListDataset, load_model, samples, train, write_chat_data
from transformers import AutoModelForImageTextToText, TrainingArguments

from hovle.conversion.checkpoint_io import TensorSource
from hovle.conversion.to_original import export
from hovle.conversion.to_transformers import convert
from hovle.testing import tiny_internvl_teacher
from hovle.training.collator import HoVLEChatCollator
from hovle.training.distillation import DistillationCollator, DistillationTrainer, check_teacher, distillation_losses
from hovle.training.lora import LORA_TARGETS, lora_config, merge_and_save
from hovle.training.stages import apply_stage


@pytest.fixture(scope="module")
def processor(tiny_hub_folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)


@pytest.mark.parametrize("stack", ["embedding", "text", "both"])
def test_lora_targets_select_the_right_stack(tiny_hub_folder, stack):
    model = peft.get_peft_model(load_model(tiny_hub_folder), lora_config(stack, rank=4))
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    per_layer = 7
    expected = {"embedding": 2 * per_layer, "text": 3 * per_layer, "both": 5 * per_layer}[stack]
    assert len(adapted) == expected
    assert all(("embedding_model" in n) == (stack != "text") or stack == "both" for n in adapted)
    assert LORA_TARGETS[stack]


def test_lora_trains_merges_and_reloads(tiny_hub_folder, processor, tmp_path):
    model = peft.get_peft_model(load_model(tiny_hub_folder), lora_config("both", rank=8, dropout=0.0))
    losses = train(model, processor, tmp_path, steps=15, data=samples(4), lr=2e-2)
    assert losses[-1] < losses[0]
    batch = HoVLEChatCollator(processor)(samples(3))
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        adapter_logits = model(**batch).logits
    merged_dir = merge_and_save(model, tmp_path / "merged", processor)
    reloaded = AutoModelForImageTextToText.from_pretrained(merged_dir, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        merged_logits = reloaded.eval()(**batch).logits
    base_logits = load_model(tiny_hub_folder).eval()(**batch).logits.detach()
    assert (adapter_logits - base_logits).abs().max() > 1e-3, "the adapters must have learned something"
    # Folding B@A into W re-rounds every weight in float32; the tiny model's random weights give logits of
    # magnitude ~10^1, so the tolerance is relative to that scale: 5e-5 of the largest logit (a fresh environment
    # showed 1.4e-5 on 3 of 731,136 logits; a wrong merge is off by the adapters' effect, more than 1e-3).
    scale = adapter_logits.abs().max().item()
    torch.testing.assert_close(merged_logits, adapter_logits, atol=5e-5 * scale, rtol=0)
    assert not any("lora" in k for k in reloaded.state_dict())


def test_stage1_distillation_with_internvl_teacher(tiny_hub_folder, processor, tmp_path):
    from PIL import Image

    model = load_model(tiny_hub_folder)
    apply_stage(model, 1)
    teacher = tiny_internvl_teacher()
    check_teacher(teacher, model)  # 4 tokens of width 64 per 56px tile on both sides
    with pytest.raises(ValueError, match="Teacher gives 4 tokens of width 32"):
        check_teacher(tiny_internvl_teacher(hidden=32), model)
    generator = torch.Generator().manual_seed(0)
    data = [{"image": Image.effect_noise((56 + 28 * (i % 3), 56), 40 + i).convert("RGB")} for i in range(4)]
    data += [{"text_ids": torch.randint(3, 1019, (12,), generator=generator).tolist()} for _ in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        max_steps=30,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        logging_steps=1,
        seed=0,
    )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(data),
        teacher=teacher,
        data_collator=DistillationCollator(processor),
    )
    llm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    embedding_before = {k: v.clone() for k, v in model.model.embedding_model.state_dict().items()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0], losses
    for key, value in model.model.language_model.state_dict().items():
        assert torch.equal(value, llm_before[key]), key
    for key, value in model.model.embedding_model.state_dict().items():
        # the unused InternViT class token is the one embedding tensor without a gradient
        assert torch.equal(value, embedding_before[key]) == key.endswith("class_embedding"), key
    batch = DistillationCollator(processor)(data)
    final = {k: v.item() for k, v in distillation_losses(model, teacher, batch).items()}
    assert set(final) == {"image", "text"}
    # The trained embedding module saves alone and loads back into a full model.
    model.model.embedding_model.save_pretrained(tmp_path / "embedding")
    fresh = load_model(tiny_hub_folder)
    fresh.model.embedding_model = type(fresh.model.embedding_model).from_pretrained(
        tmp_path / "embedding",
        cache_layer_offset=fresh.model.num_text_layers,
        image_token_id=fresh.config.image_token_id,
    )
    reloaded = {k: v.item() for k, v in distillation_losses(fresh, teacher, batch).items()}
    assert reloaded == pytest.approx(final, abs=1e-6)


def test_finetuned_model_exports_to_original_bit_exact(tiny_hub_folder, processor, tmp_path):
    model = load_model(tiny_hub_folder)
    train(model, processor, tmp_path, steps=3, data=samples(4), lr=1e-2)
    model.save_pretrained(tmp_path / "finetuned")
    original = export(tmp_path / "finetuned", tmp_path / "original", progress=False)
    back = convert(original, tmp_path / "again", dtype="float32", progress=False)
    trained = {k: v.detach() for k, v in model.state_dict().items()}
    source = TensorSource(back)
    assert sorted(source.keys()) == sorted(trained)
    changed = 0
    for key in source.keys():
        assert torch.equal(source.get(key), trained[key]), key
        changed += 1
    assert changed == len(trained)
    reloaded = AutoModelForImageTextToText.from_pretrained(back, trust_remote_code=True, dtype=torch.float32)
    assert all(torch.equal(v, trained[k]) for k, v in reloaded.state_dict().items())


def test_cli_train_stage3(tiny_hub_folder, tmp_path):
    from hovle.cli import main

    data = write_chat_data(tmp_path / "data", count=4)
    out = tmp_path / "trained"
    code = main(
        [
            "train",
            "--model",
            str(tiny_hub_folder),
            "--data",
            str(data),
            "--stage",
            "3",
            "--output",
            str(out),
            "--max-steps",
            "2",
            "--cpu",
            "--lr",
            "1e-3",
        ]
    )
    assert code == 0
    reloaded = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    assert type(reloaded).__name__ == "HoVLEForConditionalGeneration"
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "HoVLEProcessor"
    # The trained folder carries what the converted one did: its remote code and the release's tokenizer files.
    for name in ("configuration_hovle.py", "modeling_hovle.py", "processing_hovle.py", "chat_hovle.py"):
        assert (out / name).is_file(), name
    assert (out / "original_tokenizer" / "tokenizer.model").is_file()
