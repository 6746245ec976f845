"""The JAX train step against a float64 PyTorch re-implementation of the released code's step
(two BertModels, mean-pooled guide views, shared head, SG-OPT, regulariser, clipping, AdamW, schedule)."""

from __future__ import annotations

import jax
import numpy as np
import torch
from transformers import BertConfig as HFConfig
from transformers import BertModel

from sgcl_jax.bert import BertConfig
from sgcl_jax.model import ModelSpec
from sgcl_jax.pretrained import random_pretrained, state_dict_from_params
from sgcl_jax.tokenization import tokenize
from sgcl_jax.train_step import ObjectiveConfig, OptimConfig, create_train_state, jit_train_step

STEPS, LR, WARMUP = 5, 1e-3, 0.4
SENTENCES = ["a man plays a guitar", "the cat sits on the mat", "dogs run fast in the park", "hello world",
             "rain falls on the roof tonight", "I like green tea"]


def _torch_run(cfg, guide, head0, batch):
    hf = HFConfig(**cfg.to_hf_dict())
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in state_dict_from_params(guide).items()}
    bert_f, bert_t = (BertModel(hf, add_pooling_layer=False).double() for _ in range(2))
    bert_f.load_state_dict(sd)
    bert_t.load_state_dict(sd)
    for p in [*bert_f.parameters(), *bert_t.embeddings.parameters()]:
        p.requires_grad = False
    d, hd = cfg.hidden_size, head0["dense_0"]["kernel"].shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(d, hd), torch.nn.GELU(), torch.nn.Linear(hd, hd),
                               torch.nn.GELU()).double()
    with torch.no_grad():
        for i, name in ((0, "dense_0"), (2, "dense_1")):
            head[i].weight.copy_(torch.from_numpy(np.asarray(head0[name]["kernel"], np.float64).T))
            head[i].bias.zero_()
    named = [(n, p) for n, p in [*bert_t.named_parameters(), *head.named_parameters()] if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight")
    opt = torch.optim.AdamW([
        {"params": [p for n, p in named if not any(x in n for x in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if any(x in n for x in no_decay)], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.9), eps=1e-6)
    warm = int(WARMUP * STEPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else (STEPS - s) / (STEPS - warm))
    tb = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    losses = []
    for _ in range(STEPS):
        with torch.no_grad():
            hs = bert_f(**tb, output_hidden_states=True).hidden_states
            m = tb["attention_mask"].unsqueeze(-1).double()
            h = torch.stack([(x * m).sum(1) / m.sum(1) for x in hs], 1)
        fc, fh = head(bert_t(**tb).last_hidden_state[:, 0]), head(h)
        b, k = fh.shape[:2]
        sim = torch.nn.functional.cosine_similarity(fc[:, None, None, :], fh[None], dim=-1) / 0.01
        pos = sim[torch.arange(b), torch.arange(b)]
        own = torch.eye(b, dtype=torch.bool)[:, :, None].expand(b, b, k)
        neg = torch.logsumexp(sim.masked_fill(own, float("-inf")).reshape(b, -1), 1)
        objective = (torch.logaddexp(pos, neg[:, None]) - pos).mean()
        reg = sum(torch.sum((pt - pf) ** 2) for (_, pt), (_, pf) in
                  zip(bert_t.named_parameters(), bert_f.named_parameters(), strict=True))
        opt.zero_grad()
        (objective + 0.1 * reg).backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        sched.step()
        losses.append(objective.item())
    return losses, {k: v.numpy() for k, v in bert_t.state_dict().items()}, head[2].weight.detach().numpy()


def test_step_matches_pytorch_port():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    pre = random_pretrained(cfg, 0)
    spec = ModelSpec(cfg, head_dim=64, guide_dropout=False)
    tx, step = jit_train_step(spec, ObjectiveConfig(), OptimConfig(lr=LR, warmup_ratio=WARMUP), STEPS)
    state = create_train_state(spec, pre.params, tx, 0)
    head0 = jax.tree.map(np.asarray, state.params["head"])
    batch = tokenize(pre.tokenizer, SENTENCES, 32)
    ours = []
    for _ in range(STEPS):
        state, metrics = step(state, pre.params, batch)
        ours.append(float(metrics["objective"]))
    theirs, torch_sd, torch_head = _torch_run(cfg, pre.params, head0, batch)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours_sd = state_dict_from_params({"embeddings": pre.params["embeddings"], "encoder": state.params["encoder"]})
    assert max(float(np.abs(ours_sd[k] - torch_sd[k]).max()) for k in ours_sd) < 1e-5
    assert np.abs(np.asarray(state.params["head"]["dense_1"]["kernel"]).T - torch_head).max() < 1e-5
    assert ours[-1] < 0.5 * ours[0]  # the parameters really moved
