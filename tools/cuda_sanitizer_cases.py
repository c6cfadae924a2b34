"""Small LSConv calls that launch every CUDA kernel of the op and every backward variant,
for compute-sanitizer (tools/cuda_check.sh runs it under memcheck, racecheck, synccheck and
initcheck): in each dtype, the forward, then backwards asking for one gradient at a time
(input by the atomic scatter and by the deterministic gather, weight, stride, stride and
phase) and for all of them, and one call large enough that a tile takes several blocks.
Each result is compared with the pure-PyTorch implementation in float64 on the CPU, so a
kernel that runs clean but wrong also fails. Runs on the CPU too (``--device cpu``), which checks the script itself.

    compute-sanitizer --tool memcheck python tools/cuda_sanitizer_cases.py
"""
import argparse
import sys
from typing import Callable, Dict, List, Sequence

import torch

from mmlstride.ops import ls_conv2d_reference
from mmlstride.testing import Case, compiled_op, norm_relative_error, random_case

# Worst norm-relative error against the float64 reference, as in tests/cuda/test_cuda.py.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3,
             torch.bfloat16: 3e-2}

# The gradients one backward asks for, by the leaves that require them.
GRADIENT_SETS = {
    'input': ('input',),
    'weight': ('weight',),
    'stride': ('stride',),
    'stride+phase': ('stride', 'phase'),
    'all': ('input', 'weight', 'bias', 'stride', 'phase'),
}


def large_case(dtype: torch.dtype) -> Case:
    """A call whose tiles span several blocks of threads (about 40 000 column elements)."""
    gen = torch.Generator().manual_seed(1)
    return Case(input=torch.randn(2, 8, 40, 36, generator=gen, dtype=dtype),
                weight=torch.randn(6, 8, 3, 3, generator=gen, dtype=dtype),
                stride=torch.tensor([1.7320508076, 1.3247179572], dtype=dtype),
                bias=torch.randn(6, generator=gen, dtype=dtype), padding=(1, 1),
                dilation=(1, 1), groups=1, output_size=(22, 27),
                phase=torch.tensor([0.3, -0.45], dtype=dtype))


def run(function: Callable[..., torch.Tensor], case: Case, wanted: Sequence[str],
        dtype: torch.dtype, device: str) -> Dict[str, torch.Tensor]:
    """The output and the gradients named in ``wanted`` of ``function(*case.args())`` run in
    ``dtype`` on ``device`` (stride and phase in float32 for float16/bfloat16), as float64 on
    the CPU."""
    on_device = case.to(dtype, device)
    leaves = {'input': on_device.input, 'weight': on_device.weight, 'bias': on_device.bias,
              'stride': on_device.stride, 'phase': on_device.phase}
    for name, leaf in leaves.items():
        if leaf is not None:
            leaf.requires_grad_(name in wanted)
    asked = [name for name in wanted if leaves[name] is not None]
    out = function(*on_device.args())
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                              dtype=torch.float64).to(out.dtype).to(device)
    grads = torch.autograd.grad(out, [leaves[name] for name in asked], grad_output) if asked else []
    results = {'output': out}
    results.update(('grad_' + name, grad) for name, grad in zip(asked, grads))
    return {key: value.detach().to('cpu', torch.float64) for key, value in results.items()}


def check(label: str, case: Case, wanted: Sequence[str], dtype: torch.dtype, device: str,
          deterministic: bool = False) -> List[str]:
    """Runs one call of the op and returns the failures against the reference (none: [])."""
    torch.use_deterministic_algorithms(deterministic)
    try:
        found = run(compiled_op, case, wanted, dtype, device)
    finally:
        torch.use_deterministic_algorithms(False)
    expected = run(ls_conv2d_reference, case, wanted, torch.float64, 'cpu')
    failures = []
    for key, value in expected.items():
        error = norm_relative_error(found[key], value)
        if not error < TOLERANCE[dtype]:
            failures.append(f'{label} {key}: error {error:.2e} > {TOLERANCE[dtype]:.0e}')
    return failures


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    args = parser.parse_args(argv)
    # Full float32 products, as the tolerances assume (cuDNN's default would be TF32).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dtypes = [torch.float32, torch.float64]
    if args.device != 'cpu':
        dtypes += [torch.float16, torch.bfloat16]
    failures: List[str] = []
    calls = 0
    for dtype in dtypes:
        name = str(dtype).removeprefix('torch.')
        case = random_case(3, phase=True)
        for wanted_name, wanted in GRADIENT_SETS.items():
            failures += check(f'{name} {wanted_name}', case, wanted, dtype, args.device)
            calls += 1
        failures += check(f'{name} input (deterministic gather)', case, ('input',), dtype,
                          args.device, deterministic=True)
        failures += check(f'{name} several blocks', large_case(torch.float64),
                          GRADIENT_SETS['all'], dtype, args.device)
        calls += 2
    if args.device != 'cpu':
        torch.cuda.synchronize()
    for failure in failures:
        print('FAILED', failure)
    print(f'{calls} calls on {args.device}, {len(failures)} failures')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
