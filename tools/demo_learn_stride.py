"""Demonstration: an LSConv layer learns the stride that produced its targets.

A teacher LSConv2d with a known fractional stride makes targets from smooth
random images; a student with the same weights starts at the nominal stride 2
and learns only its stride by gradient descent. Runs on built-in synthetic data.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from mmlstride.ops import LSConv2d


def smooth_images(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random images made of a few low-frequency waves (batch, 3, size, size)."""
    coords = torch.arange(size, dtype=torch.float32)
    h, w = coords.view(-1, 1), coords.view(1, -1)
    images = torch.zeros(batch, 3, size, size)
    for _ in range(4):
        freq = torch.rand(batch, 3, 2, generator=generator) * 0.3
        phase = torch.rand(batch, 3, 1, 1, generator=generator) * 6.28
        images += torch.sin(freq[..., 0, None, None] * h + freq[..., 1, None, None] * w + phase)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--target-stride', type=float, nargs=2, default=(1.62, 2.47))
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--lr', type=float, default=0.01)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = LSConv2d(3, 16, 3, stride=2, padding=1)
    student = LSConv2d(3, 16, 3, stride=2, padding=1)
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        teacher.learnable_stride.copy_(torch.tensor(args.target_stride))
    optimizer = torch.optim.Adam([student.learnable_stride], lr=args.lr)

    print(f'teacher stride (s_h, s_w) = {tuple(args.target_stride)}; student starts at '
          f'{tuple(student.learnable_stride.tolist())} and learns its stride only')
    print(f'{"step":>5} {"loss":>10} {"s_h":>8} {"s_w":>8}')
    start = time.perf_counter()
    for step in range(args.steps + 1):
        images = smooth_images(8, 64, generator)
        with torch.no_grad():
            target = teacher(images)
        loss = F.mse_loss(student(images), target)
        if step % 20 == 0:
            s_h, s_w = student.learnable_stride.tolist()
            print(f'{step:>5} {loss.item():>10.5f} {s_h:>8.4f} {s_w:>8.4f}', flush=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    error = (student.learnable_stride - teacher.learnable_stride).abs().max().item()
    print(f'learned stride {tuple(round(v, 4) for v in student.learnable_stride.tolist())}, '
          f'max error {error:.2e}, {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
