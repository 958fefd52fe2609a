"""Fine-tune the base encoder (all-MiniLM-L6-v2): as a 2-class sequence classifier (label 1 = the
strong model is needed), or as a mean-pooled 3-class router head (weak better / tie / strong
better, the ensemble head's classifier branch). Plain PyTorch loop, sized for a small CPU box."""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from export.data import RoutingSet

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    # Defaults sized for `make export` on a 2-core CPU (~10 min): on MMLU, 2 epochs at 64 tokens
    # (val APGR 0.653) beat 1 epoch at 128 tokens (0.641, and slower); the subject, which carries
    # most of the routing signal, shows in the first tokens.
    epochs: int = 2
    max_length: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    # Embeddings + the first N transformer layers stay frozen: less backward work on CPU.
    freeze_layers: int = 0
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_layers(model: Any, n: int) -> None:
    """Keep the first ``n`` transformer layers of a BERT-style encoder, or of the encoder under a
    classification head, in place (0: all of them). Its output is then the lower layer's, for n/6
    of MiniLM-L6's compute; on the routing data lower layers vote better on MMLU and worse across
    task types (docs/router-quality.md)."""
    if n == 0:
        return
    base = getattr(model, model.base_model_prefix, model)
    layers = base.encoder.layer
    if not 1 <= n <= len(layers):
        raise ValueError(f"the encoder has {len(layers)} layers; cannot keep {n}")
    base.encoder.layer = layers[:n]
    model.config.num_hidden_layers = n


def load_base(base_model: Path) -> tuple[Any, Any]:
    """Tokenizer and a fresh 2-label classification head on the local base encoder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model),
        num_labels=2,
        id2label={0: "weak_ok", 1: "strong_needed"},
        label2id={"weak_ok": 0, "strong_needed": 1},
        local_files_only=True,
    )
    return tokenizer, model


def token_lengths(tokenizer: Any, prompts: Sequence[str]) -> np.ndarray:
    """Untruncated token counts (special tokens included)."""
    return np.asarray([len(ids) for ids in tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]])


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length prompts: far less padding, same randomness across epochs."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(encoded: dict[str, list[list[int]]], index: Sequence[int], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(encoded["input_ids"][i]) for i in index)
    batch: dict[str, Any] = {}
    for key, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in encoded:
            rows = [encoded[key][i] + [pad] * (width - len(encoded[key][i])) for i in index]
            batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def _freeze(model: Any, layers: int) -> None:
    if layers <= 0:
        return
    base = getattr(model, model.base_model_prefix, model)  # a classifier's encoder, or a bare encoder
    for param in base.embeddings.parameters():
        param.requires_grad = False
    for layer in base.encoder.layer[:layers]:
        for param in layer.parameters():
            param.requires_grad = False


def train_classifier(
    tokenizer: Any, model: Any, data: RoutingSet, opts: TrainOptions, log: Log = print
) -> list[dict[str, float]]:
    """Fine-tunes the 2-class ``model`` in place (left in eval mode); returns the per-epoch history."""
    import torch

    labels = torch.tensor(data.labels, dtype=torch.long)
    return _fit(tokenizer, model, [model], data.prompts, lambda batch, index: model(**batch, labels=labels[index]).loss,
                opts, log)


# ce3 classes: the strong model's score minus the weak one's, as a class (0 weak better, 1 tie, 2 strong better)
CE3_CLASSES = ("weak_better", "tie", "strong_better")


def ce3_classes(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    return (np.sign(np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64)) + 1).astype(np.int64)


def new_ce3_head(hidden_size: int, seed: int) -> Any:
    """The classifier branch's head: dropout + linear over the mean-pooled encoder output -> 3 logits."""
    import torch

    seed_everything(seed)
    return torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(hidden_size, len(CE3_CLASSES)))


def train_ce3(tokenizer: Any, encoder: Any, head: Any, prompts: Sequence[str], classes: np.ndarray,
              opts: TrainOptions, log: Log = print) -> list[dict[str, float]]:
    """Fine-tunes ``encoder`` + ``head`` in place with cross-entropy on the 3 classes; the score is
    P(strong better) - P(weak better), what APGR rewards (a 3-class objective beat soft-label and
    binary BCE in the fine-tuning study: docs/router-quality.md)."""
    import torch

    target = torch.tensor(classes, dtype=torch.long)

    def loss(batch: dict[str, Any], index: list[int]) -> Any:
        pooled = _mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.cross_entropy(head(pooled), target[index])

    return _fit(tokenizer, encoder, [encoder, head], prompts, loss, opts, log)


def _mean_pool(hidden: Any, mask: Any) -> Any:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _fit(tokenizer: Any, encoder: Any, modules: list[Any], prompts: Sequence[str], loss_of: Callable[..., Any],
         opts: TrainOptions, log: Log) -> list[dict[str, float]]:
    """AdamW, linear warm-up then decay, length-grouped shuffled batches; ``loss_of(batch, index)``
    is the batch's mean loss. Modules are left in eval mode."""
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(max(1, opts.threads))
    seed_everything(opts.seed)
    _freeze(encoder, opts.freeze_layers)
    encoded = tokenizer(list(prompts), truncation=True, max_length=opts.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]

    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr
    )
    steps_per_epoch = math.ceil(len(prompts) / opts.batch_size)
    total = max(1, steps_per_epoch * opts.epochs)
    warmup = int(total * opts.warmup_ratio)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(opts.seed)
    history: list[dict[str, float]] = []
    for m in modules:
        m.train()
    for epoch in range(1, opts.epochs + 1):
        started, running, seen = time.monotonic(), 0.0, 0
        bar = tqdm(length_grouped_batches(lengths, opts.batch_size, rng), desc=f"epoch {epoch}/{opts.epochs}",
                   unit="batch", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 15.0)
        for index in bar:
            loss = loss_of(_collate(encoded, index, tokenizer.pad_token_id), index)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False)
        bar.close()
        history.append({"epoch": epoch, "loss": running / seen, "seconds": round(time.monotonic() - started, 1)})
        log(f">> epoch {epoch}: mean loss {running / seen:.4f} ({history[-1]['seconds']:.0f} s)")
    for m in modules:
        m.eval()
    return history


def _predict_batched(tokenizer: Any, prompts: Sequence[str], max_length: int, width: int, batch_size: int,
                     forward: Any) -> np.ndarray:
    """Run ``forward(batch) -> tensor [b, width]`` over length-sorted batches; rows in prompt order."""
    import torch

    encoded = tokenizer(list(prompts), truncation=True, max_length=max_length)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded["input_ids"][i]))
    out = np.zeros((len(prompts), width), dtype=np.float32)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="embedding (PyTorch)", unit="batch",
                          disable=len(order) <= 4 * batch_size):
            index = order[start : start + batch_size]
            out[index] = forward(_collate(encoded, index, tokenizer.pad_token_id)).float().numpy()
    return out


def predict_logits(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """PyTorch logits [n, 2], batched by similar length (order preserved)."""
    return _predict_batched(tokenizer, prompts, max_length, model.config.num_labels, batch_size,
                            lambda batch: model(**batch).logits)


def load_encoder(base_model: Path) -> tuple[Any, Any]:
    """Tokenizer and the bare base encoder (sentence embeddings by mean pooling, no head)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    return tokenizer, AutoModel.from_pretrained(str(base_model), local_files_only=True).eval()


def predict_embeddings(encoder: Any, tokenizer: Any, prompts: Sequence[str], max_length: int,
                       batch_size: int = 64) -> np.ndarray:
    """PyTorch mean-pooled (attention-masked) last hidden states [n, dim], order preserved."""

    return _predict_batched(tokenizer, prompts, max_length, encoder.config.hidden_size, batch_size,
                            lambda batch: _mean_pool(encoder(**batch).last_hidden_state.float(), batch["attention_mask"]))
