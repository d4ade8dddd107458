"""Mini-batch training of a small torch head with per-epoch history; the best validation epoch wins.

Shared by the MLP and the attentive probe. History entries: {epoch, train_loss, val_loss, train_top1,
val_top1}. The head's weights at the chosen epoch are kept (early stopping on validation). The model
and each batch live on the probe device; losses are means by `ops.cross_entropy`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .ops import cross_entropy
from .progress import SILENT


def _evaluate(model, x, y, prepare, chunk=1024):
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            logits.append(model(prepare(x[start:start + chunk])))
    logits = torch.cat(logits)
    if y is None:
        return logits
    return float(cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train_epochs(model, splits, prepare, params: dict, seed: int, progress=SILENT):
    """Train on splits.train, score splits.val after each epoch; return (best epoch, {epoch: val top1},
    history, test probabilities of the best epoch's weights). `prepare` puts a batch on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=params["learning_rate"],
                                  weight_decay=params.get("weight_decay", 0.0))
    device = next(model.parameters()).device
    x, y = splits.train.x, torch.as_tensor(splits.train.y, device=device).long()
    y_val = torch.as_tensor(splits.val.y, device=device).long()
    history, best_state, best_epoch, best_score = [], None, 0, -1.0
    for epoch in range(1, params["epochs"] + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator).numpy()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), params["batch_size"]):
            progress.update((epoch - 1 + start / len(x)) / params["epochs"], f"epoch {epoch}/{params['epochs']}")
            rows = np.sort(order[start:start + params["batch_size"]])
            logits = model(prepare(x[rows]))
            loss = cross_entropy(logits, y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(rows)
            correct += int((logits.argmax(1) == y[rows]).sum())
        val_loss, val_top1 = _evaluate(model, splits.val.x, y_val, prepare)
        history.append({"epoch": epoch, "train_loss": loss_sum / len(x), "val_loss": val_loss,
                        "train_top1": correct / len(x), "val_top1": val_top1})
        if val_top1 > best_score:
            best_state, best_epoch, best_score = copy.deepcopy(model.state_dict()), epoch, val_top1
    model.load_state_dict(best_state)
    test_probs = _evaluate(model, splits.test.x, None, prepare).softmax(1).cpu().numpy()
    validation = {f"epoch={h['epoch']}": h["val_top1"] for h in history}
    return best_epoch, validation, history, test_probs
