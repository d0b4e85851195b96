"""The hf engine: transformers + PEFT with continuous batching, the reference engine.

engine.py         HFEngine: the decode loop, its command queue, the life of each request
model.py          LoraModel: the base model and its PEFT wrapper (load, pack, forward, add/delete adapters)
batch.py          a running batch: sequences, the shared KV cache, sampling, logprobs, delivering outputs
messages.py       the typed messages of the command queue and of the engine process's socket
process.py        HFEngineProcess: the same engine in a child process of its own
packed_linear.py  MKL-packed weights for the decode step's Linears
threads.py        timing the decode step's torch thread count
"""

from serving.engines.hf.engine import HFEngine, engine_options

__all__ = ["HFEngine", "engine_options"]
