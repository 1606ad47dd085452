"""lmms-eval's `--model hovle` end to end, offline, on the embedded demo model (`hovle.embedded_release()`, as the
release and converted): a local task written here from the synthetic shapes task (`hovle.shapes_task`: freshly
generated images, `SAMPLE_QUESTION`, the generator's answers, in a JSON-lines file read through `--include_path`) and
the harness's own CLI. The reported exact-match score must be the model's real accuracy (at least 0.95, where chance
is 0.33 or less), equal to `hovle.shapes_task.accuracy` of the logged replies, and every logged reply must be the
model's greedy reply computed here with `generate()`, one item at a time, independently of the adapter's batched
code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import hovle
from hovle.shapes_task import SAMPLE_KIND, SAMPLE_QUESTION, accuracy, generate

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 8
TASK = "hovle_shapes_local"
ITEMS = 48  # every (shape, colour) pair four times (the generator cycles them), sizes across the task's range
SEED = 20251206  # not the recipe's (0) nor test_embedded_release's held-out seed


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


@pytest.fixture(scope="module")
def converted_release(tmp_path_factory):
    """The embedded release converted by `hovle convert`'s function, in float32 (the bfloat16 values it stores, exactly)."""
    from hovle.conversion.to_transformers import convert

    folder = tmp_path_factory.mktemp("converted") / "demo-hf"
    return convert(hovle.embedded_release(), folder, dtype="float32", progress=False)


@pytest.mark.parametrize("form", ["release", "converted"])
def test_lmms_eval_reports_the_demo_models_real_accuracy_on_a_generated_task(converted_release, tmp_path, form):
    """`--model hovle` on the embedded release as it is, and on its converted folder."""
    from hovle.loading import load_model_and_processor

    pretrained = hovle.embedded_release() if form == "release" else converted_release
    model, processor = load_model_and_processor(pretrained)
    samples = list(generate(ITEMS, seed=SEED))
    items, greedy = [], []
    for index, sample in enumerate(samples):
        path = tmp_path / f"image{index}.png"
        sample.image.save(path)
        greedy.append(greedy_reply(model, processor, sample.image, SAMPLE_QUESTION))
        items.append(
            {"id": index, "image": str(path), "question": SAMPLE_QUESTION, "answer": sample.answer(SAMPLE_KIND)}
        )
    write_task(tmp_path / "task", items)

    output = tmp_path / "results"
    command = [sys.executable, "-m", "lmms_eval", "--model", "hovle", "--model_args"]
    command += [f"pretrained={pretrained},device=cpu", "--tasks", TASK, "--batch_size", "4"]
    command += ["--include_path", str(tmp_path / "task"), "--output_path", str(output), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    # lmms-eval exits with 0 even when the evaluation failed: the results file is the proof.
    results_files = list(output.rglob("*_results.json"))
    assert result.returncode == 0 and len(results_files) == 1, (result.stdout[-3000:], result.stderr[-5000:])
    (results_file,) = results_files
    reported = json.loads(results_file.read_text())["results"][TASK]["exact_match,none"]
    (samples_file,) = output.rglob(f"*_samples_{TASK}.jsonl")
    logged = [json.loads(line) for line in samples_file.read_text().splitlines()]
    # One reply per document, a string (or, in other lmms-eval versions, a one-item list).
    replies = {sample["doc_id"]: sample["filtered_resps"] for sample in logged}
    replies = {doc: reply[0] if isinstance(reply, list) else reply for doc, reply in replies.items()}
    replies = [replies[index] for index in range(len(items))]
    assert replies == greedy
    scored = accuracy(samples, {SAMPLE_KIND: replies})[SAMPLE_KIND]
    answers = [item["answer"] for item in items]
    assert reported == pytest.approx(scored) and reported >= 0.95, (reported, scored, replies, answers)
