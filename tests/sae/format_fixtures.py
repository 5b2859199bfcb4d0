"""On-disk SAE fixtures in every supported format, written from random tensors with each
format's exact field names, plus a reference encode in that format's own convention."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

D, N, K = 16, 64, 5


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.3


def _topk_dense(pre: torch.Tensor, k: int) -> torch.Tensor:
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


# ---- fixture writers: each returns (path, reference encode fn, expected architecture) --------
Ref = Callable[[torch.Tensor], torch.Tensor]


def write_saelens_v6(tmp: Path, arch: str = "jumprelu") -> tuple[Path, Ref, str]:
    w_enc, b_enc, w_dec, b_dec = (
        _rand(D, N, seed=1),
        _rand(N, seed=2),
        _rand(N, D, seed=3),
        _rand(D, seed=4),
    )
    thr = torch.rand(N, generator=torch.Generator().manual_seed(5)) * 0.2
    tensors = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "hook_name": "blocks.2.hook_resid_post",
            "model_name": "tiny",
            "context_size": 128,
            "prepend_bos": True,
            "hook_head_index": None,
            "dataset_path": "x",
            "neuronpedia_id": None,
            "sae_lens_version": "6.5.1",
        },
    }
    if arch == "jumprelu":
        tensors["threshold"] = thr
    save_file(tensors, str(tmp / "sae_weights.safetensors"))
    (tmp / "cfg.json").write_text(json.dumps(cfg))

    def ref(x: torch.Tensor) -> torch.Tensor:
        pre = (x - b_dec) @ w_enc + b_enc
        return torch.relu(pre) * (pre > thr) if arch == "jumprelu" else torch.relu(pre)

    return tmp, ref, arch


def write_saelens_pre6(tmp: Path) -> tuple[Path, Ref, str]:
    w_enc, b_enc, w_dec, b_dec = (
        _rand(D, N, seed=1),
        _rand(N, seed=2),
        _rand(N, D, seed=3),
        _rand(D, seed=4),
    )
    save_file(
        {
            "W_enc": w_enc,
            "b_enc": b_enc,
            "W_dec": w_dec,
            "b_dec": b_dec,
            "scaling_factor": torch.ones(N),
        },
        str(tmp / "sae_weights.safetensors"),
    )
    cfg = {
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2",
        "hook_point": "blocks.1.hook_resid_pre",
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "normalize_activations": False,
        "apply_b_dec_to_input": False,
        "context_size": 128,
        "lr": 4e-4,
        "sae_lens_version": "3.5.0",
    }
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    return tmp, lambda x: _topk_dense(x @ w_enc + b_enc, K), "topk"


def write_sparsify(tmp: Path) -> tuple[Path, Ref, str]:
    path = tmp / "layers.3"
    path.mkdir()
    enc_w, enc_b, w_dec, b_dec = (
        _rand(N, D, seed=1),
        _rand(N, seed=2),
        _rand(N, D, seed=3),
        _rand(D, seed=4),
    )
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
        str(path / "sae.safetensors"),
    )
    cfg = {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    # sparsify: relu then top-k of the encoder's output on x - b_dec
    return path, lambda x: _topk_dense(torch.relu((x - b_dec) @ enc_w.T + enc_b), K), "topk"


def _dl_config(tmp: Path, dict_class: str, **trainer: Any) -> None:
    cfg = {
        "trainer": {
            "trainer_class": "X",
            "dict_class": dict_class,
            "activation_dim": D,
            "dict_size": N,
            "layer": 4,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_4",
            "lr": 1e-3,
            **trainer,
        },
        "buffer": {"ctx_len": 128},
    }
    (tmp / "config.json").write_text(json.dumps(cfg))


def write_dl_relu(tmp: Path) -> tuple[Path, Ref, str]:
    enc_w, enc_b, dec_w, bias = (
        _rand(N, D, seed=1),
        _rand(N, seed=2),
        _rand(D, N, seed=3),
        _rand(D, seed=4),
    )
    torch.save(
        {"bias": bias, "encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w},
        tmp / "ae.pt",
    )
    _dl_config(tmp, "AutoEncoder")
    return tmp, lambda x: torch.relu((x - bias) @ enc_w.T + enc_b), "standard"


def write_dl_topk(tmp: Path) -> tuple[Path, Ref, str]:
    enc_w, enc_b, dec_w, b_dec = (
        _rand(N, D, seed=1),
        _rand(N, seed=2),
        _rand(D, N, seed=3),
        _rand(D, seed=4),
    )
    torch.save(
        {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "b_dec": b_dec,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.07),
        },
        tmp / "ae.pt",
    )
    _dl_config(tmp, "AutoEncoderTopK", k=K)
    return tmp, lambda x: _topk_dense(torch.relu((x - b_dec) @ enc_w.T + enc_b), K), "topk"


def write_dl_batchtopk(tmp: Path) -> tuple[Path, Ref, str]:
    enc_w, enc_b, dec_w, b_dec = (
        _rand(N, D, seed=1),
        _rand(N, seed=2),
        _rand(D, N, seed=3),
        _rand(D, seed=4),
    )
    thr = 0.15
    torch.save(
        {
            "encoder.weight": enc_w,
            "encoder.bias": enc_b,
            "decoder.weight": dec_w,
            "b_dec": b_dec,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(thr),
        },
        tmp / "ae.pt",
    )
    _dl_config(tmp, "BatchTopKSAE", k=K)

    def ref(x: torch.Tensor) -> torch.Tensor:  # dictionary_learning's inference (use_threshold)
        post = torch.relu((x - b_dec) @ enc_w.T + enc_b)
        return post * (post > thr)

    return tmp, ref, "jumprelu"


def write_dl_jumprelu(tmp: Path) -> tuple[Path, Ref, str]:
    w_enc, b_enc, w_dec, b_dec = (
        _rand(D, N, seed=1),
        _rand(N, seed=2),
        _rand(N, D, seed=3),
        _rand(D, seed=4),
    )
    thr = torch.rand(N, generator=torch.Generator().manual_seed(5)) * 0.1
    torch.save(
        {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec, "threshold": thr},
        tmp / "ae.pt",
    )
    _dl_config(tmp, "JumpReluAutoEncoder")

    def ref(x: torch.Tensor) -> torch.Tensor:
        pre = x @ w_enc + b_enc
        return torch.relu(pre * (pre > thr)) * w_dec.norm(dim=1)

    return tmp, ref, "jumprelu"


def write_openai(tmp: Path, activation: str = "TopK") -> tuple[Path, Ref, str]:
    pre_bias, latent_bias = _rand(D, seed=1), _rand(N, seed=2)
    enc_w, dec_w = _rand(N, D, seed=3), _rand(D, N, seed=4)
    sd: dict[str, Any] = {
        "pre_bias": pre_bias,
        "latent_bias": latent_bias,
        "stats_last_nonzero": torch.zeros(N, dtype=torch.long),
        "encoder.weight": enc_w,
        "decoder.weight": dec_w,
        "activation": activation,
    }
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": K}
    torch.save(sd, tmp / "v5_32k_layer_6.pt")

    def ref(x: torch.Tensor) -> torch.Tensor:
        if activation != "TopK":
            return torch.relu((x - pre_bias) @ enc_w.T + latent_bias)
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        xn = xc / (xc.std(-1, keepdim=True) + 1e-5)
        return _topk_dense((xn - pre_bias) @ enc_w.T + latent_bias, K)

    return tmp / "v5_32k_layer_6.pt", ref, "topk" if activation == "TopK" else "standard"


WRITERS = {
    "saelens_v6": write_saelens_v6,
    "saelens_v6_standard": lambda t: write_saelens_v6(t, "standard"),
    "saelens_pre6": write_saelens_pre6,
    "sparsify": write_sparsify,
    "dictionary_learning_relu": write_dl_relu,
    "dictionary_learning_topk": write_dl_topk,
    "dictionary_learning_batchtopk": write_dl_batchtopk,
    "dictionary_learning_jumprelu": write_dl_jumprelu,
    "openai_topk": write_openai,
    "openai_relu": lambda t: write_openai(t, "ReLU"),
}
