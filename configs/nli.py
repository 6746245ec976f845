"""SG-OPT on the bundled MiniLM trained on NLI sentences instead of STS-B's: the domain shift of the paper's Figure 4.

    python train.py --config configs/nli.py --workdir runs/nli
    python -m sgcl_jax.experiments domain --config configs/default.py --workdir runs/domain   # both trainings

The text is $SGCL_NLI_TEXT, else ../shared/data/nli/snli_sentences.txt beside the checkout: 25,741 SNLI dev/test
sentences, a same-size stand-in for the paper's corpus. For the paper's setting put the SNLI + MultiNLI training
sentences, one per line (.gz allowed), in a file and point $SGCL_NLI_TEXT (or --config.data.files) at it.
Expected: see README, "The paper's experiments on MiniLM" (the paper finds SG-OPT robust to this shift on
BERT-base); 1,608 steps an epoch at batch 16, about 1.5 times a STS-B run on 2 CPU cores.
"""

import os
from pathlib import Path

from sgcl_jax.config import base_config

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nli" / "snli_sentences.txt"


def get_config():
    """The default run on the NLI text."""
    c = base_config()
    c.data.source = "text"
    c.data.files = (os.environ.get("SGCL_NLI_TEXT") or str(DEFAULT_TEXT),)
    return c
