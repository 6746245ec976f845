"""sgcl_jax: SG-BERT (Kim, Yoo and Lee, ACL 2021) in JAX/Flax.

    import sgcl_jax
    encoder = sgcl_jax.load_encoder("runs/default")   # or "minilm", a Hugging Face folder
    vectors = encoder.encode(["A man plays a guitar.", "Someone plays music."], normalize=True)
"""

from sgcl_jax.encoder import Encoder, load_encoder

__all__ = ["Encoder", "load_encoder"]
__version__ = "0.1.0"
