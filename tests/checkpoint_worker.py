"""Run as 2 processes by tests/test_sharding.py: both managers of a run folder save the same steps at once.

Each step saves the train state and then the best params, with a per-process jitter between them, as the trainer
does when an evaluation and a periodic save fall on one step; prints one JSON line of what was restored.
"""

from __future__ import annotations

import json
import random
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sgcl_jax import checkpointing, sharding

sharding.maybe_initialize_distributed()
mesh = sharding.make_mesh()
x = jax.device_put(np.arange(100_000, dtype=np.float32), NamedSharding(mesh, PartitionSpec()))
ckpt = checkpointing.Checkpoints(sys.argv[1])
jitter = random.Random(jax.process_index())
steps = int(sys.argv[2])
for step in range(1, steps + 1):
    ckpt.save(step, {"a": x + step}, {"step": step})
    time.sleep(jitter.random() * 0.05)
    ckpt.save_best(step, {"b": x - step}, {"step": step})
ckpt.close()
state, _ = checkpointing.restore(sys.argv[1], "latest", {"a": x})
best, meta = checkpointing.restore(sys.argv[1], "best", {"b": x})
print(json.dumps({"process": jax.process_index(), "latest": float(state["a"][0]), "best": float(best["b"][0]),
                  "best_step": meta["step"]}))
