"""The runtime: build directory -> trained adapter, merged model, evaluation."""

import logging as _logging

# bitsandbytes, imported by peft on every run, warns on CPUs with AVX512-BF16 that it could not fetch an
# optional 4-bit kernel from the hub ("pip install kernels"): offline and without a 4-bit model it is
# noise that reads like an error. Only that message is dropped.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage())
