"""Serving backends for the GPU-heavy jobs (sampling, conquer's yes/no read-out, best-of-N log-probs).

``base.py`` holds the protocol, configs and errors; ``hf.py`` today's in-process paths;
``openai_server.py`` any OpenAI-compatible server; ``vllm_engine.py`` vLLM's offline engine.
"""

from .base import (BACKENDS, Backend, BackendError, Capabilities, CapabilityError, Decoding, EndpointOptions, Generation,
                   InputRejected, VLLMOptions, YesNo, build_backend, check_backend)

__all__ = ["BACKENDS", "Backend", "BackendError", "Capabilities", "CapabilityError", "Decoding", "EndpointOptions", "Generation",
           "InputRejected", "VLLMOptions", "YesNo", "build_backend", "check_backend"]
