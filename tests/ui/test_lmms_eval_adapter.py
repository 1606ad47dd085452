"""lmms-eval's `--model hovle` end to end, offline: a tiny local task written here (images, questions, answers in a
JSON-lines file read through `--include_path`), the tiny model, the harness's own CLI. Half of the answers are the
model's greedy replies (computed here with `generate()`, one item at a time, independently of the adapter's batched
code), so the reported exact-match score must be exactly what those replies give."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 8
TASK = "hovle_tiny_local"


def greedy_reply(model, processor, image, question: str) -> str:
    """The model's own greedy reply to one question about one image, stripped (as the harness scores replies)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def write_task(folder, items) -> None:
    """A task folder for `--include_path`: the YAML, its `utils.py` (images from paths) and the data."""
    folder.mkdir()
    with open(folder / "items.jsonl", "w") as data:
        for item in items:
            data.write(json.dumps(item) + "\n")
    (folder / "utils.py").write_text(
        "from PIL import Image\n\n\ndef doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n"
    )
    (folder / f"{TASK}.yaml").write_text(
        textwrap.dedent(f"""\
            task: {TASK}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {folder / "items.jsonl"}
            test_split: test
            output_type: generate_until
            doc_to_visual: !function utils.doc_to_visual
            doc_to_text: "{{{{question}}}}"
            doc_to_target: "answer"
            generation_kwargs:
              max_new_tokens: {MAX_NEW_TOKENS}
              temperature: 0
              do_sample: false
            metric_list:
              - metric: exact_match
                aggregation: mean
                higher_is_better: true
            """)
    )


@pytest.mark.parametrize("form", ["converted", "release"])
def test_lmms_eval_scores_equal_the_models_greedy_answers(tiny_hub_folder, tmp_path, form):
    """`--model hovle` on the converted folder, and on the release it was converted from, loaded as it is."""
    questions = ["What is in the picture?", "Which colour dominates?", "Describe the image.", "Is it round?", "Hi?"]
    pictures = [
        Image.radial_gradient("L").convert("RGB").resize((120, 80)),
        Image.new("RGB", (64, 96), "red"),
        Image.linear_gradient("L").convert("RGB").resize((200, 60)),
        Image.new("RGB", (56, 56), "blue"),
        Image.radial_gradient("L").convert("RGB").resize((90, 90)).rotate(45),
    ]
    from hovle.loading import load_model_and_processor

    model, processor = load_model_and_processor(tiny_hub_folder)
    items, greedy = [], []
    for index, (question, picture) in enumerate(zip(questions, pictures, strict=True)):
        path = tmp_path / f"image{index}.png"
        picture.save(path)
        reply = greedy_reply(model, processor, picture, question)
        greedy.append(reply)
        # Items 0, 2 and 4 are answered by the model's own reply; the others by something it did not say.
        answer = reply if index % 2 == 0 else f"not {reply}"
        items.append({"id": index, "image": str(path), "question": question, "answer": answer})
    assert all(greedy) and len(set(greedy)) > 1, greedy
    expected = sum(reply == item["answer"] for reply, item in zip(greedy, items, strict=True)) / len(items)
    assert expected == 3 / 5
    write_task(tmp_path / "task", items)

    output = tmp_path / "results"
    command = [sys.executable, "-m", "lmms_eval", "--model", "hovle", "--model_args"]
    # `tiny_hub_folder` is converted from the release-layout folder beside it (tests/conftest.py).
    pretrained = tiny_hub_folder if form == "converted" else tiny_hub_folder.parent / "original"
    command += [f"pretrained={pretrained},device=cpu", "--tasks", TASK, "--batch_size", "2"]
    command += ["--include_path", str(tmp_path / "task"), "--output_path", str(output), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    # lmms-eval exits with 0 even when the evaluation failed: the results file is the proof.
    results_files = list(output.rglob("*_results.json"))
    assert result.returncode == 0 and len(results_files) == 1, (result.stdout[-3000:], result.stderr[-5000:])
    (results_file,) = results_files
    reported = json.loads(results_file.read_text())["results"][TASK]
    assert reported["exact_match,none"] == pytest.approx(expected)
    (samples_file,) = output.rglob(f"*_samples_{TASK}.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    # One reply per document, a string (or, in other lmms-eval versions, a one-item list).
    replies = {sample["doc_id"]: sample["filtered_resps"] for sample in samples}
    replies = {doc: reply[0] if isinstance(reply, list) else reply for doc, reply in replies.items()}
    assert [replies[index] for index in range(len(items))] == greedy
