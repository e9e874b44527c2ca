"""PyInstaller hook for llama-cpp-python, which ships no hook of its own.

llama_cpp loads its shared libraries with ctypes from `llama_cpp/lib/lib<name>.so` (`.dylib`,
`.dll`), so no import analysis finds them. The wheel's lib folder holds each library three times
on Linux (`libllama.so`, the soname `libllama.so.0` and `libllama.so.0.5.0`, real copies, not
links): keep the name ctypes opens and the soname the others link against (RUNPATH $ORIGIN),
and leave the fully versioned copy out.
"""

import re

from PyInstaller.utils.hooks import collect_dynamic_libs

# libmtmd (multimodal projectors) is loaded only by llava chat handlers, which the app never uses.
UNUSED = re.compile(r"\.so\.\d+\.\d+|mtmd")

binaries = [(source, target) for source, target in collect_dynamic_libs("llama_cpp")
            if not UNUSED.search(source)]
