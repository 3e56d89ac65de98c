"""Self-supervised recovery: distil the pruned model against the unpruned one on unlabelled text.

The teacher's own hidden states are the targets (every layer's output and the final output,
real tokens only), plus the cosine of the mean-pooled output (what parity judges); for
classifiers, its class probabilities too. No labels anywhere.

What was measured (embedded BERT, 30% pruned, 300 steps, held-out cosine of the artifact):
hidden states only at 5e-5 on 512 cycled texts 0.945; 2e-4 with the pooled term 0.948; the same
on every calibration text (3,151, each seen about 1.5 times) 0.962: the student over-fits a small
corpus, so recovery draws from all the calibration text there is. Weighting the pooled term
tenfold against the hidden states gave 0.936: matching every layer generalises better.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from optimize.runtimes.base import Feeds
from optimize.training import describe, release, training_failed

LEARNING_RATE = 2e-4
#: a fine-tuned classifier drifts from its task at the encoder's rate: the embedded BERT fine-tuned
#: on Rotten Tomatoes, 50% pruned and fitted (test accuracy 0.8425, source 0.8485), read 0.8380
#: after 600 steps at 2e-4 and 0.8515 at 5e-5
CLASSIFIER_LEARNING_RATE = 5e-5
#: weight of (1 - cosine of mean-pooled outputs) beside the per-layer hidden-state terms
POOLED_WEIGHT = 1.0
#: classifiers: the teacher's logits are distilled at this temperature (Hinton et al. 2015), the
#: KL scaled by its square so its gradients keep their size; softened probabilities carry how the
#: teacher ranks the wrong classes, not only its decision
TEMPERATURE = 2.0
#: weight of that KL term against the hidden-state terms: for a classifier the logits are the task
LOGIT_WEIGHT = 4.0


def distil(
    student: Any, teacher: Any, batches: Callable[[int], Iterator[Feeds]], steps: int, *, classifier: bool,
    progress: Callable[[int, float], None] | None = None,
    parameter_groups: list[dict[str, Any]] | None = None,
    layer_map: list[int] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``student`` towards ``teacher`` for ``steps`` batches; ``parameter_groups`` (torch
    optimizer groups with their own learning rates) default to every parameter at LEARNING_RATE.
    ``layer_map[k]``: the teacher layer whose output the student's layer k is trained towards
    (default: the same index; layers dropped from the student skip theirs). ``device``: where the
    training runs (a torch device name); both modules are back on the CPU when it returns."""
    try:
        student.to(device)
        teacher.to(device)
        return _train(student, teacher, batches, steps, classifier, progress, parameter_groups, layer_map, device)
    except Exception as exc:
        failure = training_failed(device, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        release(device, student, teacher)


def _train(
    student: Any, teacher: Any, batches: Callable[[int], Iterator[Feeds]], steps: int, classifier: bool,
    progress: Callable[[int, float], None] | None, parameter_groups: list[dict[str, Any]] | None,
    layer_map: list[int] | None, device: str,
) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    student.train()
    for name, module in student.named_modules():  # no dropout: the student must match, not regularise
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rate = CLASSIFIER_LEARNING_RATE if classifier else LEARNING_RATE
    groups = parameter_groups or [{"params": [p for p in student.parameters() if p.requires_grad], "lr": rate}]
    optimizer = torch.optim.AdamW(groups, lr=rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20) * max(0.0, 1 - step / steps))
    started, done, losses, epoch = time.perf_counter(), 0, [], 0
    while done < steps:
        epoch += 1
        for feeds in batches(epoch):
            if done >= steps:
                break
            tensors = {k: torch.from_numpy(v).long().to(device) for k, v in feeds.items()}
            mask = tensors["attention_mask"].unsqueeze(-1).float()
            with torch.no_grad():
                want = teacher(**tensors, output_hidden_states=True, return_dict=True)
            got = student(**tensors, output_hidden_states=True, return_dict=True)
            loss = 0.0
            wanted = want.hidden_states[1:] if layer_map is None else [want.hidden_states[1 + j] for j in layer_map]
            for h_got, h_want in zip(got.hidden_states[1:], wanted, strict=True):
                scale = h_want.pow(2).mul(mask).sum() / mask.sum() / h_want.shape[-1]
                loss = loss + ((h_got - h_want).pow(2) * mask).sum() / mask.sum() / h_want.shape[-1] / scale
            pooled_got = (got.hidden_states[-1] * mask).sum(1) / mask.sum(1)
            pooled_want = (want.hidden_states[-1] * mask).sum(1) / mask.sum(1)
            loss = loss + POOLED_WEIGHT * (1 - torch.nn.functional.cosine_similarity(pooled_got, pooled_want, dim=-1)).mean()
            if classifier:
                loss = loss + LOGIT_WEIGHT * TEMPERATURE**2 * torch.nn.functional.kl_div(
                    (got.logits / TEMPERATURE).log_softmax(-1), (want.logits / TEMPERATURE).softmax(-1), reduction="batchmean"
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimizer.step()
            schedule.step()
            done += 1
            losses.append(float(loss.detach()))
            if progress:
                progress(done, losses[-1])
    student.eval()
    return {
        "steps": steps,
        "learning_rate": [g["lr"] for g in groups] if parameter_groups else rate,
        "epochs": epoch,
        "loss_first": float(f"{sum(losses[:10]) / max(1, len(losses[:10])):.4g}"),
        "loss_last": float(f"{sum(losses[-10:]) / max(1, len(losses[-10:])):.4g}"),
        "seconds": round(time.perf_counter() - started, 1),
        "device": describe(device),
    }
