"""The public request bodies as pydantic models: validation, the internal request they become,
and the JSON schemas of the OpenAPI document (openapi.py).

Status codes follow OpenAI's API: every client mistake in a body, a wrong type included, is a
400 ``invalid_request_error`` whose ``param`` names the field (``messages[0].content``) and whose
``code`` says what is wrong (``invalid_type``, ``invalid_value``, ``missing_required_parameter``,
``unknown_parameter``, ...). Unknown fields are refused, at every level, as OpenAI refuses them:
a misspelt option must not silently do nothing. Types are strict (``"stream": "yes"`` is not a
boolean), as in OpenAI's API.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema,
                      model_validator)
from pydantic_core import ErrorDetails, PydanticCustomError

from .errors import APIError, bad_request
from .generation import GenerationRequest, Kind, Message, RouterOverrides

ROLES = ("system", "developer", "user", "assistant", "tool")
M = TypeVar("M", bound=BaseModel)
MAX_STOP_SEQUENCES = 4
LEGACY_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _content_text(value: Any) -> Any:
    """Content is a string or an array of parts; only text parts can be routed or served locally."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_type", "must be a string or an array of content parts")
    for j, part in enumerate(value):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise PydanticCustomError("invalid_type", "[{j}] must be an object with a 'type'", {"j": j, "at": f"[{j}]"})
        if part["type"] != "text":
            raise PydanticCustomError("unsupported_content", "part type '{type}' is not supported; only 'text'",
                                      {"type": part["type"], "at": f"[{j}].type"})
        if not isinstance(part.get("text"), str):
            raise PydanticCustomError("invalid_type", "must be a string", {"at": f"[{j}].text"})
        if set(part) - {"type", "text"}:
            raise PydanticCustomError("unknown_parameter", "unknown fields {fields}",
                                      {"fields": sorted(set(part) - {"type", "text"}), "at": f"[{j}]"})
    return value


def _stop(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOP_SEQUENCES:
            raise PydanticCustomError("invalid_value", f"may hold at most {MAX_STOP_SEQUENCES} sequences")
        return value
    raise PydanticCustomError("invalid_type", "must be a string or an array of strings")


def _single_prompt(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list):
        raise PydanticCustomError("unsupported_value", "only a single prompt (a string) is supported")
    if not isinstance(value, str):
        raise PydanticCustomError("invalid_type", "must be a string")
    return value


_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
Content = Annotated[Any, BeforeValidator(_content_text), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}, {"type": "null"}]})]
Stop = Annotated[Any, BeforeValidator(_stop), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
               {"type": "null"}]})]
Prompt = Annotated[str, BeforeValidator(_single_prompt), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ChatMessage(_Body):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: Content = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessage":
        if "content" not in self.model_fields_set and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError("missing", "is required", {"at": ".content"})
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part["text"] for part in self.content)


class RouterOptions(_Body):
    """The request extension ``router``: choose a policy or its operating point per request."""

    policy: str | None = Field(None, description="use this policy, whatever `model` says")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="strong iff score >= threshold")
    strong_share: float | None = Field(None, ge=0.0, le=1.0,
                                       description="send about this share of traffic to the strong target")

    @model_validator(mode="after")
    def _one_cut(self) -> "RouterOptions":
        if self.threshold is not None and self.strong_share is not None:
            raise PydanticCustomError("invalid_value", "give 'router.threshold' or 'router.strong_share', not both")
        return self


class FeedbackRequest(_Body):
    """``POST /v1/router/feedback``: how good an answer was, joined to its decision-log row."""

    request_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                            description="the answer's x-request-id")
    rating: float | None = Field(None, ge=0.0, le=1.0, description="the answer's quality, 0 (bad) to 1 (good)")
    thumbs: Literal["up", "down"] | None = Field(None, description="the same as a rating of 1 or 0")
    grades: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None, description="per target: how good its answer to this prompt is (e.g. from a comparison)")
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _says_something(self) -> "FeedbackRequest":
        if self.rating is None and self.thumbs is None and not self.grades:
            raise PydanticCustomError("missing_required_parameter", "give 'rating', 'thumbs' or 'grades'")
        if self.rating is not None and self.thumbs is not None:
            raise PydanticCustomError("invalid_value", "give 'rating' or 'thumbs', not both")
        return self

    @property
    def score(self) -> float | None:
        return self.rating if self.thumbs is None else float(self.thumbs == "up")


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    """Fields chat and legacy completions share. Fields listed in ``CORE`` the router acts on;
    every other field set is forwarded as sent to targets that accept it (config.TargetConfig.accepts)."""

    CORE: ClassVar[frozenset[str]] = frozenset({"model", "messages", "prompt", "max_tokens", "max_completion_tokens",
                                                "temperature", "top_p", "stop", "seed", "n", "stream",
                                                "stream_options", "router"})
    KIND: ClassVar[Kind]

    model: str = Field(min_length=1, description="`router`, `router:<policy>` or a target name (manual routing)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    router: RouterOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _single_choice(self) -> "_Generation":
        if self.n not in (None, 1):
            raise PydanticCustomError("unsupported_value", "only n=1 is supported", {"at": "n"})
        return self

    def _messages(self) -> tuple[Message, ...]:
        raise NotImplementedError

    def _budget(self) -> tuple[int | None, Literal["max_tokens", "max_completion_tokens"]]:
        return self.max_tokens, "max_tokens"

    def to_generation(self) -> GenerationRequest:
        router = self.router
        max_tokens, max_tokens_param = self._budget()
        stop = self.stop
        passthrough = {name: getattr(self, name) for name in self.model_fields_set - self.CORE}
        return GenerationRequest(
            model=self.model, kind=self.KIND, messages=self._messages(), max_tokens=max_tokens,
            max_tokens_param=max_tokens_param, temperature=self.temperature, top_p=self.top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), seed=self.seed, stream=bool(self.stream),
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            router=RouterOverrides() if router is None else
            RouterOverrides(policy=router.policy, threshold=router.threshold, strong_share=router.strong_share),
            passthrough={k: v for k, v in passthrough.items() if v is not None})


class ChatCompletionRequest(_Generation):
    """POST /v1/chat/completions."""

    KIND: ClassVar[Kind] = "chat"

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Forwarded to targets that support them (see docs/api.md).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def _messages(self) -> tuple[Message, ...]:
        return tuple(Message(m.role, m.text(), m.model_dump(exclude_unset=True)) for m in self.messages)

    def _budget(self) -> tuple[int | None, Literal["max_tokens", "max_completion_tokens"]]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Generation):
    """POST /v1/completions (legacy, a single prompt)."""

    KIND: ClassVar[Kind] = "text"

    prompt: Prompt
    max_tokens: int | None = Field(LEGACY_DEFAULT_MAX_TOKENS, ge=1)
    # Forwarded to targets that support them.
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)

    def _messages(self) -> tuple[Message, ...]:
        return (Message("user", self.prompt, {"role": "user", "content": self.prompt}),)


# --- turning pydantic's errors into OpenAI's ------------------------------------------------------
_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
          "json_invalid": "invalid_json", "recursion_loop": "invalid_json"}
_VALUE_ERRORS = ("greater_than", "less_than", "too_short", "too_long", "literal_error", "value_error",
                 "multiple_of", "enum", "string_too_short", "string_too_long", "string_pattern_mismatch")


def _param(loc: tuple[int | str, ...], suffix: str = "") -> str | None:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    text += suffix if not suffix.startswith(".") or text else suffix[1:]
    return text or None


def _code(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in _CODES:
        return _CODES[kind]
    if kind.startswith(_VALUE_ERRORS):
        return "invalid_value"
    if kind.endswith(("_type", "_parsing")) or kind in ("is_instance_of", "dataclass_type", "model_type"):
        return "invalid_type"
    return kind  # our own PydanticCustomError types: invalid_type, unsupported_content, ...


def to_api_error(exc: ValidationError) -> APIError:
    """The first problem, as OpenAI reports one: a message, the parameter's path and a code."""
    error = exc.errors(include_url=False)[0]
    ctx = error.get("ctx") or {}
    if error["type"] in ("json_invalid", "recursion_loop"):
        return bad_request(f"The request body is not valid JSON: {error['msg']}", code="invalid_json")
    if error["type"] == "model_type" and not error["loc"]:
        return bad_request("The request body must be a JSON object.", code="invalid_json")
    param = _param(error["loc"], str(ctx.get("at", "")))
    if error["type"] == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: '{param}'.", param=param,
                           code="unknown_parameter")
    if error["type"] == "missing":
        return bad_request(f"'{param}' is required.", param=param, code="missing_required_parameter")
    message = str(error["msg"]).removeprefix("Value error, ")
    return bad_request(f"Invalid '{param}': {message}." if param else f"Invalid request: {message}.", param=param,
                       code=_code(error))


def parse_body(model: type[_Generation], data: bytes) -> GenerationRequest:
    """Validate a raw generation body; every problem is an OpenAI-style 400."""
    return parse_json(model, data).to_generation()


def parse_json(model: type[M], data: bytes) -> M:
    """Validate a raw JSON body against ``model``; every problem is an OpenAI-style 400."""
    if not data.strip():
        raise bad_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise to_api_error(exc) from None
