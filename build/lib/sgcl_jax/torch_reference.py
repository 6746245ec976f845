"""The released code's training step, ported to modern PyTorch eager: the one reference that the float64 oracle
test checks our step against and that `bench --torch` times (so the benchmark's baseline is the checked one).

What the release does, kept here: two `BertModel`s (the guide BERT_F frozen, in train mode like everything the
release's fit() touches), BERT_T's embeddings frozen, every hidden state of the guide mean-pooled over real
tokens into views, one projection head (Linear-GELU-Linear-GELU, N(0, initializer_range) weights, zero biases)
on [CLS] and on the views, SG-OPT with cosine similarity, the regulariser as a Python loop over named
parameters, `clip_grad_norm_(1.0)`, AdamW with decay off for biases and LayerNorm weights, and the linear
warm-up / decay schedule with ceil(10%) warm-up steps. Only torch and transformers are imported (lazily).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sgcl_jax.bert import BertConfig


class ReleasedStep:
    """One SG-OPT training setup in PyTorch; `step(batch)` runs one optimizer step and returns the losses."""

    def __init__(self, cfg: BertConfig, guide_state: dict[str, np.ndarray] | None = None,
                 head_kernels: tuple[np.ndarray, np.ndarray] | None = None, *, head_dim: int = 4096,
                 tau: float = 0.01, lam: float = 0.1, lr: float = 5e-5, warmup_ratio: float = 0.1,
                 total_steps: int = 1000, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.9),
                 eps: float = 1e-6, clip_norm: float = 1.0, dtype: str = "float32", device: str | None = None,
                 seed: int = 0):
        import torch
        from transformers import BertConfig as HFConfig
        from transformers import BertModel, get_linear_schedule_with_warmup

        if dtype not in ("float64", "float32", "bfloat16"):
            raise ValueError(f"dtype {dtype!r}: float64, float32 or bfloat16 (autocast over fp32 weights)")
        self.torch, self.dtype, self.tau, self.lam, self.clip_norm = torch, dtype, tau, lam, clip_norm
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        param_dtype = torch.float64 if dtype == "float64" else torch.float32
        torch.manual_seed(seed)
        hf = HFConfig(**cfg.to_hf_dict())
        self.bert_f = BertModel(hf, add_pooling_layer=False).to(self.device, param_dtype)
        self.bert_t = BertModel(hf, add_pooling_layer=False).to(self.device, param_dtype)
        if guide_state is not None:
            state = {k: torch.from_numpy(np.asarray(v)).to(param_dtype) for k, v in guide_state.items()}
            self.bert_f.load_state_dict(state)
        self.bert_t.load_state_dict(self.bert_f.state_dict())
        for p in [*self.bert_f.parameters(), *self.bert_t.embeddings.parameters()]:
            p.requires_grad = False
        d = cfg.hidden_size
        nn = torch.nn
        self.head = nn.Sequential(nn.Linear(d, head_dim), nn.GELU(), nn.Linear(head_dim, head_dim), nn.GELU()
                                  ).to(self.device, param_dtype)
        with torch.no_grad():
            for i, layer in enumerate((self.head[0], self.head[2])):
                if head_kernels is None:
                    layer.weight.normal_(0.0, cfg.initializer_range)
                else:  # our kernels are (in, out); torch's weights (out, in)
                    layer.weight.copy_(torch.from_numpy(np.asarray(head_kernels[i]).T).to(param_dtype))
                layer.bias.zero_()
        self.named = [(n, p) for n, p in [*self.bert_t.named_parameters(), *self.head.named_parameters()]
                      if p.requires_grad]
        no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
        self.opt = torch.optim.AdamW([
            {"params": [p for n, p in self.named if not any(x in n for x in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in self.named if any(x in n for x in no_decay)], "weight_decay": 0.0}],
            lr=lr, betas=betas, eps=eps)
        warmup = math.ceil(round(warmup_ratio * total_steps, 6))
        self.sched = get_linear_schedule_with_warmup(self.opt, warmup, total_steps)
        self.bert_f.train()
        self.bert_t.train()

    def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Host arrays -> long tensors on the device."""
        return {k: self.torch.from_numpy(np.asarray(v)).long().to(self.device) for k, v in batch.items()}

    def step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimizer step on a batch (host arrays or `to_device` tensors); losses as 0-d tensors (no sync)."""
        torch = self.torch
        if isinstance(next(iter(batch.values())), np.ndarray):
            batch = self.to_device(batch)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")
        with autocast:
            with torch.no_grad():
                hidden = self.bert_f(**batch, output_hidden_states=True).hidden_states
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
                views = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden], 1)  # (b, L+1, d)
            fc, fh = self.head(self.bert_t(**batch).last_hidden_state[:, 0]), self.head(views)
        real = torch.float64 if self.dtype == "float64" else torch.float32
        fc, fh = fc.to(real), fh.to(real)
        b, k = fh.shape[:2]
        sim = torch.nn.functional.cosine_similarity(fc[:, None, None, :], fh[None], dim=-1) / self.tau  # (b, b, K)
        pos = sim[torch.arange(b), torch.arange(b)]
        own = torch.eye(b, dtype=torch.bool, device=self.device)[:, :, None].expand(b, b, k)
        neg = torch.logsumexp(sim.masked_fill(own, float("-inf")).reshape(b, -1), 1)
        objective = (torch.logaddexp(pos, neg[:, None]) - pos).mean()
        reg = 0.0
        for (_, pt), (_, pf) in zip(self.bert_t.named_parameters(), self.bert_f.named_parameters(), strict=True):
            reg = reg + torch.sum((pt - pf) ** 2)
        loss = objective + self.lam * reg
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.named], self.clip_norm)
        self.opt.step()
        self.sched.step()
        return {"objective": objective.detach(), "loss": loss.detach()}

    def trained_state(self) -> dict[str, np.ndarray]:
        """BERT_T's state dict as NumPy (Hugging Face names)."""
        return {k: v.detach().cpu().numpy() for k, v in self.bert_t.state_dict().items()}

    def head_kernels(self) -> tuple[np.ndarray, np.ndarray]:
        """The head's two weight matrices in our (in, out) layout."""
        return tuple(layer.weight.detach().cpu().numpy().T for layer in (self.head[0], self.head[2]))

    def synchronize(self) -> None:
        """Waits for queued device work (CUDA) before a clock stops."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
