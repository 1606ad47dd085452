"""Training: labels, stage presets with the Trainer, gradient accumulation, checkpointing."""

import copy

import pytest
import torch
from helpers import load_model, samples, train
from transformers import AutoProcessor

from hovle.training.collator import HoVLEChatCollator
from hovle.training.stages import apply_stage


@pytest.fixture(scope="module")
def processor(tiny_hub_folder):
    return AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)


def test_labels_cover_exactly_the_assistant_replies(processor):
    batch = HoVLEChatCollator(processor)(samples(3))
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in range(3):
        supervised = batch["labels"][row][batch["labels"][row] != -100].tolist()
        expected = []
        for reply in (f"answer number {row}", "done"):
            expected += tokenizer(reply, add_special_tokens=False)["input_ids"] + [end]
        assert supervised == expected, row
        # every supervised position holds its own input token
        mask = batch["labels"][row] != -100
        assert torch.equal(batch["labels"][row][mask], batch["input_ids"][row][mask])
    assert batch["pixel_values"].shape[0] > 0 and (batch["attention_mask"][:, 0] == 0).any()


def test_training_samples_start_with_one_bos_as_at_inference(processor):
    """The collator's ids of a chat equal the processor's (inference) ids of the same rendered chat: one BOS."""
    batch = HoVLEChatCollator(processor)(samples(2))
    for row, sample in enumerate(samples(2)):
        rendered = processor.apply_chat_template(sample["messages"], tokenize=False)
        expected = processor(text=rendered, images=sample.get("images") or None)["input_ids"][0]
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        assert ids == expected and ids[0] == processor.tokenizer.bos_token_id != ids[1], row


@pytest.mark.parametrize("stage", [2, 3])
def test_stage_trains_only_its_parameters_and_loss_falls(tiny_hub_folder, processor, tmp_path, stage):
    model = load_model(tiny_hub_folder)
    counts = apply_stage(model, stage)
    assert counts["trainable"] > 0 and (counts["frozen"] > 0) == (stage == 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = train(model, processor, tmp_path, steps=30, data=samples(4))
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter.detach(), before[name])
        trains = name.startswith("model.embedding_model.") or stage == 3
        # Unused in the forward pass by design: the InternViT class token and the LLM's own token table (the
        # stage-I text teacher). They get no gradient and must stay as they were.
        if name.endswith("class_embedding") or name == "model.language_model.embed_tokens.weight":
            trains = False
        assert changed == trains, name


def test_unknown_stage():
    with pytest.raises(ValueError, match="Unknown training stage 4"):
        apply_stage(torch.nn.Module(), 4)


def test_gradient_accumulation_matches_one_big_batch(tiny_hub_folder, processor, tmp_path):
    """1 step of batch 4 == 2 micro-batches of 2 accumulated: with SGD, equal updates mean equal gradients."""
    data = samples(4)
    big = load_model(tiny_hub_folder)
    small = copy.deepcopy(big)
    big_loss = train(big, processor, tmp_path / "big", steps=1, batch_size=4, lr=1.0, optim="sgd", data=data)
    small_loss = train(
        small, processor, tmp_path / "small", steps=1, batch_size=2, accumulation=2, lr=1.0, optim="sgd", data=data
    )
    assert small_loss == pytest.approx(big_loss, abs=1e-5)
    for (name, a), (_, b) in zip(big.named_parameters(), small.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_gradient_checkpointing_same_loss_and_gradients(tiny_hub_folder, processor):
    batch = HoVLEChatCollator(processor)(samples(3))
    results = []
    for checkpointing in (False, True):
        model = load_model(tiny_hub_folder).train()
        if checkpointing:  # renamed in 5.2x; the old name warns there
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=0, msg=name)
