"""Build script: the `assigndet` package, its method projects, and the `assigndet._C` extension.

The extension is compiled from `csrc/`: the C++ (CPU) sources always, the CUDA sources when torch
was built with CUDA and nvcc is found (or when FORCE_CUDA=1). Set ASSIGNDET_NO_EXTENSION=1 to skip
it; the library then runs on its pure-PyTorch references.

Build with the torch you run with: `pip install --no-build-isolation .` (or `-e .`). Under build
isolation torch is not importable at build time, the extension is skipped with a warning, and the
package still works through the references.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def _set_cuda_home_from_nvcc() -> None:
    """Point CUDA_HOME at the toolkit of the `nvcc` on PATH when that nvcc is a wrapper script.

    torch takes CUDA_HOME as the parent of nvcc's folder; for a wrapper such as /usr/local/bin/nvcc
    that folder has no CUDA headers or libraries, and the C++ sources and the link step fail.
    nvcc's dry run prints the real toolkit root.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    beside = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include", "cuda_runtime.h")
    if os.path.isfile(beside):
        return
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = os.path.normpath(line[len("#$ TOP=") :].strip())
            if os.path.isfile(os.path.join(top, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = top
            return


def _extension_modules():
    if _env_flag("ASSIGNDET_NO_EXTENSION"):
        print(
            "assigndet: ASSIGNDET_NO_EXTENSION is set; building without assigndet._C",
            file=sys.stderr,
        )
        return [], {}
    _set_cuda_home_from_nvcc()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print(
            "assigndet: torch is not importable at build time; building without assigndet._C "
            "(install with `pip install --no-build-isolation .` to compile it)",
            file=sys.stderr,
        )
        return [], {}

    csrc = os.path.join(ROOT, "csrc")
    cpp_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    with_cuda = _env_flag("FORCE_CUDA") or (
        torch.version.cuda is not None and CUDA_HOME is not None
    )
    if _env_flag("ASSIGNDET_NO_CUDA"):
        with_cuda = False

    define_macros = []
    # No -std flag: BuildExtension adds the standard the installed torch needs (C++20 for torch
    # >= 2.10, C++17 before). No FMA contraction: the NMS IoU must round like torchvision's.
    extra_compile_args = {"cxx": ["-O3", "-ffp-contract=off"]}
    if with_cuda and cuda_sources:
        extension_cls = CUDAExtension
        sources = cpp_sources + cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "--expt-relaxed-constexpr",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            # No device to query: compile for the common data-centre and consumer architectures.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;9.0"
    else:
        extension_cls = CppExtension
        sources = cpp_sources
    extra_compile_args["cxx"].append("-fopenmp")
    ext = extension_cls(
        "assigndet._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=[csrc],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=_env_flag("USE_NINJA"))}


ext_modules, cmdclass = _extension_modules()

setup(
    packages=find_packages(include=["assigndet", "assigndet.*"])
    + ["assigndet.projects"]
    + [f"assigndet.projects.{p}" for p in find_packages(where="projects")],
    package_dir={"assigndet.projects": "projects"},
    package_data={"assigndet": ["model_zoo/configs/**/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
