"""Generators behind one interface: a local causal LM prompted few-shot (base models such as the demo's Gemma; optionally
steered along the target feature), a local transformers chat model, an OpenAI-compatible HTTP endpoint (vLLM,
SGLang, hosted APIs), and deterministic templates (a recombiner of reference texts, for tests only: what it
"generates" are pasted windows of the examples, which near-copy rejection throws out).

`Generator.generate(requests)` returns one `GenerationResult` per request, in order, each with text or an error —
never raising for one failed request, so the synthesis loop can record it, retry the slot, and report it.
`--generator SPEC` picks one (`parse_generator_spec`):

    templates                      (alias: offline)
    lm[:<model folder or hub id>][?steer_alpha=0.1&temperature=0.9&shots=4&seed=0]   (no model: the verifying one)
    hf:<model folder or hub id>[?steer_alpha=4&positions=generated&max_new_tokens=128&temperature=0.7]
    openai:<base_url>?model=<name>[&key_env=VAR&concurrency=4&rps=2&timeout=60&max_retries=4&temperature=0.8]

The HTTP key is read from the environment variable `key_env` names (default OPENAI_API_KEY, which is sent only to
api.openai.com: another base URL gets a key only when the spec names key_env), sent only as a Bearer header, and
scrubbed from every error message and every completion before anything is written; it is never logged or written.
A response body over `max_completion_bytes` (default 1 MiB) is that request's error, dropped as it streams in (never
held whole, never parsed).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qscope_data.capture import LoadedModel, SteerPositions
from qscope_data.errors import UsageError, invalid
from qscope_data.synth import templates
from qscope_data.synth.fewshot import request_text, user_text
from qscope_data.synth.requests import GenerationRequest

log = logging.getLogger("qscope_data.synth.http")

OnDone = Callable[[int], None]


@dataclass
class GenerationResult:
    request_id: str
    text: str | None = None
    error: str | None = None  # why there is no text (after retries, for the HTTP generator)
    tries: int = 1
    usage: dict[str, int] | None = None  # prompt_tokens / completion_tokens, when the server reports them

    @property
    def ok(self) -> bool:
        return self.text is not None


class ChatRequest(Protocol):
    """What the chat generators (HTTP, local HF without steering) read of a request: its id and messages. Synthesis'
    `GenerationRequest` is one; other stages (feature explanations) send their own."""

    id: str
    kind: str
    messages: list[dict]


@runtime_checkable
class Generator(Protocol):
    name: str  # what provenance records, e.g. "offline", "hf:Qwen/Qwen3-8B+steer(α=4,generated)"

    def generate(self, requests: Sequence[GenerationRequest], on_done: OnDone | None = None) -> list[GenerationResult]:
        """One result per request, in order; a failure is a result with `error`, not an exception."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


def _stable_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


# -------------------------------------------------------------------------------------------------------- offline


class TemplateGenerator:
    """Deterministic template/exemplar recombination, for tests (labelled "templates"): not generation — its prompts
    are windows of the reference examples, so near-copy rejection rejects most of them.

    Prompts put pieces of the gap's top-activating reference texts into a frame in the slot's language. Attempts
    escalate, which is how the offline generator follows verification feedback: attempt 1 recombines a window of one
    example with a window of another; attempt 2 uses a whole example; later attempts whole examples in turn with a
    short frame. Rewrites wrap the prompt in a role-play or hypothetical framing, or obfuscate its letters (less on
    later attempts). Responses are a refusal (harmful categories) or the opening of a helpful answer (benign).
    """

    name = "templates"
    languages = templates.OFFLINE_LANGUAGES

    def generate(self, requests: Sequence[GenerationRequest], on_done: OnDone | None = None) -> list[GenerationResult]:
        out = []
        for req in requests:
            rng = random.Random(_stable_int(req.id))
            text = {"prompt": self._prompt, "rewrite": self._rewrite, "response": self._response}[req.kind](req, rng)
            out.append(GenerationResult(req.id, text))
            if on_done is not None:
                on_done(1)
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "templates", "name": self.name, "languages": list(templates.OFFLINE_LANGUAGES)}

    @staticmethod
    def _lang(req: GenerationRequest) -> str:
        return req.slot.lang if req.slot.lang in templates.FRAMES else "en"

    def _prompt(self, req: GenerationRequest, rng: random.Random) -> str:
        target, slot, attempt = req.slot.target, req.slot, req.attempt
        examples = [e for e in (user_text(x) for x in target.examples) if e]
        if not examples:  # no reference text fires it: the label and description are all there is
            examples = [" ".join(x for x in (target.label, target.description) if x) or target.concept]
        n = len(examples)
        primary = examples[(slot.index + attempt - 1) % n]
        if attempt == 1 and n > 1:
            content = _window(primary, rng, 0.6, 0.9) + " " + _window(examples[(slot.index + 1) % n], rng, 0.3, 0.5)
        elif attempt == 1:
            content = _window(primary, rng, 0.7, 1.0)
        else:
            content = primary
        frames = templates.FRAMES[self._lang(req)]
        frame = frames[(slot.index + 2 * attempt + _stable_int(slot.id) % len(frames)) % len(frames)]
        return frame.format(x=content, concept=target.concept)

    def _rewrite(self, req: GenerationRequest, rng: random.Random) -> str:
        variant, text = req.slot.variant, req.text or ""
        if variant == "obfuscation":
            share = 0.35 / req.attempt
            text = " ".join(w.translate(templates.LEET) if rng.random() < share else w for w in text.split(" "))
        frames = templates.REWRITES[variant][self._lang(req)]
        return rng.choice(frames).format(x=text)

    def _response(self, req: GenerationRequest, rng: random.Random) -> str:
        pool = templates.REFUSALS if req.slot.target.harmful else templates.HELPFUL
        return rng.choice(pool[self._lang(req)]).format(concept=req.slot.target.concept)


OfflineGenerator = TemplateGenerator  # the old name


def _window(text: str, rng: random.Random, lo: float, hi: float) -> str:
    """A contiguous run of `lo`–`hi` of the text's words (characters for unspaced scripts)."""
    words = text.split(" ")
    unit, joiner = (words, " ") if len(words) >= 4 else (list(text), "")
    size = max(1, round(len(unit) * rng.uniform(lo, hi)))
    start = rng.randrange(len(unit) - size + 1)
    return joiner.join(unit[start:start + size])


# ------------------------------------------------------------------------------------------- local transformers


class HFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steer_alpha: float = Field(0.0, description="α of h ← h + α·W_dec[:, target] while writing prompts (0: off)")
    positions: Literal["all", "generated"] = "generated"
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1)
    seed: int = 0


class _LocalGenerator:
    """A transformers causal LM in this process: requests are grouped by (steered feature, kind) — one steering
    direction and one generation budget per group — and generated in batches with a seed per group."""

    name: str
    lm: LoadedModel
    params: Any

    def _render(self, req: GenerationRequest) -> str:
        raise NotImplementedError

    def _steering(self, feature: int, texts: list[str]):
        raise NotImplementedError

    def _generate_kwargs(self, kind: str) -> dict[str, Any]:
        raise NotImplementedError

    def _keyword_bias(self, req: GenerationRequest) -> list[list] | None:
        """transformers `sequence_bias` toward the target's firing words for this request (None: no bias)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "model": self.lm.describe(), **self.params.model_dump()}

    def generate(self, requests: Sequence[GenerationRequest], on_done: OnDone | None = None) -> list[GenerationResult]:
        from qscope_data.synth.steering import generate

        results: dict[str, GenerationResult] = {}
        groups: dict[tuple[int | None, str], list[GenerationRequest]] = {}
        for req in requests:  # one steering direction and word bias per group; a random-baseline target (feature < 0)
            # is never steered nor biased
            steered = self.params.steer_alpha != 0 and req.kind != "response" and req.slot.target.feature >= 0
            own = steered or self._keyword_bias(req) is not None
            groups.setdefault((req.slot.target.feature if own else None, req.kind), []).append(req)
        p = self.params
        for (feature, kind), group in groups.items():
            prompts = [self._render(r) for r in group]
            seed = p.seed + _stable_int("|".join(r.id for r in group)) % (1 << 31)
            error: str | None = None
            try:
                steered = feature is not None and p.steer_alpha != 0 and kind != "response"
                steering = self._steering(feature, prompts) if steered else None
                texts = generate(self.lm, prompts, temperature=p.temperature, top_p=p.top_p, seed=seed,
                                 batch_size=p.batch_size, steering=steering, sequence_bias=self._keyword_bias(group[0]),
                                 **self._generate_kwargs(kind))
            except UsageError:
                raise
            except Exception as exc:  # e.g. out of memory: every request of the group fails, the run goes on
                texts = [None] * len(group)
                error = f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            for req, text in zip(group, texts):
                if text is None:
                    results[req.id] = GenerationResult(req.id, None, error)
                elif not text.strip():
                    results[req.id] = GenerationResult(req.id, None, "empty generation")
                else:
                    results[req.id] = GenerationResult(req.id, text.strip())
            if on_done is not None:
                on_done(len(group))
        return [results[r.id] for r in requests]


class HFChatGenerator(_LocalGenerator):
    """A local causal LM with a chat template; with `steer_alpha`, prompt and rewrite generation is steered along the
    target feature's decoder direction at the SAE's block (responses are not steered: a refusal should stay one)."""

    kind = "hf"

    def __init__(self, lm: LoadedModel, params: HFParams | None = None, *, sae=None, layer: int | None = None):
        from qscope_data.synth.steering import require_causal

        require_causal(lm)
        self.lm, self.params, self.sae, self.layer = lm, params or HFParams(), sae, layer
        if self.params.steer_alpha and (sae is None or layer is None):
            raise UsageError("hf generator: steer_alpha needs the SAE and its layer")
        self.name = f"hf:{lm.model_id}"
        if self.params.steer_alpha:
            self.name += f"+steer(α={self.params.steer_alpha:g},{self.params.positions})"
        self._steering_cache: dict[int, Any] = {}

    def _render(self, req: GenerationRequest) -> str:
        from qscope_data.synth.steering import render_chat

        return render_chat(self.lm.tokenizer, req.messages)

    def _steering(self, feature: int, texts: list[str]):
        from qscope_data.synth.steering import feature_steering

        if feature not in self._steering_cache:
            self._steering_cache[feature] = feature_steering(self.lm, self.sae, self.layer, feature,
                                                             self.params.steer_alpha, self.params.positions)
        return self._steering_cache[feature]

    def _generate_kwargs(self, kind: str) -> dict[str, Any]:
        return {"max_new_tokens": self.params.max_new_tokens}


class FewShotParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steer_alpha: float = Field(0.0, description="h ← h + α·s·d̂ while writing requests, d̂ the target feature's unit "
                                                "decoder direction, s the block's median residual norm (0: off)")
    positions: Literal["all", "generated"] = "generated"
    shots: int = Field(4, ge=0, description="reference examples in each few-shot prompt")
    max_new_tokens: int = Field(40, ge=1, description="budget of one request (generation stops at the line's end)")
    response_tokens: int = Field(48, ge=1, description="budget of one response")
    temperature: float = Field(0.9, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.2, gt=0.0, description="a base model loops without it")
    penalize_prompt: bool = Field(False, description="also penalise a request for the prompt's tokens (transformers' "
                                                     "default; off: the shots' words are the concept's, and penalising "
                                                     "them pushes the model off the topic). Responses always are")
    keyword_bias: float = Field(0.0, ge=0.0, description="logit bonus for the words the target fires on in its "
                                                         "examples (synth.keywords) while writing requests (0: off)")
    batch_size: int = Field(8, ge=1)
    seed: int = 0


class FewShotLMGenerator(_LocalGenerator):
    """A local causal LM without instruction tuning, prompted with plain-text few-shot lists
    (`qscope_data.synth.fewshot`): one line of continuation is one candidate. Sampled with a seed per request group;
    with `steer_alpha` the request lines are written with the target feature's direction added at the SAE's block."""

    kind = "lm"

    def __init__(self, lm: LoadedModel, params: FewShotParams | None = None, *, sae=None, layer: int | None = None):
        from qscope_data.synth.steering import require_causal

        require_causal(lm)
        self.lm, self.params, self.sae, self.layer = lm, params or FewShotParams(), sae, layer
        if self.params.steer_alpha and (sae is None or layer is None):
            raise UsageError("lm generator: steer_alpha needs the SAE and its layer")
        self.name = f"lm:{lm.model_id}"
        if self.params.steer_alpha:
            self.name += f"+steer(α={self.params.steer_alpha:g}×median‖h‖,{self.params.positions})"
        self.scale: float | None = None  # the block's median residual norm, measured on the first steered prompts
        self._bias_cache: dict[tuple[str, ...], list[list] | None] = {}  # firing words → sequence_bias (tokenised once)

    def _render(self, req: GenerationRequest) -> str:
        return request_text(req, self.params.shots)

    def _steering(self, feature: int, texts: list[str]):
        from qscope_data.synth.steering import feature_direction, residual_scale, scaled_steering

        if self.scale is None:
            self.scale = residual_scale(self.lm, self.layer, texts[:8])  # type: ignore[arg-type]
        return scaled_steering(self.lm, self.layer, feature_direction(self.sae, feature),  # type: ignore[arg-type]
                               self.params.steer_alpha, self.scale, self.params.positions)

    def _generate_kwargs(self, kind: str) -> dict[str, Any]:
        p = self.params
        return {"max_new_tokens": p.response_tokens if kind == "response" else p.max_new_tokens,
                "repetition_penalty": p.repetition_penalty, "stop_at_newline": True, "add_special_tokens": True,
                # a request may reuse its shots' words (they are the concept's); a response should not copy a shot
                "penalize_prompt": p.penalize_prompt or kind == "response"}

    def _keyword_bias(self, req: GenerationRequest) -> list[list] | None:
        """For each firing phrase ("cheat on", "a fake"): the first token of its longest word (with and without a
        leading space) gets `keyword_bias`, and so do that word's and the phrase's full token sequences once begun —
        the model is nudged to name the concept, in its own sentence."""
        target = req.slot.target
        if not self.params.keyword_bias or req.kind != "prompt" or target.feature < 0 or not target.keywords:
            return None
        if target.keywords not in self._bias_cache:  # asked per request (grouping) and per group: tokenise once
            self._bias_cache[target.keywords] = self._sequence_bias(target.keywords)
        return self._bias_cache[target.keywords]

    def _sequence_bias(self, phrases: tuple[str, ...]) -> list[list] | None:
        seqs: dict[tuple[int, ...], None] = {}
        for phrase in phrases:
            word = max(phrase.split(), key=len)
            for form in (word, " " + word, phrase, " " + phrase):
                ids = tuple(self.lm.tokenizer(form, add_special_tokens=False)["input_ids"])
                if ids:
                    seqs[ids] = None
                    if form.strip() == word:
                        seqs[ids[:1]] = None
        return [[list(ids), self.params.keyword_bias] for ids in seqs] or None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "residual_scale": self.scale}


# ------------------------------------------------------------------------------------------------ OpenAI-compatible


class OpenAIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(4, ge=1, le=1024)
    timeout: float = Field(60.0, gt=0, description="seconds per HTTP request")
    max_retries: int = Field(4, ge=0, description="retries after the first try (429, 5xx, timeouts, connection errors)")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles each retry, with jitter")
    max_backoff: float = Field(30.0, ge=0, description="cap of one delay, Retry-After included")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    max_completion_bytes: int = Field(1 << 20, ge=1, description="a longer response body is refused, not parsed")
    seed: int | None = None
    rps: float | None = Field(None, gt=0, description="client-side rate limit: at most this many request starts per second")


RETRY_STATUS = {408, 409, 425, 429}
OPENAI_HOST = "api.openai.com"


class OpenAIGenerator:
    """POST {base_url}/chat/completions, at most `concurrency` requests in flight, each retried with exponential
    backoff and jitter on 429 / 5xx / timeouts / connection errors (a server's Retry-After is honoured, up to
    `max_backoff`), then reported as that request's error."""

    def __init__(self, base_url: str, params: OpenAIParams, *, require_key: bool = False):
        parts = check_base_url(base_url)
        path = parts.path.rstrip("/") or "/v1"
        self.base_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.url = self.base_url + "/chat/completions"
        self.params = params
        # A key goes only where it was configured for: the default OPENAI_API_KEY only to OpenAI's own host; any
        # other base URL gets a key only when the spec names its variable (key_env=…).
        named = require_key or "key_env" in params.model_fields_set
        default_ok = named or (parts.hostname or "").lower() == OPENAI_HOST
        self._key = (os.environ.get(params.key_env) or None) if default_ok else None
        if self._key is None and require_key:
            raise UsageError(f"openai generator: environment variable {params.key_env} is not set (it holds the API key)")
        self.name = f"openai:{params.model}@{self.base_url}"
        self._rng = random.Random(params.seed if params.seed is not None else 0)

    def describe(self) -> dict[str, Any]:
        p = self.params.model_dump()
        p["key"] = "set" if self._key else "none"  # never the key itself
        return {"kind": "openai", "name": self.name, "url": self.url, **p}

    def scrub_key(self, text: str) -> str:
        """`text` with the configured key replaced by *** (for generated text: a server that echoes it)."""
        return text.replace(self._key, "***") if self._key else text

    def scrub(self, text: str) -> str:
        """`text` with the API key (and any Bearer token) replaced by ***."""
        if self._key:
            text = text.replace(self._key, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    # -- public -------------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest], on_done: OnDone | None = None) -> list[GenerationResult]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_all(list(requests), on_done))
        box: dict[str, Any] = {}  # called from inside an event loop (a notebook): run ours in a thread

        def run() -> None:
            try:
                box["out"] = asyncio.run(self._generate_all(list(requests), on_done))
            except BaseException as exc:  # re-raised in the caller's thread
                box["err"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    # -- internals ----------------------------------------------------------------------------------------------
    async def _generate_all(self, requests: list[ChatRequest], on_done: OnDone | None) -> list[GenerationResult]:
        import httpx

        p = self.params
        limits = httpx.Limits(max_connections=p.concurrency, max_keepalive_connections=p.concurrency)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        sem = asyncio.Semaphore(p.concurrency)
        pace = _Pace(p.rps)

        async def one(client: httpx.AsyncClient, req: ChatRequest) -> GenerationResult:
            async with sem:
                result = await self._call(client, req, pace)
            if on_done is not None:
                on_done(1)
            return result

        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(p.timeout)) as client:
            return list(await asyncio.gather(*(one(client, r) for r in requests)))

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {"model": p.model, "messages": req.messages, "temperature": p.temperature,
                                "max_tokens": p.max_tokens, "n": 1}
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = (p.seed + _stable_int(req.id)) % (1 << 31)
        return body

    async def _call(self, client, req: ChatRequest, pace: "_Pace") -> GenerationResult:
        import httpx

        p = self.params
        body = self._body(req)
        error = "not tried"
        for attempt in range(p.max_retries + 1):
            retry_after: float | None = None
            await pace.wait()
            try:
                resp, size = await _post_bounded(client, self.url, body, req.id, p.max_completion_bytes)
            except httpx.TimeoutException:
                error, retryable = f"timeout after {p.timeout:g} s", True
            except httpx.TransportError as exc:
                error, retryable = f"connection error: {type(exc).__name__}: {exc}", True
            else:
                if resp.status_code == 200 and size is not None:
                    error, retryable = f"response of {size} bytes exceeds max_completion_bytes={p.max_completion_bytes:,}", False
                elif resp.status_code == 200:
                    text, problem = _completion_text(resp)
                    if text is not None:  # scrubbed before anything can write it
                        return GenerationResult(req.id, self.scrub_key(text), tries=attempt + 1, usage=_usage(resp))
                    error, retryable = problem or "no text", False
                else:
                    snippet = " ".join(resp.text.split())[:200]
                    error = f"HTTP {resp.status_code}" + (f": {snippet}" if snippet else "")
                    retryable = resp.status_code in RETRY_STATUS or resp.status_code >= 500
                    retry_after = _retry_after(resp.headers.get("retry-after"))
            error = self.scrub(error)
            if not retryable or attempt == p.max_retries:
                if retryable:
                    error = f"{error} (gave up after {attempt + 1} tries)"
                log.warning("request %s failed: %s", req.id, error)
                return GenerationResult(req.id, None, error, tries=attempt + 1)
            delay = min(p.backoff * (2 ** attempt), p.max_backoff) * (0.5 + self._rng.random() / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, p.max_backoff))
            log.info("request %s: %s; retry %d/%d in %.2f s", req.id, error, attempt + 1, p.max_retries, delay)
            await asyncio.sleep(delay)
        return GenerationResult(req.id, None, error, tries=p.max_retries + 1)  # not reached


async def _post_bounded(client, url: str, body: dict, request_id: str, limit: int):
    """POST `body` and read at most `limit` bytes of the answer: (the response, None), or (the response without its
    body, the size refused) — an over-long body is dropped as it streams in, never held whole (a 30 MB completion
    once cost 5.4 GB)."""
    import httpx

    chunks: list[bytes] = []
    refused: str | None = None
    async with client.stream("POST", url, json=body, headers={"X-Client-Request-Id": request_id}) as resp:
        read = 0
        async for chunk in resp.aiter_bytes():  # decoded: the limit is on what would be parsed
            read += len(chunk)
            if read > limit:
                length = resp.headers.get("content-length", "")
                refused, chunks = (f"{int(length):,}" if length.isdigit() else f"more than {limit:,}"), []
                break
            chunks.append(chunk)
    kept = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-encoding", "content-length",
                                                                         "transfer-encoding")]  # the body is decoded
    return httpx.Response(resp.status_code, headers=kept, content=b"".join(chunks), request=resp.request), refused


def _completion_text(resp) -> tuple[str | None, str | None]:
    try:
        data = resp.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, "malformed chat-completions response"
    if not isinstance(content, str) or not content.strip():
        return None, "empty completion"
    return content.strip(), None


def _usage(resp) -> dict[str, int] | None:
    """The response's token counts (`usage.prompt_tokens` / `completion_tokens`), when it reports them."""
    try:
        usage = resp.json().get("usage") or {}
        return {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens") if k in usage} or None
    except (ValueError, TypeError, AttributeError):
        return None


class _Pace:
    """Spaces request starts at least 1/rps seconds apart across all concurrent requests (no limit when rps is None)."""

    def __init__(self, rps: float | None):
        self.interval = 1.0 / rps if rps else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------------------------------------------ spec


class GeneratorSpec(BaseModel):
    kind: Literal["templates", "lm", "hf", "openai"]
    target: str | None = None  # model path / id (hf) or base URL (openai)
    params: dict[str, str] = Field(default_factory=dict)


def check_base_url(base_url: str):
    """An OpenAI-compatible base URL: http(s) with a host, and no credentials in it (the parsed URL)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"openai generator: base URL {base_url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise UsageError("openai generator: put the API key in the environment variable named by key_env, "
                         "not in the URL")
    return parts


def parse_generator_spec(spec: str) -> GeneratorSpec:
    """`templates` | `lm[:<model>][?k=v&…]` | `hf:<model>[?k=v&…]` | `openai:<base_url>?model=<name>[&k=v…]`
    (see the module docstring)."""
    spec = spec.strip()
    if spec in ("templates", "offline"):
        return GeneratorSpec(kind="templates")
    if spec == "lm" or spec.startswith("lm?"):  # the verifying model itself
        spec = "lm:" + spec[2:]
    kind, sep, rest = spec.partition(":")
    if kind == "lm" and sep and not rest:
        rest = "?"
    if not sep or kind not in ("lm", "hf", "openai") or not rest:
        raise UsageError(f"--generator {spec!r}: expected templates, lm[:<model>][?…], hf:<model>[?…] or "
                         "openai:<base_url>?model=<name>[&…]")
    target, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise UsageError(f"--generator: parameter {key!r} given twice")
        params[key] = value
    if not target and kind != "lm":  # lm without a model: the verifying one
        raise UsageError(f"--generator {spec!r}: no {'model' if kind == 'hf' else 'base URL'} after '{kind}:'")
    if kind == "openai":
        check_base_url(target)  # so `qscope validate` refuses what the run would
    return GeneratorSpec(kind=kind, target=target, params=params)


def _params(model: type[BaseModel], spec: GeneratorSpec) -> Any:
    try:
        return model.model_validate(spec.params)
    except ValidationError as exc:
        raise invalid(exc, f"--generator {spec.kind}", hint=f"; its parameters: {', '.join(model.model_fields)}") from None


def build_generator(
    spec: str | GeneratorSpec,
    *,
    lm: LoadedModel | None = None,
    sae=None,
    layer: int | None = None,
    device: str = "cpu",
    dtype=None,
) -> Generator:
    """The generator a spec names. `lm` is the verifying model: an `hf:` spec naming the same model reuses it
    (loaded once); `sae`/`layer` are what steering adds the target feature's direction from."""
    spec = parse_generator_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "templates":
        if spec.params:
            raise UsageError(f"--generator templates takes no parameters (got {', '.join(spec.params)})")
        return TemplateGenerator()
    if spec.kind == "openai":
        params = _params(OpenAIParams, spec)
        return OpenAIGenerator(spec.target or "", params, require_key="key_env" in spec.params)
    from qscope_data.capture import load_model

    params = _params(FewShotParams if spec.kind == "lm" else HFParams, spec)  # before loading anything
    if spec.kind == "lm" and not spec.target:
        if lm is None:
            raise UsageError("--generator lm: no model named and no verifying model to reuse")
        gen_lm = lm
    else:
        same = lm is not None and _same_model(spec.target or "", lm.model_id)
        gen_lm = lm if same else load_model(spec.target or "", device=device, dtype=dtype, causal=None)
    if spec.kind == "lm":
        return FewShotLMGenerator(gen_lm, params, sae=sae, layer=layer)
    return HFChatGenerator(gen_lm, params, sae=sae, layer=layer)


def _same_model(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) if os.path.exists(a) and os.path.exists(b) else a == b


__all__ = [
    "ChatRequest", "Generator", "GenerationResult", "TemplateGenerator", "OfflineGenerator", "HFChatGenerator",
    "HFParams", "FewShotLMGenerator", "FewShotParams", "OpenAIGenerator",
    "OpenAIParams", "GeneratorSpec", "parse_generator_spec", "build_generator", "SteerPositions",
]
