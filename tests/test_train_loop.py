"""The training loop's pieces on constructed cases: gradient accumulation, the validation Dice rule."""

import numpy as np
import pytest
import torch
from torch import nn

from vmunet.config import TrainConfig
from vmunet.evaluation.metrics import case_metrics
from vmunet.evaluation.metrics import summarize_cases
from vmunet.runtime.distributed import DistInfo, EpochSampler
from vmunet.train import train_one_epoch, validate


class Samples(torch.utils.data.Dataset):
    """(1, 2, 2) images with a per-sample target: what train_one_epoch and validate iterate."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def mse(output, target):  # a mean over samples, so one batch of all a group's samples is well defined
    return ((output - target) ** 2).mean()


@pytest.mark.parametrize("samples, batch_size, accumulate, max_steps", [
    (9, 2, 3, None),  # 5 steps (the last of 1 sample): groups of 6 and 3 samples
    (12, 2, 4, 5),  # max_steps_per_epoch 5: groups of 8 and 2 samples
])
def test_accumulation_equals_one_big_batch_per_group_also_for_a_short_last_group(samples, batch_size, accumulate,
                                                                                  max_steps):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(samples, 1, 2, 2, generator=generator)
    targets = torch.randn(samples, 1, 2, 2, generator=generator)
    dataset = Samples(images, targets)
    config = TrainConfig(batch_size=batch_size, accumulate=accumulate, max_steps_per_epoch=max_steps, seed=3,
                         epochs=1)
    torch.manual_seed(0)
    network = nn.Conv2d(1, 1, 1)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    sampler = EpochSampler(samples, config.seed)
    train_one_epoch(network, dataset, sampler, mse, optimizer, None, config, torch.device("cpu"), 0, False,
                    DistInfo())

    # The same samples in the same order, one SGD step per group on the whole group at once.
    reference = nn.Conv2d(1, 1, 1)
    reference.load_state_dict(start)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    sampler.set_epoch(0)
    order = list(sampler)
    used = len(order) if max_steps is None else min(len(order), max_steps * batch_size)
    group = batch_size * accumulate
    updates = 0
    for first in range(0, used, group):
        chosen = order[first:min(first + group, used)]
        reference_optimizer.zero_grad()
        mse(reference(images[chosen]), targets[chosen]).backward()
        reference_optimizer.step()
        updates += 1
    assert updates == 2 and used % group  # the constructed case has a short last group
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(network.state_dict()[key], value, rtol=1e-5, atol=1e-6)


class FixedLabels(nn.Module):
    """Logits that predict the given label map for every image (whatever the input)."""

    def __init__(self, labels: np.ndarray, num_classes: int):
        super().__init__()
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).permute(2, 0, 1).float()
        self.register_buffer("logits", one_hot * 10)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_validation_dice_and_evaluate_leave_out_a_class_absent_from_truth_and_prediction():
    """Three foreground classes; class 3 is in neither the truth nor the prediction. One selection image, so the
    pooled validation Dice and evaluate's per-image mean are the same number when both leave class 3 out (with
    class 3 counted as 0 the validation Dice was two thirds of it)."""
    truth = np.zeros((8, 8), dtype=np.int64)
    truth[:4, :4], truth[4:, 4:] = 1, 2
    prediction = np.zeros((8, 8), dtype=np.int64)
    prediction[:4, :3], prediction[4:, 3:] = 1, 2
    num_classes = 4
    model = FixedLabels(prediction, num_classes)
    dataset = Samples(torch.zeros(1, 1, 8, 8), torch.as_tensor(truth)[None])
    config = TrainConfig(batch_size=1, seed=0)
    loss = nn.CrossEntropyLoss()
    _, val_dice = validate(model, dataset, loss, config, torch.device("cpu"), num_classes, progress=False)

    row = case_metrics("images", prediction, {"label": truth, "case_id": "a"}, num_classes, 1.0)
    assert np.isnan(row["dice"][2])  # evaluate: class 3 is not in this image
    summary = summarize_cases([row], ["background", "one", "two", "three"])
    dice_1, dice_2 = 2 * 12 / (12 + 16), 2 * 16 / (20 + 16)
    assert summary["mean_dice"] == pytest.approx((dice_1 + dice_2) / 2)
    assert val_dice == pytest.approx(summary["mean_dice"], abs=1e-12)


def test_a_selection_set_without_any_class_gives_an_undefined_dice_not_zero():
    truth = np.zeros((4, 4), dtype=np.int64)
    model = FixedLabels(truth, 3)
    dataset = Samples(torch.zeros(2, 1, 4, 4), torch.as_tensor(truth).expand(2, -1, -1))
    _, val_dice = validate(model, dataset, nn.CrossEntropyLoss(), TrainConfig(batch_size=2), torch.device("cpu"),
                           3, progress=False)
    assert np.isnan(val_dice)
