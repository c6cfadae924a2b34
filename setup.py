"""Build and install mmlstride and its C++ extension (mmlstride._ext)."""
import glob
import os
import shutil
import subprocess
import sys
from typing import List, Sequence

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    """The version string defined in mmlstride/version.py."""
    scope: dict = {}
    with open(os.path.join(HERE, 'mmlstride', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


# Architectures built when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible
# (FORCE_CUDA=1 on a build machine): those of DEFAULT_CUDA_ARCHS, Turing to Blackwell, that
# nvcc supports, with PTX for the newest; DEFAULT_CUDA_ARCH_LIST when nvcc cannot say.
DEFAULT_CUDA_ARCHS = ('7.5', '8.0', '8.6', '8.9', '9.0', '10.0', '12.0')
DEFAULT_CUDA_ARCH_LIST = '7.5;8.0;8.6;8.9;9.0+PTX'


def default_cuda_arch_list(nvcc_archs: Sequence[str]) -> str:
    """TORCH_CUDA_ARCH_LIST for a build without a visible GPU, given the virtual architectures
    nvcc supports (``nvcc --list-gpu-arch``: compute_75, compute_80, ...): the
    DEFAULT_CUDA_ARCHS among them with +PTX on the newest, or DEFAULT_CUDA_ARCH_LIST when
    there are none (nvcc could not be asked)."""
    archs = [arch for arch in DEFAULT_CUDA_ARCHS
             if 'compute_' + arch.replace('.', '') in nvcc_archs]
    return ';'.join(archs) + '+PTX' if archs else DEFAULT_CUDA_ARCH_LIST


def nvcc_gpu_archs(nvcc: str) -> List[str]:
    """The virtual architectures that ``nvcc --list-gpu-arch`` prints, [] when it cannot run."""
    try:
        result = subprocess.run([nvcc, '--list-gpu-arch'], capture_output=True, text=True,
                                check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.split()


def build_cuda() -> bool:
    """Whether to build the CUDA kernels: when torch sees a GPU, or FORCE_CUDA=1.

    Needs a CUDA build of torch and the CUDA toolkit (CUDA_HOME), never a visible GPU.
    """
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    forced = os.getenv('FORCE_CUDA', '0') == '1'
    if not (forced or torch.cuda.is_available()):
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        if forced:
            raise RuntimeError(f'FORCE_CUDA=1 expected a CUDA build of torch and the CUDA '
                               f'toolkit; found torch.version.cuda={torch.version.cuda}, '
                               f'CUDA_HOME={CUDA_HOME}')
        return False
    runtime = [pattern for directory in ('lib64', 'lib', 'targets/x86_64-linux/lib')
               for pattern in glob.glob(os.path.join(CUDA_HOME, directory, 'libcudart.so*'))]
    if not runtime:
        raise RuntimeError(f'CUDA_HOME={CUDA_HOME} expected the CUDA toolkit (its lib64/libcudart.so '
                           'is missing): set CUDA_HOME to the toolkit directory')
    if not os.getenv('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        nvcc = os.path.join(CUDA_HOME, 'bin', 'nvcc')
        os.environ['TORCH_CUDA_ARCH_LIST'] = default_cuda_arch_list(nvcc_gpu_archs(nvcc))
    return True


def check_torch() -> None:
    """An ImportError naming the torch found and the oldest supported one (TORCH_FLOOR of
    mmlstride/torch_compat.py) when the installed torch is older."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'mmlstride_torch_compat', os.path.join(HERE, 'mmlstride', 'torch_compat.py'))
    compat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compat)
    compat.check_torch_floor()


def make_extensions():
    """The extension modules and the build_ext command that builds them.

    torch must already be installed (build with --no-build-isolation): the
    extension is compiled against the torch of the environment. The CUDA
    kernels are added when build_cuda() says so; TORCH_CUDA_ARCH_LIST picks
    the GPU architectures, as for any torch extension.
    """
    check_torch()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob('csrc/pytorch/*.cpp') + glob.glob('csrc/pytorch/cpu/*.cpp') +
                     glob.glob('csrc/pytorch/autocast/*.cpp'))
    compile_args = {'cxx': ['-O3', '-fopenmp']}
    # The C++ runtime linked dynamically, as torch links it, also where the compiler is set to
    # link it statically (-static-libstdc++, as on some CUDA images): a second, static copy
    # breaks number formatting in the messages of the errors the op raises (the number and
    # what follows go missing, or the process crashes).
    link_args = ['-fopenmp', '-lstdc++']
    if build_cuda():
        extension = CUDAExtension(
            'mmlstride._ext',
            sources + sorted(glob.glob('csrc/pytorch/cuda/*.cu')),
            define_macros=[('WITH_CUDA', None)],
            extra_compile_args={**compile_args, 'nvcc': ['-O3']},
            extra_link_args=link_args,
        )
    else:
        extension = CppExtension(
            'mmlstride._ext', sources, extra_compile_args=compile_args,
            extra_link_args=link_args)
    return [extension], {'build_ext': BuildExtension}


def read_requirements(name: str) -> list:
    """Requirement lines of requirements/<name>.txt."""
    with open(os.path.join(HERE, 'requirements', name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def add_mim_extension(copy: bool) -> None:
    """Puts the configs and tools into mmlstride/.mim, where OpenMMLab's mim and
    ``python -m mmlstride.copy_configs`` look for them: as copies (for a distribution) or as links
    (editable installs, in-place builds, so edits show)."""
    mim_dir = os.path.join(HERE, 'mmlstride', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in ('configs', 'tools'):
        source = os.path.join(HERE, name)
        target = os.path.join(mim_dir, name)
        if os.path.islink(target) or os.path.isfile(target):
            os.remove(target)
        elif os.path.isdir(target):
            shutil.rmtree(target)
        if copy:
            shutil.copytree(source, target, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            os.symlink(os.path.relpath(source, mim_dir), target)


def builds_distribution(argv: Sequence[str]) -> bool:
    """Whether the setup.py command line builds a distribution (the configs are copied in)."""
    return any(command in argv for command in
               ('bdist_wheel', 'sdist', 'install', 'build', 'bdist_egg'))


def main() -> None:
    """Builds or installs the package, as the setup.py command line asks. A distribution
    built in a checkout gets copies of the configs and tools, and the checkout its links
    back afterwards, so that an editable install there keeps following edits."""
    distribution = builds_distribution(sys.argv)
    add_mim_extension(copy=distribution)
    try:
        run_setup()
    finally:
        if distribution:
            add_mim_extension(copy=False)


def run_setup() -> None:
    """setuptools' setup() of this package."""
    ext_modules, cmdclass = make_extensions()
    setup(
        name='mmlstride',
        version=read_version(),
        description='Learnable-stride convolution (LSConv) for PyTorch, MMCV and MMDetection',
        long_description=open(os.path.join(HERE, 'README.md')).read(),
        long_description_content_type='text/markdown',
        license='Apache-2.0',
        packages=find_packages(include=['mmlstride', 'mmlstride.*']),
        package_data={'mmlstride': ['.mim/configs/*/*.py', '.mim/configs/*.md', '.mim/tools/*']},
        python_requires='>=3.9',
        install_requires=read_requirements('runtime.txt'),
        extras_require={'tests': read_requirements('tests.txt')},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


# pip and python setup.py run this file as __main__; the tests import it for its functions.
if __name__ == '__main__':
    main()
