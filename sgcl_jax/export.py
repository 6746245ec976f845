"""Exports a trained encoder to PyTorch: a Hugging Face BertModel folder and a sentence-transformers model, verified
in PyTorch before it is put in place (max abs difference of the sentence vectors at most 1e-4).

    python -m sgcl_jax.export --checkpoint runs/default --out exported/sg-minilm --format both
    python -m sgcl_jax.export --checkpoint runs/default/checkpoints/1078 --out exported/last --format hf

--out may not be the source folder, inside it or above it; --overwrite replaces only an earlier export.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from sgcl_jax import cli
from sgcl_jax.pytorch_export import FORMATS, ExportError, export, load_source
from sgcl_jax.runs import RunError

FLAGS = flags.FlagValues()
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training run folder, one of its checkpoint folders "
                                  "(<run>/best/<step>, <run>/checkpoints/<step>), or 'minilm' / a Hugging Face "
                                  "folder.", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "The folder to create (outside the source).", flag_values=FLAGS)
_FORMAT = flags.DEFINE_enum("format", "both", list(FORMATS), "What to write.", flag_values=FLAGS)
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a run folder.", flag_values=FLAGS)
_MAX_LENGTH = flags.DEFINE_integer("max-length", None, "Default: the run's, else 128.", flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --out.", flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full tracebacks on errors.", flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "out"], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Flags (argv without the program; default sys.argv[1:]) -> a verified export -> the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    cli.parse(FLAGS, __doc__, "sgcl_jax.export", args)
    cli.setup_logging(_VERBOSE.value)
    # Paths are shown by their last part: the card travels, the folders on this machine do not.
    command = "python -m sgcl_jax.export " + " ".join(Path(a).name if os.sep in a else a for a in args)
    try:
        src = load_source(_CHECKPOINT.value, _WHICH.value, _MAX_LENGTH.value)
        diffs = export(src.encoder, src.pretrained, _OUT.value, _FORMAT.value, _OVERWRITE.value, src.config,
                       src.results, command, src.source, src.base_model, src.checkpoint)
    except (OSError, ValueError, ExportError, RunError) as e:
        return cli.fail(e, _VERBOSE.value)
    except Exception as e:  # safetensors' own error type for a full disk; anything else is a bug: traceback
        if _VERBOSE.value or "No space left" not in str(e):
            raise
        return cli.fail(OSError(f"{_OUT.value}: no space left on device while writing the export; nothing was "
                                "written there (the staging folder is removed) and the source is untouched"), False)
    print(f"exported to {_OUT.value} ({_FORMAT.value}); verified in PyTorch, max abs diff of the sentence vectors: "
          f"{diffs}")
    return cli.OK


def run() -> None:
    """The console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
