"""A left-padded batch of prompts with different image counts and lengths gives each row what it gives alone."""

import pytest
import torch
from helpers import build_model, image_prompt

PAD = 2
STEPS = 8


def rows():
    torch.manual_seed(3)
    return [
        (image_prompt([5, 6], [1, 2], [7]), torch.randn(3, 3, 56, 56)),  # two images, 1 + 2 tiles
        (image_prompt([9, 10, 11, 12, 13, 14, 15], [], [16, 17]), None),  # text only, longest text
        (image_prompt([20], [1], [21, 22, 23]), torch.randn(1, 3, 56, 56)),  # one image, 1 tile
    ]


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def run(model, ids, mask, pixels):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        max_new_tokens=STEPS,
        min_new_tokens=STEPS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=PAD,
    )


@pytest.mark.parametrize("loc", ["pre", "post"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_equals_single_runs(loc, attn):
    model = build_model(loc, attn)
    samples = rows()
    ids, mask = left_pad([p for p, _ in samples])
    assert mask.sum(1).unique().numel() == len(samples), "rows must differ in length"
    pixels = torch.cat([px for _, px in samples if px is not None])
    batch = run(model, ids, mask, pixels)
    batch_logits = torch.stack(batch.logits, 1)
    for row, (prompt, px) in enumerate(samples):
        single_ids = torch.tensor([prompt])
        alone = run(model, single_ids, torch.ones_like(single_ids), px)
        assert batch.sequences[row, ids.shape[1] :].tolist() == alone.sequences[0, len(prompt) :].tolist(), row
        torch.testing.assert_close(batch_logits[row], torch.stack(alone.logits, 1)[0], atol=1e-4, rtol=0)


def test_padded_prefill_logits_match_unpadded():
    """Forward (no generate): the valid positions of a left-padded row equal the row run alone."""
    model = build_model("post", "eager")
    samples = rows()
    ids, mask = left_pad([p for p, _ in samples])
    pixels = torch.cat([px for _, px in samples if px is not None])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        for row, (prompt, px) in enumerate(samples):
            alone = model(input_ids=torch.tensor([prompt]), pixel_values=px).logits[0]
            torch.testing.assert_close(batch[row, ids.shape[1] - len(prompt) :], alone, atol=1e-4, rtol=0)
