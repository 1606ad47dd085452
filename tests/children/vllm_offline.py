"""Child process: serve requests with vLLM's offline `LLM` engine (its CPU backend here) and write what it returned.

    python vllm_offline.py FOLDER REQUESTS_JSON OUTPUT_JSON

Each request runs alone (one `generate` call per request), then all together in one call, where vLLM's continuous
batching interleaves their prefills (chunked) and decoding steps. The output also holds a sha256 of every parameter
of the loaded model (vLLM's names), to compare what two folders load to. Run as a script: vLLM starts its engine in
spawned processes, which re-import `__main__`.
"""

import json
import os
import sys

from PIL import Image
from vllm import LLM, SamplingParams
from vllm_digests import parameter_digests  # a module of its own: pickled by name into the engine process

# `LLM.apply_model` sends a function to the engine process, which vLLM accepts only with pickle allowed.
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"


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

    (weights,) = llm.apply_model(parameter_digests)
    alone = [results(llm.generate([engine_inputs(r)], params(r), use_tqdm=False))[0] for r in requests]
    together = results(llm.generate([engine_inputs(r) for r in requests], [params(r) for r in requests]))
    with open(output_path, "w") as handle:
        json.dump({"alone": alone, "together": together, "weights": weights}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
