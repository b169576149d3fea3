"""Builds resjax's one compiled piece, the oneDNN convolution (resjax/kernels).

Everything else about the package is in pyproject.toml. On x86-64 Linux the
build environment holds jaxlib (for the XLA FFI headers) and
onednn-devel-cpu-gomp (oneDNN's headers and libdnnl); the extension links
libdnnl.so.3, which resjax loads at run time from the onednn-cpu-gomp
package. The extension is optional: where it cannot be built (another
platform, no C++ compiler, headers missing) the install goes on and resjax
uses XLA's convolution (resjax.kernels.onednn.unavailable_reason says why).
"""
import importlib.metadata
import importlib.util
import os
import platform
import sys

from setuptools import Extension, setup


def _located(dist: str, suffix: str) -> str | None:
  """The installed file of distribution `dist` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.files(dist) or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).replace(os.sep, "/").endswith(suffix):
      return str(f.locate())
  return None


def _extensions() -> list[Extension]:
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return []
  spec = importlib.util.find_spec("jaxlib")
  ffi = os.path.join(os.path.dirname(spec.origin), "include") if spec and spec.origin else ""
  dnnl_hpp = _located("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  libdnnl = _located("onednn-cpu-gomp", "lib/libdnnl.so.3")
  if dnnl_hpp and not (libdnnl and os.path.exists(libdnnl)):
    # Both packages install into one prefix: <prefix>/include, <prefix>/lib.
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(dnnl_hpp))))
    libdnnl = os.path.join(prefix, "lib", "libdnnl.so.3")
  found = {"jaxlib's xla/ffi/api/ffi.h": os.path.exists(os.path.join(ffi, "xla", "ffi", "api", "ffi.h")),
           "oneDNN's dnnl.hpp": bool(dnnl_hpp and os.path.exists(dnnl_hpp)),
           "libdnnl.so.3": bool(libdnnl and os.path.exists(libdnnl))}
  if not all(found.values()):
    missing = ", ".join(k for k, v in found.items() if not v)
    print(f"resjax: {missing} not found at build time (looked at {ffi}, {dnnl_hpp}, "
          f"{libdnnl}); the oneDNN convolution is not built (XLA's is used)", file=sys.stderr)
    return []
  jaxlib_version = importlib.metadata.version("jaxlib")
  return [Extension(
      "resjax.kernels._onednn_conv",
      sources=["resjax/kernels/onednn_conv.cc"],
      include_dirs=[os.path.dirname(os.path.dirname(os.path.dirname(dnnl_hpp))), ffi],
      define_macros=[("RESJAX_JAXLIB_VERSION", f'"{jaxlib_version}"')],
      extra_compile_args=["-std=c++17", "-O2", "-w"],
      extra_objects=[libdnnl],  # Recorded as its soname, libdnnl.so.3.
      libraries=["gomp", "stdc++"],
      # Non-editable installs into a virtual environment: <env>/lib holds
      # onednn-cpu-gomp's libdnnl.so.3. resjax also preloads it by path.
      runtime_library_dirs=["$ORIGIN/../../../../../lib"],
      language="c++",
      optional=True,
  )]


setup(ext_modules=_extensions())
