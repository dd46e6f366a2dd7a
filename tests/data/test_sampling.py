import torch
from torch.utils.data import DataLoader, Dataset

from transferlab.data.sampling import EpochShuffle, SeededSamples


class Noise(Dataset):
    """Each item is a random draw, standing in for a random augmentation."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return i, torch.rand(1).item()


def epoch_batches(epoch, workers=0, seed=7):
    sampler = EpochShuffle(6, seed, current_epoch=lambda: epoch)
    loader = DataLoader(SeededSamples(Noise(), seed), batch_size=2, sampler=sampler,
                        num_workers=workers)
    return [(i.tolist(), x.tolist()) for i, x in loader]


def test_order_and_augmentation_depend_only_on_seed_epoch_and_sample():
    torch.manual_seed(1)
    first = epoch_batches(3)
    torch.manual_seed(2)  # a different global stream changes nothing
    torch.rand(100)
    assert epoch_batches(3) == first
    assert epoch_batches(3, workers=2) == first
    assert epoch_batches(4) != first
    assert epoch_batches(3, seed=8) != first


def test_each_epoch_is_a_permutation_and_samples_leave_the_global_stream_alone():
    indices = [i for batch, _ in epoch_batches(0) for i in batch]
    assert sorted(indices) == list(range(6))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SeededSamples(Noise(), 7)[(2, 0)]
    assert torch.equal(torch.rand(3), expected)
