"""Child process: serve requests with vLLM's offline `LLM` engine (its CPU backend here) and write what it returned.

    python vllm_offline.py FOLDER REQUESTS_JSON OUTPUT_JSON

Each request runs alone (one `generate` call per request), then all together in one call, where vLLM's continuous
batching interleaves their prefills (chunked) and decoding steps. Run as a script: vLLM starts its engine in
spawned processes, which re-import `__main__`.
"""

import json
import sys

from PIL import Image
from vllm import LLM, SamplingParams


def engine_inputs(request: dict) -> dict:
    inputs = {"prompt": request["prompt"]}
    if request["images"]:
        inputs["multi_modal_data"] = {"image": [Image.open(path).convert("RGB") for path in request["images"]]}
    if request.get("max_tiles") is not None:
        inputs["mm_processor_kwargs"] = {"max_tiles": request["max_tiles"]}
    return inputs


def results(outputs) -> list[dict]:
    return [
        {
            "prompt_token_ids": list(output.prompt_token_ids),
            "token_ids": list(output.outputs[0].token_ids),
            "logprobs": [
                {str(token): entry.logprob for token, entry in step.items()} for step in output.outputs[0].logprobs
            ],
        }
        for output in outputs
    ]


def main(folder: str, requests_path: str, output_path: str) -> None:
    requests = json.loads(open(requests_path).read())
    llm = LLM(
        model=folder,
        dtype="float32",
        max_model_len=4096,
        # A small token budget per step: long image prompts are prefilled in chunks, interleaved with other
        # requests' decoding steps.
        max_num_batched_tokens=1024,
        max_num_seqs=16,
        gpu_memory_utilization=0.15,  # of the machine's RAM, on the CPU backend
        enforce_eager=True,
        limit_mm_per_prompt={"image": 4},
        seed=0,
    )

    def params(request):
        return SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], logprobs=5)

    alone = [results(llm.generate([engine_inputs(r)], params(r), use_tqdm=False))[0] for r in requests]
    together = results(llm.generate([engine_inputs(r) for r in requests], [params(r) for r in requests]))
    with open(output_path, "w") as handle:
        json.dump({"alone": alone, "together": together}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
