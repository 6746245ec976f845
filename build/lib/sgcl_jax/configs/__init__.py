"""The shipped configs (installed as sgcl_jax.configs): python -m sgcl_jax.train --config <name>."""
