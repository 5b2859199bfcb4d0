"""The shared SAE base: one config dataclass and one ``nn.Module`` that every architecture extends.

Parameter names and shapes follow SAELens, so a state dict moves between the two unchanged:
``W_enc (d_in, d_sae)``, ``b_enc (d_sae)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in)``; each
architecture adds its own (``threshold``, ``b_gate``/``b_mag``/``r_mag``).

Every encode runs in three steps that subclasses share: ``normalize`` (input normalisation, see
:class:`NormState`), ``encode_normalized`` (architecture-specific), and ``decode_normalized``
followed by ``denormalize``. Interventions and subset encoders use the same pieces, so they see
exactly the numbers the dense path sees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from sae.errors import SAEFormatError

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")
_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"torch.bfloat16"`` or a ``torch.dtype`` → ``torch.dtype`` (clear error)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in _DTYPES:
        raise SAEFormatError(f"unknown dtype {dtype!r}", hint=f"use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (the spelling SAELens writes in cfg.json)."""
    return str(dtype).removeprefix("torch.")


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE and know where it reads; no unknown keys accepted.

    Fields:
        d_in: width of the activation the SAE reads (the model's hidden size for resid hooks).
        d_sae: number of features (dictionary size).
        architecture: registry key: ``standard`` (ReLU), ``jumprelu``, ``topk`` or ``gated``.
            BatchTopK SAEs are stored and loaded as ``jumprelu`` (as SAELens exports them).
        dtype: parameter dtype as a string (``float32``, ``bfloat16``, ...).
        device: device the parameters were created on (``cpu``, ``cuda:0``).
        apply_b_dec_to_input: subtract ``b_dec`` from the (normalised) input before encoding.
        normalize_activations: input normalisation before encoding, undone after decoding:
            ``none``; ``constant_norm_rescale`` (scale each token to norm sqrt(d_in));
            ``layer_norm`` (subtract the token mean, divide by its std + 1e-5);
            ``expected_average_only_in`` (multiply by the fixed ``norm_scaling_factor``).
        norm_scaling_factor: the factor for ``expected_average_only_in`` (required there, and
            only there). :func:`sae.loading.save_sae` folds it into the weights, because
            SAELens configs have no field for it.
        hook_name: where the SAE reads, e.g. ``blocks.15.hook_resid_post`` (see ``sae.hooks``).
        model_name: the model the SAE was trained on (informational, checked by preflight users).
        k: number of active features for ``topk`` (required there, rejected elsewhere).
        rescale_acts_by_decoder_norm: ``topk`` only: rank pre-activations multiplied by the
            decoder row norms, and divide by them again before decoding (SAELens semantics).
        metadata: free-form JSON-able dict saved as SAELens ``metadata`` (context_size,
            prepend_bos, dataset_path, our training metrics under ``metadata["eval"]`` ...).
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    hook_name: str | None = None
    model_name: str | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SAEFormatError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        self.dtype = dtype_name(parse_dtype(self.dtype))
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEFormatError(
                f"unknown normalize_activations {self.normalize_activations!r}",
                hint=f"use one of {', '.join(NORMALIZATIONS)}",
            )
        needs_factor = self.normalize_activations == "expected_average_only_in"
        if needs_factor and self.norm_scaling_factor is None:
            raise SAEFormatError(
                "normalize_activations 'expected_average_only_in' needs norm_scaling_factor",
                hint="set it, or fold the factor into the weights and use 'none'",
            )
        if not needs_factor and self.norm_scaling_factor is not None:
            raise SAEFormatError("norm_scaling_factor is only used with expected_average_only_in")
        if self.architecture == "topk":
            if self.k is None or int(self.k) <= 0 or int(self.k) > self.d_sae:
                raise SAEFormatError(f"topk SAE needs 0 < k <= d_sae, got k={self.k}")
            self.k = int(self.k)
        elif self.k is not None:
            raise SAEFormatError(
                f"k is only meaningful for architecture 'topk', not {self.architecture!r}",
                hint="record it in metadata instead",
            )
        elif self.rescale_acts_by_decoder_norm:
            raise SAEFormatError("rescale_acts_by_decoder_norm is only supported for 'topk'")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> SAEConfig:
        """Build a config from a dict; unknown keys raise :class:`SAEFormatError` naming them."""
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise SAEFormatError(
                f"{source}: unknown SAE config key(s) {unknown}",
                hint=f"known keys: {', '.join(cls.field_names())}",
            )
        missing = [k for k in ("d_in", "d_sae") if k not in d]
        if missing:
            raise SAEFormatError(f"{source}: missing required key(s) {missing}")
        return cls(**{**d, "metadata": dict(d.get("metadata") or {})})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)


class NormState(NamedTuple):
    """How an input was normalised: ``x_n = (x - shift) * mul_in``.

    Undone by ``y * mul_out + shift``.

    Each is a float or a ``(..., 1)`` tensor (``shift`` may be ``None``). ``mul_out`` is
    ``1 / mul_in`` except for ``layer_norm``, which (like SAELens and OpenAI) multiplies back by
    the std without the epsilon. A change ``delta`` made in normalised space is ``delta * mul_out``
    in the model's space.
    """

    mul_in: torch.Tensor | float
    mul_out: torch.Tensor | float
    shift: torch.Tensor | None


IDENTITY_NORM = NormState(1.0, 1.0, None)


def normalize_input(x: torch.Tensor, cfg: SAEConfig) -> tuple[torch.Tensor, NormState]:
    """Apply ``cfg.normalize_activations`` to ``x (..., d_in)`` (no dtype change).

    Shared by :class:`SAE` and :class:`sae.encode.SubsetEncoder` so both run the same ops.
    """
    mode = cfg.normalize_activations
    if mode == "none":
        return x, IDENTITY_NORM
    if mode == "expected_average_only_in":
        s = float(cfg.norm_scaling_factor or 1.0)
        return x * s, NormState(s, 1.0 / s, None)
    if mode == "constant_norm_rescale":
        norm = x.norm(dim=-1, keepdim=True)  # (..., 1)
        scale = (cfg.d_in**0.5) / norm
        return x * scale, NormState(scale, norm / (cfg.d_in**0.5), None)
    mu = x.mean(dim=-1, keepdim=True)  # (..., 1)  layer_norm
    xc = x - mu
    std = xc.std(dim=-1, keepdim=True)  # (..., 1)
    return xc / (std + 1e-5), NormState(1.0 / (std + 1e-5), std, mu)


class SAE(nn.Module):
    """Base of every architecture: parameters, normalisation, encode/decode/forward.

    Subclasses set ``architecture``, extend :meth:`param_shapes` and implement
    :meth:`encode_normalized`. Input of any leading shape ``(..., d_in)`` is accepted.
    """

    architecture: ClassVar[str] = ""
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_enc: nn.Parameter  # every architecture but gated
    # Set by sae.loading.load_sae: where the SAE came from (None for one built in memory).
    source_path: Path | None = None
    source_format: str | None = None
    weights_file: Path | None = None

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if cfg.architecture != self.architecture:
            raise SAEFormatError(
                f"config says architecture {cfg.architecture!r}, class is {self.architecture!r}"
            )
        self.cfg = cfg
        for name, shape in self.param_shapes(cfg).items():
            tensor = torch.zeros(shape, dtype=cfg.torch_dtype, device=cfg.device)
            self.register_parameter(name, nn.Parameter(tensor))

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name → shape of every parameter this architecture has (asserted by the loaders)."""
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    # ---- normalisation -------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """``(..., d_in)`` in any dtype → the SAE-dtype normalised input and how to undo it."""
        return normalize_input(x.to(self.W_enc.dtype), self.cfg)

    @staticmethod
    def denormalize(y: torch.Tensor, norm: NormState) -> torch.Tensor:
        """Undo :meth:`normalize` on a reconstruction ``(..., d_in)``."""
        if norm is IDENTITY_NORM:
            return y
        y = y * norm.mul_out
        return y if norm.shift is None else y + norm.shift

    def sae_input(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised input → what multiplies ``W_enc``: ``x_n - b_dec`` if configured."""
        return x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n

    # ---- encode / decode -----------------------------------------------------------------
    def hidden_pre(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., d_in)`` → pre-activations ``(..., d_sae)``."""
        return self.sae_input(x_n) @ self.W_enc + self.b_enc

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., d_in)`` → feature activations ``(..., d_sae)``."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``(..., d_in)`` → feature activations ``(..., d_sae)`` in the SAE dtype."""
        return self.encode_normalized(self.normalize(x)[0])

    def decoder_directions(self) -> torch.Tensor:
        """``(d_sae, d_in)``: what one unit of feature i adds to the normalised reconstruction."""
        return self.W_dec

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """Features ``(..., d_sae)`` → reconstruction ``(..., d_in)`` in normalised space."""
        return f @ self.W_dec + self.b_dec

    def decode(self, f: torch.Tensor, norm: NormState | None = None) -> torch.Tensor:
        """Features ``(..., d_sae)`` → reconstruction ``(..., d_in)``.

        Per-token normalisations (``constant_norm_rescale``, ``layer_norm``) need the
        ``NormState`` of the input; use :meth:`forward` or pass ``norm``.
        """
        if norm is None:
            if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                raise ValueError(
                    f"decode() of a {self.cfg.normalize_activations} SAE needs the input's "
                    "NormState: call forward(x) or decode(f, norm=sae.normalize(x)[1])"
                )
            s = float(self.cfg.norm_scaling_factor or 1.0)
            norm = IDENTITY_NORM if s == 1.0 else NormState(s, 1.0 / s, None)
        return self.denormalize(self.decode_normalized(f), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``(..., d_in)`` → reconstruction ``(..., d_in)`` (SAE dtype)."""
        x_n, norm = self.normalize(x)
        return self.denormalize(self.decode_normalized(self.encode_normalized(x_n)), norm)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        return f"d_in={c.d_in}, d_sae={c.d_sae}, hook={c.hook_name!r}, dtype={self.dtype}"
